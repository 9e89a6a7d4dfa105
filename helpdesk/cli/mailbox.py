"""`helpdesk mailbox list|check`: the configured mailboxes and how far ingestion got."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from helpdesk.cli import AppContext, Failure, pass_app
from helpdesk.cli.output import emit_json, fields, table, when
from helpdesk.errors import NotFound
from helpdesk.flow import mailboxes as mailbox_service
from helpdesk.sources.imap import ImapSource
from helpdesk.store.models import utcnow
from helpdesk.values import Incoming, IngestOutcome


@click.group()
def mailbox() -> None:
    """The mailboxes (IMAP) and Maildirs helpdesk watches."""


@mailbox.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """Each mailbox and Maildir: its state, last error, last successful poll and counters."""
    from helpdesk.desk import health  # the store's view; no mail server is contacted

    with app.transaction() as session:
        found = health.sources(session, app.settings, utcnow())
        states = {s.name: s for s in mailbox_service.list_states(session)}
    rows: list[dict[str, Any]] = []
    for source in found:
        state = states.get(source.name)
        rows.append({
            "name": source.name,
            "kind": source.kind,
            "where": source.where,
            "state": source.state,
            "last_error": source.last_error,
            "problem_since": source.problem_since,
            "last_poll_at": source.last_poll_at,
            "uidvalidity": state.uidvalidity if state else None,
            "last_uid": state.last_uid if state else 0,
            "lease_holder": source.lease_holder,
            "lease_expires_at": state.lease_expires_at if state else None,
            "counters": source.counters,
        })
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No [[mailbox]] or [[maildir]] configured.")
        return
    table(
        ["NAME", "KIND", "WHERE", "STATE", "LAST POLL", "HOLDER", "COUNTERS"],
        [[r["name"], r["kind"], r["where"], r["state"], when(r["last_poll_at"]),
          r["lease_holder"], " ".join(f"{k}={v}" for k, v in sorted(r["counters"].items()))]
         for r in rows],
    )
    # Errors in full, below the table: they are what an admin acts on.
    for row in rows:
        if row["last_error"]:
            click.echo(f"{row['name']}: {row['last_error']}")


@mailbox.command("check")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@pass_app
def check(app: AppContext, name: str | None, as_json: bool) -> None:
    """Connect, log in, and show capabilities, folders, UIDVALIDITY and progress."""
    boxes = [b for b in app.settings.mailboxes if name is None or b.name == name]
    if name is not None and not boxes:
        raise NotFound("mailbox", name)
    if not boxes:
        raise Failure("no [[mailbox]] configured")
    factory = app.sessions()
    results = []
    failed = False
    for box in boxes:
        source = ImapSource(box, _no_sink, factory, holder="cli-check")
        try:
            result: dict[str, Any] = {"name": box.name, "ok": True, **source.check()}
        except Exception as exc:  # noqa: BLE001 - a check reports every failure, it never dies
            result = {"name": box.name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            failed = True
        finally:
            source.close()
        results.append(result)
    if as_json:
        emit_json(results)
    else:
        for result in results:
            _print_check(result)
    if failed:
        raise click.exceptions.Exit(1)


def _no_sink(incoming: Sequence[Incoming]) -> list[IngestOutcome]:
    raise AssertionError("mailbox check never ingests")


def _print_check(result: dict[str, Any]) -> None:
    click.echo(click.style(f"Mailbox {result['name']}", bold=True))
    if not result["ok"]:
        click.echo(f"  FAILED: {result['error']}")
        return
    skip = ("name", "ok", "folders", "state")
    pairs = [(k, v) for k, v in result.items() if k not in skip]
    fields([(k, " ".join(map(str, v)) if isinstance(v, list | tuple) else v) for k, v in pairs])
    state = result.get("state") or {}
    click.echo(f"  ingested so far: uidvalidity {state.get('uidvalidity')}, "
               f"last uid {state.get('last_uid')}, last poll {state.get('last_poll_at')}")
    for folder in result.get("folders", []):
        counts = " ".join(f"{k}={v}" for k, v in folder.items() if k != "name")
        click.echo(f"  folder {folder.get('name')}: {counts}")
