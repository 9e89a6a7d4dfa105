"""`helpdesk quarantine list|show|retry|release|discard|purge`: mail that could not be ingested."""

from __future__ import annotations

import getpass
import os
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from helpdesk.cli import AppContext, Failure, pass_app
from helpdesk.cli.output import emit_json, fields, table, when
from helpdesk.names import QUARANTINE_HELD, QUARANTINE_STATES

# `list` needs neither the ORM nor the quarantine service: the other commands import
# them when they run.
if TYPE_CHECKING:
    from sqlalchemy import Row

    from helpdesk.store.models import QuarantineItem

_AGE = re.compile(r"\s*(\d+)\s*([mhdw])\s*", re.IGNORECASE)
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@click.group()
def quarantine() -> None:
    """Mail that could not become a ticket, kept with its error."""


def item_json(item: QuarantineItem | Row[Any]) -> dict[str, Any]:
    return {
        "id": item.id,
        "created_at": item.created_at,
        "state": item.state,
        "error": item.error,
        "from": item.from_address,
        "subject": item.subject,
        "size": item.size,
        "retries": item.retries,
        "origin": {
            "source": item.origin_source,
            "mailbox": item.origin_mailbox,
            "uidvalidity": item.origin_uidvalidity,
            "uid": item.origin_uid,
            "path": item.origin_path,
        },
        "resolved_ticket_id": item.resolved_ticket_id,
        "released_message_row_id": item.released_message_row_id,
        "decided_by": item.decided_by,
        "decided_at": item.decided_at,
        "decision_note": item.decision_note,
    }


