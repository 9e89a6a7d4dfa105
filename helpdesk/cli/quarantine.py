"""`helpdesk quarantine list|show|retry`: mail that could not be ingested."""

from __future__ import annotations

import sys
from typing import Any

import click

from helpdesk import quarantine as quarantine_service
from helpdesk.cli import AppContext, Failure, pass_app
from helpdesk.cli.output import emit_json, fields, table, when
from helpdesk.ingest import ingest_batch
from helpdesk.intake import prepare_once
from helpdesk.store.models import QuarantineItem
from helpdesk.values import OutcomeKind


@click.group()
def quarantine() -> None:
    """Mail that could not become a ticket, kept with its error."""


def item_json(item: QuarantineItem) -> dict[str, Any]:
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
    }


@quarantine.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include items already retried successfully.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_(app: AppContext, show_all: bool, limit: int, as_json: bool) -> None:
    """List quarantined mail, newest first."""
    with app.transaction() as session:
        items = quarantine_service.list_items(
            session, state=None if show_all else "held", limit=limit
        )
        data = [item_json(i) for i in items]
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
    ])
    if detail:
        click.echo()
        click.echo(detail.rstrip())
    click.echo()
    head = raw_bytes[:2000].decode("utf-8", "replace")
    click.echo(click.style("First bytes:", bold=True))
    click.echo(head.rstrip())


@quarantine.command("retry")
@click.argument("item_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_app
def retry(app: AppContext, item_id: int, as_json: bool) -> None:
    """Ingest a quarantined message again (after a fix); exit 1 if it still fails."""
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
