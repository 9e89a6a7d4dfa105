"""The transactional outbox: every mail we send is a row before it is a socket.

`enqueue` composes the mail, gives it its final Message-ID, and writes the
outbox row, one row per envelope recipient, *and* an outgoing message on the
ticket in the caller's transaction, so the mail exists exactly when the change
that caused it does.

The sender edge (`helpdesk.smtp`) claims due rows (`claim_due`, `FOR UPDATE
SKIP LOCKED` on PostgreSQL), keeps its claims alive while it works
(`renew_claims`), hands the mail to the relay and writes what the relay
answered about each recipient with `record`. A recipient refused with 4xx is
retried on the backoff schedule, one refused with 5xx (after
`max_permanent_failures` refusals) is dead-lettered with an event on the
ticket; the others are never sent again. Problems of the relay itself (down,
TLS, AUTH, MAIL FROM refused) are not the mail's fault: they are kept in
`relay_state` (`relay_status`) and the mail stays queued untouched.

Claims expire on the database's clock on PostgreSQL (`now()`), so two
daemons on hosts whose clocks disagree never both hold a row. On SQLite the
database is a file on this host, and this host's clock is its clock.

Delivery is exactly once except in one window: a sender that dies between
the relay's 250 and the commit of `record` (milliseconds: results are
recorded as they come, in small group commits) sends that mail again once
its claim expires, with the same Message-ID.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from helpdesk.errors import InvalidInput, NotFound
from helpdesk.mail.compose import compose, make_message_id
from helpdesk.store.models import (
    Event,
    Message,
    OutboxAttempt,
    OutboxItem,
    OutboxRecipient,
    RelayState,
    UTCDateTime,
    utcnow,
)
from helpdesk.values import Direction, OutgoingMail
from helpdesk.wakeup import mark_queued

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
        envelope_from=mail.from_.address,
        envelope_to=recipients,
        raw=raw,
        kind=mail.kind.value,
        state=PENDING,
        attempts=0,
        permanent_failures=0,
        next_attempt_at=when,
        created_at=when,
        correlation_id=correlation_id,
        subject=mail.subject,
        recipients=[_recipient(address) for address in recipients],
    )
    session.add(item)
    if mail.ticket_id is not None:
        session.add(_message_row(mail, raw, message_id, when))
    session.flush()
    mark_queued(session)
    return item


def _recipient(address: str) -> OutboxRecipient:
    return OutboxRecipient(address=address, state=PENDING, attempts=0, permanent_failures=0)


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
            item.recipients = [_recipient(a) for a in dict.fromkeys(item.envelope_to)]
    session.flush()
    return items


def pending_recipients(item: OutboxItem) -> list[str]:
    """The addresses of `item` still to be sent."""
    return [r.address for r in item.recipients if r.state == PENDING]


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
    done = []
    for report in reports:
        item = session.get(OutboxItem, report.item_id, with_for_update=_postgres(session),
                           options=[selectinload(OutboxItem.recipients)])
        if item is None:
            continue
        recorded = _record_one(session, item, report, holder, now, policy, rng)
        if recorded is not None:
            done.append(recorded)
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


def retry(session: Session, item_id: int, *, now: datetime | None = None) -> OutboxItem:
    """Queue a failed (or waiting) mail again, due now, to the recipients not yet sent."""
    item = session.get(OutboxItem, item_id, options=[selectinload(OutboxItem.recipients)])
    if item is None:
        raise NotFound("outbox item", item_id)
    failed = [r for r in item.recipients if r.state == FAILED]
    if item.state == SENT and not failed:
        raise InvalidInput(f"outbox item {item_id} was sent at {item.sent_at:%Y-%m-%d %H:%M}")
    if not item.recipients:
        item.recipients = [_recipient(a) for a in dict.fromkeys(item.envelope_to)]
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


def list_items(
    session: Session,
    *,
    states: Sequence[str] | None = None,
    ticket_id: int | None = None,
    limit: int = 100,
) -> list[OutboxItem]:
    """Outbox rows, newest first, their recipients loaded."""
    query = (
        select(OutboxItem)
        .order_by(OutboxItem.id.desc())
        .limit(limit)
        .options(selectinload(OutboxItem.recipients))
    )
    if states:
        query = query.where(OutboxItem.state.in_(list(states)))
    if ticket_id is not None:
        query = query.where(OutboxItem.ticket_id == ticket_id)
    return list(session.scalars(query))


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


@dataclass(frozen=True)
class RecipientView:
    """One recipient's delivery state, for `outbox list/show` and `tickets show`."""

    address: str
    state: str
    attempts: int
    last_reply: str | None
    sent_at: datetime | None


def recipient_views(item: OutboxItem) -> list[RecipientView]:
    """Each recipient's state; rows sent before per-recipient state existed show the row's."""
    if item.recipients:
        return [RecipientView(r.address, r.state, r.attempts, r.last_reply, r.sent_at)
                for r in item.recipients]
    return [RecipientView(a, item.state, item.attempts, item.last_error, item.sent_at)
            for a in item.envelope_to]


def delivery_summary(item: OutboxItem) -> str:
    """The row's state in words: `sent`, `pending`, or `partly delivered: 1 of 2 sent, ...`."""
    views = recipient_views(item)
    sent = sum(1 for v in views if v.state == SENT)
    if sent == 0 or sent == len(views):
        return item.state
    rest = []
    retrying = sum(1 for v in views if v.state == PENDING)
    failed = sum(1 for v in views if v.state == FAILED)
    if retrying:
        rest.append(f"{retrying} retrying")
    if failed:
        rest.append(f"{failed} failed")
    return f"partly delivered: {sent} of {len(views)} sent, {', '.join(rest)}"


# -- the relay's own state -------------------------------------------------------------


@dataclass(frozen=True)
class RelayStatus:
    """What a sender last saw of the relay; `problem` is None when it worked."""

    relay: str
    state: str
    problem: str | None
    error: str | None
    since: datetime
    checked_at: datetime
    next_try_at: datetime | None
    holder: str

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def describe(self) -> str:
        """One line for people: `relay HOST:PORT failing since ...: auth: 535 ...`."""
        if self.ok:
            return f"relay {self.relay} ok (checked {self.checked_at:%Y-%m-%d %H:%M})"
        retry = f", next try {self.next_try_at:%H:%M:%S}" if self.next_try_at else ""
        return (f"relay {self.relay} failing since {self.since:%Y-%m-%d %H:%M}: "
                f"{self.problem}: {self.error}{retry}; mail stays queued")


def relay_status(session: Session, relay: str | None = None) -> list[RelayStatus]:
    """The relay state the senders recorded (one relay, or all), for `outbox list` and status."""
    query = select(RelayState).order_by(RelayState.relay)
    if relay is not None:
        query = query.where(RelayState.relay == relay)
    return [RelayStatus(r.relay, r.state, r.problem, r.error, r.since, r.checked_at,
                        r.next_try_at, r.holder) for r in session.scalars(query)]


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
    row = session.get(RelayState, relay)
    if row is None:
        row = RelayState(relay=relay, since=now)
        session.add(row)
    elif (row.state, row.problem) != (state, problem):
        row.since = now
    row.state, row.problem, row.error = state, problem, error
    row.checked_at, row.next_try_at, row.holder = now, next_try_at, holder
