"""`helpdesk outbox list|show|retry|send`: the mail we send, and its delivery."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from helpdesk.cli import EX_TEMPFAIL, AppContext, pass_app
from helpdesk.cli.output import emit_json, fields, table, when
from helpdesk.delivery import views

# Only `list` is served with the module: the other commands import the ORM, the
# sender (aiosmtplib) and the mail parser when they run (issue 13: start-up).
if TYPE_CHECKING:
    from email.message import EmailMessage

    from helpdesk.store.models import OutboxAttempt

STATES = ["pending", "sent", "failed"]


@click.group()
def outbox() -> None:
    """Outgoing mail: queued, sent and failed."""


def subject_of(item: views.OutboxLike) -> str:
    """The subject; read from the mail itself for rows queued before it was stored."""
    if item.subject is not None:
        return item.subject
    import email.policy
    from email.parser import BytesHeaderParser

    headers = BytesHeaderParser(policy=email.policy.default).parsebytes(item.raw or b"")
    return str(headers.get("Subject", ""))


def item_json(item: views.OutboxLike, relay_problem: str | None = None) -> dict[str, Any]:
    """One row for `--json` (and `tickets show`): state per recipient included."""
    return {
        "id": item.id,
        "ticket_id": item.ticket_id,
        "kind": item.kind,
        "state": item.state,
        "delivery": views.delivery_summary(item),
        "subject": subject_of(item),
        "from": item.envelope_from,
        "to": item.envelope_to,
        "recipients": [
            {"address": r.address, "state": r.state, "attempts": r.attempts,
             "last_reply": r.last_reply, "sent_at": r.sent_at}
            for r in views.recipient_views(item)
        ],
        "message_id": item.message_id,
        "attempts": item.attempts,
        "next_attempt_at": item.next_attempt_at if item.state == "pending" else None,
        "last_error": item.last_error,
        # A pending mail waits for the relay, not for itself, while the relay fails.
        "relay_problem": relay_problem if item.state == "pending" else None,
        "created_at": item.created_at,
        "sent_at": item.sent_at,
    }


def _relay(app: AppContext) -> str:
    return f"{app.settings.smtp.host}:{app.settings.smtp.port}"


def relay_problem(app: AppContext) -> views.RelayStatus | None:
    """The configured relay's recorded problem, if the senders last saw one."""
    with app.reading() as conn:
        found = views.relay_status(conn, _relay(app))
    return found[0] if found and not found[0].ok else None


@outbox.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(STATES),
              help="Only rows in these states (repeatable).")
@click.option("--ticket", "ticket_id", type=int, help="Only the mail of this ticket.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_(app: AppContext, states: tuple[str, ...], ticket_id: int | None, limit: int,
          as_json: bool) -> None:
    """List outgoing mail, newest first; a relay problem is shown above the list."""
    problem = relay_problem(app)
    problem_text = f"{problem.problem}: {problem.error}" if problem else None
    with app.reading() as conn:
        found = views.list_outbox(conn, states=states, ticket_id=ticket_id, limit=limit)
    data = [item_json(i, problem_text) for i in found]
    if as_json:
        emit_json(data)
        return
    if problem is not None:
        click.secho(problem.describe(), fg="red", bold=True)
    if not data:
        click.echo("The outbox is empty.")
        return
    table(
        ["ID", "TICKET", "KIND", "STATE", "TRIES", "CREATED", "TO", "SUBJECT", "LAST ERROR"],
        [[d["id"], d["ticket_id"], d["kind"], d["delivery"], d["attempts"],
          when(d["created_at"]), ", ".join(d["to"]), d["subject"], d["last_error"]]
         for d in data],
    )


