"""The sender's side of the outbox: claims, their renewal, and what the relay answered.

The sender edge (`helpdesk.smtp`) claims due rows (`claim_due`, `FOR UPDATE
SKIP LOCKED` on PostgreSQL), keeps its claims alive while it works
(`renew_claims`), hands the mail to the relay and writes what the relay
answered about each recipient with `record`. A recipient refused with 4xx is
retried on the backoff schedule, one refused with 5xx (after
`max_permanent_failures` refusals) is dead-lettered with an event on the
ticket; the others are never sent again.

Claims expire on the database's clock on PostgreSQL (`now()`), so two
daemons on hosts whose clocks disagree never both hold a row (issue 9 item
12). On SQLite the database is a file on this host, and this host's clock is
its clock.

Delivery is exactly once except in one window: a sender that dies between
the relay's 250 and the commit of `record` (milliseconds: results are
recorded as they come, in small group commits) sends that mail again once
its claim expires, with the same Message-ID.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from helpdesk.outbox import FAILED, PENDING, SENT, OutboxPolicy, recipient_row
from helpdesk.store.models import (
    Event,
    OutboxAttempt,
    OutboxItem,
    OutboxRecipient,
    UTCDateTime,
)

# -- claims ------------------------------------------------------------------------


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def database_now(session: Session, fallback: datetime) -> datetime:
    """The database's clock on PostgreSQL (`now()`, the transaction's start); else `fallback`.

    Claims compare times written by different hosts; on PostgreSQL only the
    server's clock is common to all of them (issue 9 item 12).
    """
    if not _postgres(session):
        return fallback
    value = session.execute(select(_pg_now())).scalar_one()
    assert isinstance(value, datetime)
    return value


def _pg_now() -> ColumnElement[datetime]:
    return func.now(type_=UTCDateTime())


def claim_due(
    session: Session, *, holder: str, limit: int, now: datetime, lease: timedelta
) -> list[OutboxItem]:
    """Claim up to `limit` due rows for `holder` for `lease`, their pending recipients loaded.

    Due means `next_attempt_at <= now` (the sender's clock: a retry a second
    early or late does no harm); the claim and its expiry are on the
    database's clock (`database_now`). On PostgreSQL the rows are locked with
    SKIP LOCKED, so several senders never claim the same row; SQLite
    serialises writers anyway.
    """
    db_now = database_now(session, now)
    query = (
        select(OutboxItem)
        .where(
            OutboxItem.state == PENDING,
            OutboxItem.next_attempt_at <= now,
            or_(OutboxItem.claimed_until.is_(None), OutboxItem.claimed_until < db_now),
        )
        .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
        .limit(limit)
        .options(selectinload(OutboxItem.recipients))
    )
    if _postgres(session):
        query = query.with_for_update(skip_locked=True, of=OutboxItem)
    items = list(session.scalars(query))
    for item in items:
        item.claimed_by = holder
        item.claimed_until = db_now + lease
        if not item.recipients:
            # A row written by something other than `enqueue`: its envelope is the truth.
            item.recipients = [recipient_row(a) for a in dict.fromkeys(item.envelope_to)]
    session.flush()
    return items


def renew_claims(session: Session, *, holder: str, lease: timedelta, now: datetime) -> int:
    """Extend every claim `holder` still holds to `lease` from now (database clock)."""
    until = database_now(session, now) + lease
    result = session.execute(
        update(OutboxItem)
        .where(OutboxItem.claimed_by == holder, OutboxItem.state == PENDING)
        .values(claimed_until=until)
    )
    return int(getattr(result, "rowcount", 0) or 0)


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


# -- results -----------------------------------------------------------------------


@dataclass(frozen=True)
class RecipientReply:
    """What the relay answered about one recipient (to RCPT, or to DATA for all)."""

    address: str
    code: int
    text: str = ""

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


@dataclass(frozen=True)
class DeliveryReport:
    """The relay's answers about one outbox row's recipients in one attempt."""

    item_id: int
    replies: tuple[RecipientReply, ...]

    @property
    def outcome(self) -> str:
        """sent (all accepted), partial, deferred (none accepted, some 4xx) or refused (all 5xx)."""
        accepted = sum(1 for r in self.replies if r.accepted)
        if accepted == len(self.replies):
            return "sent"
        if accepted:
            return "partial"
        return "refused" if all(r.permanent for r in self.replies) else "deferred"


@dataclass(frozen=True)
class Recorded:
    """What `record` did with one report, for the sender's log lines."""

    item_id: int
    outcome: str
    state: str
    sent: tuple[str, ...]
    deferred: tuple[str, ...]
    dead: tuple[str, ...]
    error: str | None
    next_attempt_at: datetime | None


