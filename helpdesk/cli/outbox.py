"""`helpdesk outbox list|retry|send`: the mail we send, and its delivery."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import click

from helpdesk import context
from helpdesk import outbox as outbox_service
from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.output import emit_json, table, when
from helpdesk.smtp import Sender
from helpdesk.store.models import OutboxItem

STATES = ["pending", "sent", "failed"]


@click.group()
def outbox() -> None:
    """Outgoing mail: queued, sent and failed."""


def item_json(item: OutboxItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "ticket_id": item.ticket_id,
        "kind": item.kind,
        "state": item.state,
        "to": item.envelope_to,
        "message_id": item.message_id,
        "attempts": item.attempts,
        "next_attempt_at": item.next_attempt_at if item.state == "pending" else None,
        "last_error": item.last_error,
        "created_at": item.created_at,
        "sent_at": item.sent_at,
    }


@outbox.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(STATES),
              help="Only rows in these states (repeatable).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_(app: AppContext, states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List outgoing mail, newest first."""
    with app.transaction() as session:
        data = [item_json(i) for i in outbox_service.list_items(session, states=states,
                                                                 limit=limit)]
    if as_json:
        emit_json(data)
        return
    if not data:
        click.echo("The outbox is empty.")
        return
    table(
        ["ID", "TICKET", "KIND", "STATE", "TRIES", "CREATED", "TO", "LAST ERROR"],
        [[d["id"], d["ticket_id"], d["kind"], d["state"], d["attempts"], when(d["created_at"]),
          ", ".join(d["to"]), d["last_error"]] for d in data],
    )


@outbox.command("retry")
@click.argument("item_id", type=int)
@pass_app
def retry(app: AppContext, item_id: int) -> None:
    """Queue a failed mail again, due now."""
    with app.transaction() as session:
        item = outbox_service.retry(session, item_id)
        to = ", ".join(item.envelope_to)
    click.echo(f"outbox item {item_id} to {to} is queued again")


@outbox.command("send")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_app
def send(app: AppContext, as_json: bool) -> None:
    """Deliver every due mail once (what the daemon's sender does continuously)."""
    factory = app.sessions()
    sender = Sender(
        factory,
        app.settings.smtp,
        context.outbox_policy(app.settings),
        holder=f"cli:{socket.gethostname()}:{os.getpid()}",
    )

    async def one_pass() -> int:
        total = 0
        while True:  # a pass takes a batch; go on until nothing more is accepted
            sent = await sender.run_once()
            total += sent
            if not sent:
                return total

    sent = asyncio.run(one_pass())
    with app.transaction() as session:
        waiting = len(outbox_service.list_items(session, states=["pending"], limit=100_000))
        failed = len(outbox_service.list_items(session, states=["failed"], limit=100_000))
    if as_json:
        emit_json({"sent": sent, "pending": waiting, "failed": failed})
    else:
        click.echo(f"{sent} sent, {waiting} waiting, {failed} failed")