@outbox.command("show")
@click.argument("item_id", type=int)
@click.option("--raw", is_flag=True, help="Print the mail exactly as it is (or was) sent.")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@pass_app
def show(app: AppContext, item_id: int, raw: bool, as_json: bool) -> None:
    """One outgoing mail: envelope, state per recipient, attempts, headers and body."""
    import email
    import email.policy
    from email.message import EmailMessage

    from helpdesk.delivery import outbox as outbox_service

    problem = relay_problem(app)
    with app.transaction() as session:
        item = outbox_service.get_item(session, item_id)
        data = item_json(item, f"{problem.problem}: {problem.error}" if problem else None)
        history = outbox_service.attempts(session, item_id)
        body = item.raw
    if raw:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
        return
    message = email.message_from_bytes(body, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    data["attempt_log"] = [_attempt_json(a) for a in history]
    data["headers"] = [[name, str(value)] for name, value in message.items()]
    data["body"] = _body_text(message)
    if as_json:
        emit_json(data)
        return
    _print_show(data, problem)


def _attempt_json(attempt: OutboxAttempt) -> dict[str, Any]:
    return {"at": attempt.at, "outcome": attempt.outcome, "detail": attempt.detail,
            "holder": attempt.holder, "next_attempt_at": attempt.next_attempt_at}


def _body_text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    text = str(part.get_content()) if part is not None else ""
    names = [f"[attachment: {a.get_filename() or 'unnamed'} ({a.get_content_type()})]"
             for a in message.iter_attachments()]
    return "\n".join([text.rstrip("\n"), *names]).strip("\n")


def _print_show(data: dict[str, Any], problem: views.RelayStatus | None) -> None:
    pending = data["state"] == "pending"
    fields([
        ("Outbox item", data["id"]),
        ("Ticket", data["ticket_id"]),
        ("Kind", data["kind"]),
        ("State", data["delivery"]),
        ("Message-ID", data["message_id"]),
        ("Created", when(data["created_at"])),
        ("Attempts", data["attempts"]),
        ("Next try", when(data["next_attempt_at"]) if pending else None),
        ("Waiting for", problem.describe() if problem and pending else None),
    ])
    click.echo(click.style("\nEnvelope", bold=True))
    click.echo(f"  MAIL FROM:<{data['from']}>")
    for r in data["recipients"]:
        reply = f"  ({r['last_reply']})" if r["last_reply"] else ""
        sent = f" {when(r['sent_at'])}" if r["state"] == "sent" else ""
        click.echo(f"  RCPT TO:<{r['address']}>  {r['state']}{sent}, "
                   f"{r['attempts']} attempt(s){reply}")
    if data["attempt_log"]:
        click.echo(click.style("\nAttempts", bold=True))
        for a in data["attempt_log"]:
            retry = f"; next try {when(a['next_attempt_at'])}" if a["next_attempt_at"] else ""
            click.echo(f"  {when(a['at'])}  {a['outcome']:<8} {a['detail']}{retry}")
    click.echo(click.style("\nHeaders", bold=True))
    for name, value in data["headers"]:
        click.echo(f"  {name}: {value}")
    click.echo(click.style("\nBody", bold=True))
    click.echo(data["body"])


@outbox.command("retry")
@click.argument("item_id", type=int)
@pass_app
def retry(app: AppContext, item_id: int) -> None:
    """Queue a failed mail again, due now, to the recipients it did not reach."""
    from helpdesk.delivery import outbox as outbox_service

    with app.transaction() as session:
        item = outbox_service.retry(session, item_id)
        to = ", ".join(outbox_service.pending_recipients(item))
    click.echo(f"outbox item {item_id} to {to} is queued again")


@outbox.command("send")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_app
def send(app: AppContext, as_json: bool) -> None:
    """Deliver every due mail once (what the daemon's sender does continuously)."""
    import asyncio
    import os
    import socket

    from helpdesk import context
    from helpdesk.delivery import outbox as outbox_service
    from helpdesk.smtp import Sender
    from helpdesk.store.schema import utcnow

    factory = app.sessions()
    sender = Sender(
        factory,
        app.settings.smtp,
        context.outbox_policy(app.settings),
        holder=f"cli:{socket.gethostname()}:{os.getpid()}",
        watch=False,
    )

    async def one_pass() -> int:
        total = 0
        while True:  # a pass takes a batch; go on until nothing more is accepted
            sent = await sender.run_once()
            total += sent
            if not sent:
                return total

    sent = asyncio.run(one_pass())
    problem = sender.relay_problem
    with app.transaction() as session:
        counts = outbox_service.queue_counts(session, now=utcnow())
    waiting, failed = counts.due + counts.retrying, counts.failed
    if as_json:
        emit_json({"sent": sent, "pending": waiting, "failed": failed})
    else:
        click.echo(f"{sent} sent, {waiting} waiting, {failed} failed")
    if problem is not None:
        # EX_TEMPFAIL: nothing wrong with the mail; try again when the relay works.
        click.secho(f"relay {sender.relay.name}: {problem}; the mail stays queued",
                    fg="red", err=True)
        raise SystemExit(EX_TEMPFAIL)