def record(
    session: Session,
    reports: Sequence[DeliveryReport],
    *,
    holder: str,
    now: datetime,
    policy: OutboxPolicy,
    rng: random.Random | None = None,
) -> list[Recorded]:
    """Write what the relay answered, per recipient, and release the claims.

    Idempotent: a report whose recipients are no longer pending (it was
    written by an earlier try whose commit only seemed to fail) is skipped.
    A 250 is recorded even if the claim expired meanwhile: the mail did go out.
    """
    if not reports:
        return []
    # One query and one flush for the whole group: this runs once per group
    # commit, beside a connection sending hundreds of mails a second.
    query = (
        select(OutboxItem)
        .where(OutboxItem.id.in_([r.item_id for r in reports]))
        .options(selectinload(OutboxItem.recipients))
    )
    if _postgres(session):
        query = query.with_for_update(of=OutboxItem)
    found = {item.id: item for item in session.scalars(query)}
    done = []
    with session.no_autoflush:
        for report in reports:
            item = found.get(report.item_id)
            if item is None:
                continue
            recorded = _record_one(session, item, report, holder, now, policy, rng)
            if recorded is not None:
                done.append(recorded)
    session.flush()
    return done


def _record_one(
    session: Session,
    item: OutboxItem,
    report: DeliveryReport,
    holder: str,
    now: datetime,
    policy: OutboxPolicy,
    rng: random.Random | None,
) -> Recorded | None:
    by_address = {r.address: r for r in item.recipients if r.state == PENDING}
    replies = [reply for reply in report.replies if reply.address in by_address]
    if not replies:
        return None
    dead = []
    for reply in replies:
        if _apply_reply(by_address[reply.address], reply, now, policy):
            dead.append(reply.address)
    item.attempts += 1
    problems = [f"{r.address}: {r}" for r in replies if not r.accepted]
    dead += _give_up_if_too_old(item, now, policy)
    item.permanent_failures = max((r.permanent_failures for r in item.recipients), default=0)
    still = [r for r in item.recipients if r.state == PENDING]
    next_at = None
    if still:
        next_at = now + backoff(item.attempts, policy, rng)
        item.next_attempt_at = next_at
    else:
        item.state = SENT if any(r.state == SENT for r in item.recipients) else FAILED
    if any(r.accepted for r in replies):
        item.sent_at = now
    item.last_error = "; ".join(problems)[:2000] or None
    if item.claimed_by == holder:
        item.claimed_by = item.claimed_until = None
    session.add(OutboxAttempt(outbox_id=item.id, at=now, holder=holder, outcome=report.outcome,
                              detail="; ".join(f"{r.address}: {r}" for r in replies)[:4000],
                              next_attempt_at=next_at))
    _note_dead(session, item, dead, holder, now)
    return Recorded(
        item_id=item.id, outcome=report.outcome, state=item.state,
        sent=tuple(r.address for r in replies if r.accepted),
        deferred=tuple(r.address for r in still), dead=tuple(dead),
        error=item.last_error, next_attempt_at=next_at,
    )


def _apply_reply(
    recipient: OutboxRecipient, reply: RecipientReply, now: datetime, policy: OutboxPolicy
) -> bool:
    """Update one recipient from the relay's answer; True when it is now dead-lettered."""
    recipient.attempts += 1
    recipient.last_reply = str(reply)[:2000]
    recipient.updated_at = now
    if reply.accepted:
        recipient.state = SENT
        recipient.sent_at = now
        return False
    if reply.permanent:
        # A 5xx is sometimes a glitch (a relay's lookup failing): fail after a few.
        recipient.permanent_failures += 1
        if recipient.permanent_failures >= policy.max_permanent_failures:
            recipient.state = FAILED
            return True
    return False


def _give_up_if_too_old(item: OutboxItem, now: datetime, policy: OutboxPolicy) -> list[str]:
    if now - item.created_at < policy.give_up_after:
        return []
    dead = []
    for recipient in item.recipients:
        if recipient.state == PENDING:
            recipient.state = FAILED
            recipient.last_reply = (f"gave up after {recipient.attempts} attempts: "
                                    f"{recipient.last_reply or 'no answer'}")[:2000]
            dead.append(recipient.address)
    return dead


def _note_dead(
    session: Session, item: OutboxItem, dead: Sequence[str], holder: str, now: datetime
) -> None:
    """A dead-lettered recipient is noted on the ticket, so the agent knows who missed it."""
    if item.ticket_id is None:
        return
    for recipient in item.recipients:
        if recipient.address in dead:
            session.add(Event(
                ticket_id=item.ticket_id, actor="outbox", kind="outbox.recipient_failed",
                created_at=now,
                detail={"outbox_id": item.id, "address": recipient.address,
                        "error": recipient.last_reply, "message_id": item.message_id},
            ))


def backoff(attempts: int, policy: OutboxPolicy, rng: random.Random | None = None) -> timedelta:
    """Capped exponential backoff with jitter (half fixed, half random)."""
    ceiling = min(
        policy.retry_max_delay.total_seconds(),
        policy.retry_base.total_seconds() * 2 ** max(0, attempts - 1),
    )
    jitter = (rng or random).random()
    return timedelta(seconds=ceiling / 2 + jitter * ceiling / 2)