def who() -> str:
    """The person at the keyboard, for the audit trail (the one behind sudo, if any)."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (OSError, KeyError):  # no passwd entry for the uid (containers)
        return f"uid {os.getuid()}"


def parse_age(text: str) -> timedelta:
    """`90d`, `12h`, `2w`, `30m` as a timedelta."""
    match = _AGE.fullmatch(text)
    if match is None or int(match[1]) == 0:
        raise click.BadParameter(
            f"{text!r} is not an age like 90d, 12h, 2w or 30m", param_hint="--older-than"
        )
    return timedelta(**{_UNITS[match[2].lower()]: int(match[1])})


@quarantine.command("list")
@click.option("--all", "show_all", is_flag=True,
              help="Include items already resolved, released or discarded.")
@click.option("--state", type=click.Choice(QUARANTINE_STATES),
              help="Only items in this state (default: held).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_(app: AppContext, show_all: bool, state: str | None, limit: int, as_json: bool) -> None:
    """List quarantined mail, newest first."""
    from helpdesk.store.listing import quarantined

    with app.reading() as conn:
        rows = quarantined(conn, state=state or (None if show_all else QUARANTINE_HELD),
                           limit=limit)
        data = [item_json(row) for row in rows]
    if as_json:
        emit_json(data)
        return
    if not data:
        click.echo("Quarantine is empty.")
        return
    table(
        ["ID", "STATE", "RECEIVED", "FROM", "SIZE", "ERROR"],
        [[d["id"], d["state"], when(d["created_at"]), d["from"], d["size"], d["error"]]
         for d in data],
    )


@quarantine.command("show")
@click.argument("item_id", type=int)
@click.option("--raw", is_flag=True, help="Write the raw message bytes to stdout.")
@click.option("--json", "as_json", is_flag=True, help="Print the item as JSON.")
@pass_app
def show(app: AppContext, item_id: int, raw: bool, as_json: bool) -> None:
    """Show one quarantined message and why it is there."""
    from helpdesk.flow import quarantine as quarantine_service

    with app.transaction() as session:
        item = quarantine_service.get(session, item_id)
        data = item_json(item)
        raw_bytes = item.raw
        detail = item.detail
    if raw:
        sys.stdout.buffer.write(raw_bytes)
        sys.stdout.buffer.flush()
        return
    if as_json:
        data["detail"] = detail
        emit_json(data)
        return
    origin = data["origin"]
    fields([
        ("id", data["id"]),
        ("state", data["state"]),
        ("received", when(data["created_at"])),
        ("origin", " ".join(f"{k}={v}" for k, v in origin.items() if v is not None)),
        ("from", data["from"]),
        ("subject", data["subject"]),
        ("size", f"{data['size']} bytes"),
        ("retries", data["retries"]),
        ("error", data["error"]),
        *_decision(data),
    ])
    if detail:
        click.echo()
        click.echo(detail.rstrip())
    click.echo()
    head = raw_bytes[:2000].decode("utf-8", "replace")
    click.echo(click.style("First bytes:", bold=True))
    click.echo(head.rstrip())


def _decision(data: dict[str, Any]) -> list[tuple[str, Any]]:
    if not data["decided_at"]:
        return []
    decided = [("decided", f"{data['state']} by {data['decided_by']} at "
                            f"{when(data['decided_at'])}")]
    if data["decision_note"]:
        decided.append(("note", data["decision_note"]))
    if data["resolved_ticket_id"]:
        decided.append(("ticket", data["resolved_ticket_id"]))
    return decided


@quarantine.command("retry")
@click.argument("item_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_app
def retry(app: AppContext, item_id: int, as_json: bool) -> None:
    """Ingest a quarantined message again (after a fix); exit 1 if it still fails."""
    from helpdesk.flow import quarantine as quarantine_service
    from helpdesk.flow.ingest import ingest_batch
    from helpdesk.intake import prepare_once
    from helpdesk.values import OutcomeKind

    ctx = app.ingest_context()
    limit = app.settings.intake.message_time_limit
    with app.transaction() as session:
        item = quarantine_service.get(session, item_id)
        origin = quarantine_service.retry_origin(item)
        prepared = prepare_once(item.raw, ctx, time_limit=limit)
        (outcome,) = ingest_batch(session, [(item.raw, origin, prepared)], ctx)
        if outcome.kind is not OutcomeKind.QUARANTINED:
            quarantine_service.mark_resolved(item, outcome.ticket_id)
    result = {
        "id": item_id,
        "outcome": outcome.kind.value,
        "ticket_id": outcome.ticket_id,
        "error": outcome.error,
    }
    if as_json:
        emit_json(result)
    if outcome.kind is OutcomeKind.QUARANTINED:
        raise Failure(f"quarantined message {item_id} still fails: {outcome.error}")
    if not as_json:
        click.echo(f"quarantined message {item_id}: {outcome.kind.value}, "
                   f"ticket {outcome.ticket_id}")


@quarantine.command("release")
@click.argument("item_id", type=int)
@click.option("--file", "fixed", required=True,
              type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
              help="The corrected message (`-` for stdin).")
@click.option("--by", default=None, metavar="NAME", help="Who releases it (default: you).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_app
def release(app: AppContext, item_id: int, fixed: Path, by: str | None, as_json: bool) -> None:
    """Ingest a corrected copy in place of a held message, linking the two.

    The held bytes stay in the quarantine (state `released`) pointing at the
    message the copy became; the ticket gets a `quarantine.released` event.
    If the copy cannot be ingested either, nothing changes and the exit is 1.
    """
    from helpdesk.flow import quarantine as quarantine_service
    from helpdesk.flow.ingest import ingest_batch
    from helpdesk.intake import prepare_once
    from helpdesk.values import OutcomeKind

    raw = sys.stdin.buffer.read() if str(fixed) == "-" else fixed.read_bytes()
    ctx = app.ingest_context()
    limit = app.settings.intake.message_time_limit
    with app.transaction() as session:
        item = quarantine_service.get(session, item_id)
        origin = quarantine_service.retry_origin(item)
        # Parsed in a worker under the time limit, as the daemon does: the copy is mail too.
        prepared = prepare_once(raw, ctx, time_limit=limit)
        (outcome,) = ingest_batch(session, [(raw, origin, prepared)], ctx)
        if outcome.kind is OutcomeKind.QUARANTINED:
            # Leaving the transaction by an exception rolls back the copy's own
            # quarantine row too: a failed release changes nothing.
            raise Failure(f"the corrected copy cannot be ingested either: {outcome.error}")
        quarantine_service.mark_released(
            session, item, ticket_id=outcome.ticket_id, message_row_id=outcome.message_row_id,
            by=by or who(), source=str(fixed),
        )
    result = {"id": item_id, "outcome": outcome.kind.value, "ticket_id": outcome.ticket_id,
              "message_row_id": outcome.message_row_id}
    if as_json:
        emit_json(result)
        return
    click.echo(f"quarantined message {item_id}: released as {outcome.kind.value}, "
               f"ticket {outcome.ticket_id}")


@quarantine.command("discard")
@click.argument("item_id", type=int)
@click.option("--by", default=None, metavar="NAME", help="Who discards it (default: you).")
@click.option("--note", default="", help="Why, for the record.")
@click.option("--json", "as_json", is_flag=True, help="Print the item as JSON.")
@pass_app
def discard(app: AppContext, item_id: int, by: str | None, note: str, as_json: bool) -> None:
    """Mark a held message as not wanted; it is kept until `quarantine purge`."""
    from helpdesk.flow import quarantine as quarantine_service

    with app.transaction() as session:
        item = quarantine_service.discard(session, item_id, by=by or who(), note=note)
        data = item_json(item)
    if as_json:
        emit_json(data)
        return
    click.echo(f"quarantined message {item_id}: discarded by {data['decided_by']}")


@quarantine.command("purge")
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Delete items discarded longer ago than this: 90d, 12h, 2w, 30m.")
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
@pass_app
def purge(app: AppContext, older_than: str, as_json: bool) -> None:
    """Delete discarded messages for good; held ones are never purged."""
    from helpdesk.flow import quarantine as quarantine_service

    age = parse_age(older_than)
    with app.transaction() as session:
        count = quarantine_service.purge(session, older_than=age)
    if as_json:
        emit_json({"purged": count})
        return
    click.echo(f"purged {count} discarded message{'s' if count != 1 else ''}")
