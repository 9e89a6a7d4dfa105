"""The transactional outbox: every mail we send is a row before it is a socket.

`enqueue` composes the mail, gives it its final Message-ID, and writes the
outbox row *and* an outgoing message on the ticket in the caller's
transaction, so the mail exists exactly when the change that caused it does.
The sender edge (`helpdesk.smtp`) claims due rows with a lease (`FOR UPDATE
SKIP LOCKED` on PostgreSQL), delivers them, and reports back through
`mark_sent`, `mark_temporary_failure` and `mark_permanent_failure`.

Delivery is at least once: a sender that dies after the SMTP server accepted a
mail but before `mark_sent` committed sends it again once its lease expires.
The retry carries the same Message-ID, so receiving systems and our own
dedupe recognise it.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from helpdesk.errors import InvalidInput, NotFound
from helpdesk.mail.compose import compose, make_message_id
from helpdesk.store.models import Message, OutboxItem, utcnow
from helpdesk.values import Direction, OutgoingMail

PENDING, SENT, FAILED = "pending", "sent", "failed"


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


def enqueue(
    session: Session,
    mail: OutgoingMail,
    signer: Signer,
    *,
    now: datetime | None = None,
    correlation_id: str | None = None,
    nonce: str | None = None,
) -> OutboxItem:
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
    item = OutboxItem(
        ticket_id=mail.ticket_id,
        message_id=message_id,
        envelope_from=mail.envelope_from,
        envelope_to=recipients,
        raw=raw,
        kind=mail.kind.value,
        state=PENDING,
        attempts=0,
        permanent_failures=0,
        next_attempt_at=when,
        created_at=when,
        correlation_id=correlation_id,
    )
    session.add(item)
    if mail.ticket_id is not None:
        session.add(_message_row(mail, raw, message_id, when))
    session.flush()
    return item


def _message_row(mail: OutgoingMail, raw: bytes, message_id: str, when: datetime) -> Message:
    # A copy of this mail coming back to us is recognised by its Message-ID
    # (`queries.message_by_content` matches our outgoing rows by id alone).
    return Message(
        ticket_id=mail.ticket_id,
        direction=Direction.OUTGOING.value,
        kind=mail.kind.value,
        message_id=message_id,
        content_hash=hashlib.sha256(raw).hexdigest(),
        in_reply_to=mail.in_reply_to or "",
        references=" ".join(mail.references),
        from_address=mail.from_.address,
        from_name=mail.from_.name,
        to_addresses=", ".join(str(a) for a in mail.to),
        cc_addresses=", ".join(str(a) for a in mail.cc),
        subject=mail.subject,
        sent_at=when,
        received_at=when,
        text=mail.body,
        new_text=mail.body,
        raw=raw,
        size=len(raw),
        origin_source="outbox",
    )


def claim_due(
    session: Session, *, holder: str, limit: int, now: datetime, lease: timedelta
) -> list[OutboxItem]:
    """Claim up to `limit` due rows for `holder` until `now + lease`.

    On PostgreSQL the rows are locked with SKIP LOCKED, so several senders
    never claim the same row; SQLite serialises writers anyway.
    """
    query = (
        select(OutboxItem)
        .where(
            OutboxItem.state == PENDING,
            OutboxItem.next_attempt_at <= now,
            or_(OutboxItem.claimed_until.is_(None), OutboxItem.claimed_until < now),
        )
        .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    items = list(session.scalars(query))
    for item in items:
        item.claimed_by = holder
        item.claimed_until = now + lease
    session.flush()
    return items


def _claimed(session: Session, item_id: int, holder: str) -> OutboxItem | None:
    """The row if `holder` still holds its claim (a takeover after expiry wins)."""
    item = session.get(OutboxItem, item_id, with_for_update=_lock(session))
    if item is None or item.state != PENDING or item.claimed_by != holder:
        return None
    return item


def _lock(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def mark_sent(session: Session, item_id: int, *, holder: str, now: datetime) -> bool:
    """Record that the SMTP server accepted the mail."""
    item = session.get(OutboxItem, item_id, with_for_update=_lock(session))
    if item is None or item.state == SENT:
        return False
    # Even if our claim expired meanwhile, the mail did go out: record it.
    item.state = SENT
    item.sent_at = now
    item.attempts += 1
    item.last_error = None
    item.claimed_by = None
    item.claimed_until = None
    return True


def mark_temporary_failure(
    session: Session,
    item_id: int,
    *,
    holder: str,
    error: str,
    now: datetime,
    policy: OutboxPolicy,
    rng: random.Random | None = None,
) -> OutboxItem | None:
    """A 4xx or a connection problem: try again later, or fail once the mail is too old."""
    return _failed(session, item_id, holder, error, now, policy, rng, permanent=False)


def mark_permanent_failure(
    session: Session,
    item_id: int,
    *,
    holder: str,
    error: str,
    now: datetime,
    policy: OutboxPolicy,
    rng: random.Random | None = None,
) -> OutboxItem | None:
    """A 5xx: fail after `max_permanent_failures` of them (a refusal is sometimes a glitch)."""
    return _failed(session, item_id, holder, error, now, policy, rng, permanent=True)


def _failed(
    session: Session,
    item_id: int,
    holder: str,
    error: str,
    now: datetime,
    policy: OutboxPolicy,
    rng: random.Random | None,
    *,
    permanent: bool,
) -> OutboxItem | None:
    item = _claimed(session, item_id, holder)
    if item is None:
        return None
    item.attempts += 1
    item.last_error = error[:2000]
    _release(item)
    if permanent:
        item.permanent_failures += 1
        give_up = item.permanent_failures >= policy.max_permanent_failures
    else:
        give_up = now - item.created_at >= policy.give_up_after
        if give_up:
            item.last_error = f"gave up after {item.attempts} attempts: {error}"[:2000]
    if give_up:
        item.state = FAILED
    else:
        item.next_attempt_at = now + backoff(item.attempts, policy, rng)
    return item


def _release(item: OutboxItem) -> None:
    item.claimed_by = None
    item.claimed_until = None


def backoff(attempts: int, policy: OutboxPolicy, rng: random.Random | None = None) -> timedelta:
    """Capped exponential backoff with jitter (half fixed, half random)."""
    ceiling = min(
        policy.retry_max_delay.total_seconds(),
        policy.retry_base.total_seconds() * 2 ** max(0, attempts - 1),
    )
    jitter = (rng or random).random()
    return timedelta(seconds=ceiling / 2 + jitter * ceiling / 2)


def retry(session: Session, item_id: int, *, now: datetime | None = None) -> OutboxItem:
    """Put a failed (or waiting) mail back in the queue, due now."""
    item = session.get(OutboxItem, item_id)
    if item is None:
        raise NotFound("outbox item", item_id)
    if item.state == SENT:
        raise InvalidInput(f"outbox item {item_id} was sent at {item.sent_at:%Y-%m-%d %H:%M}")
    item.state = PENDING
    item.permanent_failures = 0
    item.next_attempt_at = now or utcnow()
    _release(item)
    return item


def list_items(
    session: Session, *, states: Sequence[str] | None = None, limit: int = 100
) -> list[OutboxItem]:
    """Outbox rows, newest first."""
    query = select(OutboxItem).order_by(OutboxItem.id.desc()).limit(limit)
    if states:
        query = query.where(OutboxItem.state.in_(list(states)))
    return list(session.scalars(query))


def release_claims(session: Session, holder: str, item_ids: Sequence[int] | None = None) -> int:
    """Give back the claims of `holder` (all of them, or on `item_ids`)."""
    query = (
        update(OutboxItem)
        .where(OutboxItem.claimed_by == holder, OutboxItem.state == PENDING)
        .values(claimed_by=None, claimed_until=None)
    )
    if item_ids is not None:
        query = query.where(OutboxItem.id.in_(list(item_ids)))
    result = session.execute(query)
    return int(getattr(result, "rowcount", 0) or 0)
