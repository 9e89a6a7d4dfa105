"""`helpdesk status`: the desk at a glance; exit 1 when something needs an admin."""

from __future__ import annotations

from typing import Any

import click

from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.output import emit_json, fields, table, when
from helpdesk.desk import health
from helpdesk.settings.security import security_warnings
from helpdesk.store.models import utcnow


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_app
def status(app: AppContext, as_json: bool) -> None:
    """The desk at a glance: mailboxes, daemons, outbox, relay, quarantine, oldest waiting ticket.

    Read from the store, as every running daemon records it. Exits 1 when
    something needs an admin (a mailbox failing, no daemon running, the relay
    failing, failed mail, quarantined mail, an insecure setting).
    """
    now = utcnow()
    with app.transaction() as session:
        desk = health.health(session, app.settings, now,
                             tuple(security_warnings(app.settings)))
    problems = desk.problems
    if as_json:
        emit_json(_json(desk, problems))
    else:
        _render(desk, problems, now)
    if problems:
        raise click.exceptions.Exit(1)


def _json(desk: health.Health, problems: list[str]) -> dict[str, Any]:
    oldest = desk.oldest_unanswered
    return {
        "ok": not problems,
        "problems": problems,
        "sources": [{"name": s.name, "kind": s.kind, "where": s.where, "state": s.state,
                     "last_error": s.last_error, "last_poll_at": s.last_poll_at,
                     "lease_holder": s.lease_holder} for s in desk.sources],
        "daemons": list(desk.daemons),
        "outbox": {"due": desk.outbox.due, "retrying": desk.outbox.retrying,
                   "failed": desk.outbox.failed},
        "relays": [{"relay": r.relay, "state": r.state, "problem": r.problem,
                    "error": r.error, "since": r.since} for r in desk.relays],
        "quarantine_held": desk.quarantine_held,
        "oldest_unanswered": ({"ticket_id": oldest[0], "created_at": oldest[1]}
                              if oldest else None),
        "warnings": list(desk.warnings),
    }


def _render(desk: health.Health, problems: list[str], now: Any) -> None:
    headline = "All is well." if not problems else f"{len(problems)} thing(s) need an admin:"
    click.echo(click.style(headline, bold=True, fg="green" if not problems else "red"))
    for problem in problems:
        click.echo(f"  - {problem}")
    click.echo()
    if desk.sources:
        table(["SOURCE", "KIND", "STATE", "LAST POLL", "HOLDER"],
              [[s.name, s.kind, s.state, when(s.last_poll_at), s.lease_holder]
               for s in desk.sources])
        click.echo()
    oldest = desk.oldest_unanswered
    waiting = (f"#{oldest[0]}, waiting since {when(oldest[1])} UTC "
               f"({_age(now - oldest[1])})" if oldest else "none")
    fields([
        ("daemons running", ", ".join(desk.daemons) or "none"),
        ("outbox", f"{desk.outbox.due} due, {desk.outbox.retrying} retrying, "
                   f"{desk.outbox.failed} failed"),
        ("relay", "; ".join(f"{r.relay} {r.state}" for r in desk.relays) or "not used yet"),
        ("quarantine held", desk.quarantine_held),
        ("oldest unanswered", waiting),
    ])


def _age(delta: Any) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24} d {hours % 24} h" if hours >= 24 else f"{hours} h"
