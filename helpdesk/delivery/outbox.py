"""The transactional outbox: every mail we send is a row before it is a socket.

`enqueue` composes the mail, gives it its final Message-ID, and writes the
outbox row, one row per envelope recipient, *and* an outgoing message on the
ticket in the caller's transaction, so the mail exists exactly when the change
that caused it does; its commit wakes the senders (`helpdesk.delivery.wakeup`).

The sender's side (claims, results per recipient) is `helpdesk.delivery.claims`.
Here: queueing, `retry`, the attempts and the queue's counts. What people see
without the ORM (each recipient's state, the listing, the relay's own state)
is `helpdesk.delivery.views`: problems of the relay itself (down, TLS, AUTH,
MAIL FROM refused) are not the mail's fault, so they are kept there and the
mail stays queued untouched.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from helpdesk.delivery.views import FAILED, PENDING, SENT
from helpdesk.delivery.wakeup import mark_queued
from helpdesk.errors import InvalidInput, NotFound
from helpdesk.mail.compose import compose, make_message_id
from helpdesk.store import schema
from helpdesk.store.direct import Direct, NewRow
from helpdesk.store.models import (
    OutboxAttempt,
    OutboxItem,
    OutboxRecipient,
    RelayState,
    utcnow,
)
from helpdesk.values import Direction, OutgoingMail


@dataclass(frozen=True)
class OutboxPolicy:
    """Retry policy of the sender (from `[outbox]`)."""

    max_permanent_failures: int = 3
    retry_base: timedelta = timedelta(seconds=30)
    retry_max_delay: timedelta = timedelta(hours=1)
    give_up_after: timedelta = timedelta(hours=120)


@dataclass(frozen=True)
class Signer:
    """What makes our Message-IDs ours: the domain, the signing key and the X-Loop id."""

    domain: str
    key: bytes
    loop_id: str


@dataclass(frozen=True, slots=True)
class Queued:
    """A mail just queued: its outbox row and Message-ID."""

    id: int
    message_id: str
    ticket_id: int | None
    envelope_to: tuple[str, ...]


# Prebuilt Core statements: every acknowledgement, forward and notification goes
# through here inside ingest's group commit, where the ORM's unit of work cost
# more than composing the mail.
_OUTBOX = schema.outbox
# On PostgreSQL, in ingest's batch, its id is reserved ahead (no RETURNING round trip).
_NEW_ITEM = NewRow(_OUTBOX)
_INSERT_RECIPIENTS = Direct(insert(schema.outbox_recipients))
_INSERT_MESSAGE = Direct(insert(schema.messages))


def enqueue(
    session: Session,
    mail: OutgoingMail,
    signer: Signer,
    *,
    now: datetime | None = None,
    correlation_id: str | None = None,
    nonce: str | None = None,
) -> Queued:
    """Compose `mail` and queue it; also record it on its ticket as an outgoing message."""
    when = now or utcnow()
    message_id = make_message_id(
        mail.ticket_id, domain=signer.domain, secret=signer.key,
        nonce=nonce or secrets.token_hex(8),
    )
    raw = compose(mail, message_id=message_id, date=when, loop_id=signer.loop_id)
    recipients = list(dict.fromkeys(a.address for a in (*mail.to, *mail.cc)))
    if not recipients:
        raise InvalidInput("an outgoing mail needs at least one recipient")
    conn = session.connection()
    item_id = _NEW_ITEM.insert(conn, {
        "ticket_id": mail.ticket_id,
        "message_id": message_id,
        "envelope_from": mail.envelope_from,
        "envelope_to": recipients,
        "raw": raw,
        "kind": mail.kind.value,
        "state": PENDING,
        "attempts": 0,
        "permanent_failures": 0,
        "next_attempt_at": when,
        "created_at": when,
        "correlation_id": correlation_id,
        "subject": mail.subject,
    })
    _INSERT_RECIPIENTS.executemany(conn, [
        {"outbox_id": item_id, "address": address, "state": PENDING, "attempts": 0,
         "permanent_failures": 0} for address in recipients
    ])
    if mail.ticket_id is not None:
        _INSERT_MESSAGE.execute(conn, _message_values(mail, raw, message_id, when))
    mark_queued(session)
    return Queued(int(item_id), message_id, mail.ticket_id, tuple(recipients))


def recipient_row(address: str) -> OutboxRecipient:
    """A recipient row, still to be sent."""
    return OutboxRecipient(address=address, state=PENDING, attempts=0, permanent_failures=0)


def _message_values(mail: OutgoingMail, raw: bytes, message_id: str,
                    when: datetime) -> dict[str, object]:
    # A copy of this mail coming back to us is recognised by its Message-ID
    # (`queries.message_by_content` matches our outgoing rows by id alone).
    return {
        "ticket_id": mail.ticket_id,
        "direction": Direction.OUTGOING.value,
        "kind": mail.kind.value,
        "message_id": message_id,
        "message_id_synthetic": False,
        "content_hash": hashlib.sha256(raw).hexdigest(),
        "in_reply_to": mail.in_reply_to or "",
        "references": " ".join(mail.references),
        "from_address": mail.from_.address,
        "from_name": mail.from_.name,
        "to_addresses": ", ".join(str(a) for a in mail.to),
        "cc_addresses": ", ".join(str(a) for a in mail.cc),
        "subject": mail.subject,
        "sent_at": when,
        "received_at": when,
        "text": mail.body,
        "new_text": mail.body,
        "html": None,
        "raw": raw,
        "size": len(raw),
        "defects": "",
        "mail_class": "human",
        "origin_source": "outbox",
        "thread_index": _thread_index(raw),
    }


def _thread_index(raw: bytes) -> str:
    """Our own Thread-Index, read back from the composed header (for `anchors`)."""
    head = raw[:raw.find(b"\r\n\r\n")]
    start = head.find(b"\r\nThread-Index: ")
    if start == -1:
        return ""
    value = head[start + 16:].split(b"\r\n", 1)[0]
    return value.decode("ascii", "replace").strip()[:999]


def retry(session: Session, item_id: int, *, now: datetime | None = None) -> OutboxItem:
    """Queue a failed (or waiting) mail again, due now, to the recipients not yet sent."""
    item = session.get(OutboxItem, item_id, options=[selectinload(OutboxItem.recipients)])
    if item is None:
        raise NotFound("outbox item", item_id)
    failed = [r for r in item.recipients if r.state == FAILED]
    if item.state == SENT and not failed:
        raise InvalidInput(f"outbox item {item_id} was sent at {item.sent_at:%Y-%m-%d %H:%M}")
    if not item.recipients:
        item.recipients = [recipient_row(a) for a in dict.fromkeys(item.envelope_to)]
    for recipient in failed:
        recipient.state = PENDING
        recipient.permanent_failures = 0
    item.state = PENDING
    item.permanent_failures = 0
    item.next_attempt_at = now or utcnow()
    item.claimed_by = item.claimed_until = None
    mark_queued(session)
    return item


# -- looking at the outbox -----------------------------------------------------------


def get_item(session: Session, item_id: int) -> OutboxItem:
    """One outbox row with its recipients; NotFound if there is none."""
    item = session.get(OutboxItem, item_id, options=[selectinload(OutboxItem.recipients)])
    if item is None:
        raise NotFound("outbox item", item_id)
    return item


def attempts(session: Session, item_id: int) -> list[OutboxAttempt]:
    """The delivery attempts of a row, oldest first."""
    return list(session.scalars(
        select(OutboxAttempt).where(OutboxAttempt.outbox_id == item_id).order_by(OutboxAttempt.id)
    ))


def pending_recipients(item: OutboxItem) -> list[str]:
    """The addresses of `item` still to be sent."""
    return [r.address for r in item.recipients if r.state == PENDING]


@dataclass(frozen=True)
class QueueCounts:
    """How much mail waits: due now, waiting for a retry, failed (for `helpdesk status`)."""

    due: int
    retrying: int
    failed: int


def queue_counts(session: Session, *, now: datetime) -> QueueCounts:
    """Counts of the queue by state, without loading rows."""
    due_now = OutboxItem.next_attempt_at <= now
    rows = session.execute(
        select(OutboxItem.state, due_now, func.count())
        .where(OutboxItem.state.in_([PENDING, FAILED]))
        .group_by(OutboxItem.state, due_now)
    ).all()
    due = sum(n for state, is_due, n in rows if state == PENDING and is_due)
    retrying = sum(n for state, is_due, n in rows if state == PENDING and not is_due)
    failed = sum(n for state, _, n in rows if state == FAILED)
    return QueueCounts(due=due, retrying=retrying, failed=failed)


# -- the relay's own state -------------------------------------------------------------


def set_relay_state(
    session: Session,
    relay: str,
    *,
    holder: str,
    problem: str | None,
    error: str | None,
    now: datetime,
    next_try_at: datetime | None = None,
) -> None:
    """Record what the sender saw of the relay: a problem, or None once it works again."""
    state = "ok" if problem is None else "failing"
    row = session.get(RelayState, relay, with_for_update=True)
    if row is None:
        try:
            # Two senders may see a relay for the first time at once (PostgreSQL).
            with session.begin_nested():
                session.add(RelayState(relay=relay, state=state, problem=problem, error=error,
                                       since=now, checked_at=now, next_try_at=next_try_at,
                                       holder=holder))
            return
        except IntegrityError:
            row = session.get_one(RelayState, relay, with_for_update=True)
    if (row.state, row.problem) != (state, problem):
        row.since = now
    row.state, row.problem, row.error = state, problem, error
    row.checked_at, row.next_try_at, row.holder = now, next_try_at, holder
