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
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from helpdesk.delivery.outbox import OutboxPolicy
from helpdesk.delivery.views import FAILED, PENDING, SENT
from helpdesk.store import schema
from helpdesk.store.direct import Direct
from helpdesk.store.events import INSERT_EVENT
from helpdesk.store.models import OutboxItem
from helpdesk.store.schema import UTCDateTime

_OUTBOX = schema.outbox
_RECIPIENTS = schema.outbox_recipients


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


@dataclass(frozen=True, slots=True)
class Due:
    """A claimed row: what the sender needs to hand it to the relay."""

    id: int
    envelope_from: str
    recipients: tuple[str, ...]  # still to be sent, in the envelope's order
    raw: bytes
    correlation_id: str | None
    claimed_until: datetime


# Built once: `claim_due` runs for every batch the sender takes. Core, not the
# ORM: loading and flushing outbox objects was most of the sender's CPU after
# the conversation itself (issue 13).
_DUE = (
    select(_OUTBOX.c.id, _OUTBOX.c.envelope_from, _OUTBOX.c.envelope_to, _OUTBOX.c.raw,
           _OUTBOX.c.correlation_id)
    .where(
        _OUTBOX.c.state == PENDING,
        _OUTBOX.c.next_attempt_at <= bindparam("now", type_=UTCDateTime()),
        or_(_OUTBOX.c.claimed_until.is_(None),
            _OUTBOX.c.claimed_until < bindparam("db_now", type_=UTCDateTime())),
    )
    .order_by(_OUTBOX.c.next_attempt_at, _OUTBOX.c.id)
    .limit(bindparam("limit"))
)
_DUE_LOCKED = _DUE.with_for_update(skip_locked=True, of=_OUTBOX)
_DUE_RECIPIENTS = (
    select(_RECIPIENTS.c.outbox_id, _RECIPIENTS.c.address, _RECIPIENTS.c.state)
    .where(_RECIPIENTS.c.outbox_id.in_(bindparam("ids", expanding=True)))
    .order_by(_RECIPIENTS.c.id)
)
_CLAIM = (
    update(_OUTBOX).where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
    .values(claimed_by=bindparam("holder"),
            claimed_until=bindparam("until", type_=UTCDateTime()))
)
_SETTLE = update(_OUTBOX).where(_OUTBOX.c.id == bindparam("row_id")).values(
    state=bindparam("new_state"))


def claim_due(
    session: Session, *, holder: str, limit: int, now: datetime, lease: timedelta
) -> list[Due]:
    """Claim up to `limit` due rows for `holder` for `lease`, with their pending recipients.

    Due means `next_attempt_at <= now` (the sender's clock: a retry a second
    early or late does no harm); the claim and its expiry are on the
    database's clock (`database_now`). On PostgreSQL the rows are locked with
    SKIP LOCKED, so several senders never claim the same row; SQLite
    serialises writers anyway.
    """
    db_now = database_now(session, now)
    conn = session.connection()
    query = _DUE_LOCKED if _postgres(session) else _DUE
    rows = conn.execute(query, {"now": now, "db_now": db_now, "limit": limit}).all()
    if not rows:
        return []
    states: dict[int, list[tuple[str, str]]] = {}
    for outbox_id, address, state in conn.execute(_DUE_RECIPIENTS,
                                                   {"ids": [r.id for r in rows]}):
        states.setdefault(outbox_id, []).append((address, state))
    until = db_now + lease
    due: list[Due] = []
    missing: list[dict[str, Any]] = []
    settled: list[dict[str, Any]] = []
    for row in rows:
        found = states.get(row.id)
        if found is None:
            # A row written by something other than `enqueue`: its envelope is the truth.
            found = [(address, PENDING) for address in dict.fromkeys(row.envelope_to)]
            missing += [{"outbox_id": row.id, "address": address, "state": PENDING,
                         "attempts": 0, "permanent_failures": 0} for address, _ in found]
        pending = tuple(address for address, state in found if state == PENDING)
        if not pending:
            # Nothing left to send (rows edited by hand): settle it instead of sending.
            sent = any(state == SENT for _, state in found)
            settled.append({"row_id": row.id, "new_state": SENT if sent else FAILED})
            continue
        due.append(Due(row.id, row.envelope_from, pending, row.raw, row.correlation_id, until))
    if missing:
        conn.execute(insert(_RECIPIENTS), missing)
    if settled:
        conn.execute(_SETTLE, settled)
    if due:
        conn.execute(_CLAIM, {"ids": [d.id for d in due], "holder": holder, "until": until})
    return due


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


@dataclass(frozen=True)
class RowState:
    """What `plan` needs of an outbox row."""

    id: int
    ticket_id: int | None
    message_id: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None
    claimed_by: str | None
    claimed_until: datetime | None


@dataclass(frozen=True)
class RecipientState:
    """One recipient of a row, as stored (and as `plan` leaves it)."""

    id: int
    address: str
    state: str
    attempts: int = 0
    permanent_failures: int = 0
    last_reply: str | None = None
    sent_at: datetime | None = None


@dataclass(frozen=True)
class Plan:
    """What recording one report changes: pure data, written by `record`."""

    recorded: Recorded
    row: dict[str, Any]
    recipients: tuple[RecipientState, ...]
    attempt: dict[str, Any]
    dead: tuple[RecipientState, ...]


def plan(
    row: RowState,
    recipients: Sequence[RecipientState],
    report: DeliveryReport,
    *,
    holder: str,
    now: datetime,
    policy: OutboxPolicy,
    rng: random.Random | None = None,
) -> Plan | None:
    """The new state of a row and its recipients after the relay's answers in `report`.

    None when no answer is about a recipient still pending (already recorded).
    """
    pending = {r.address for r in recipients if r.state == PENDING}
    replies = {reply.address: reply for reply in report.replies if reply.address in pending}
    if not replies:
        return None
    too_old = now - row.created_at >= policy.give_up_after
    after = [_answered(r, replies.get(r.address), now, policy, too_old) for r in recipients]
    changed = tuple(new for old, new in zip(recipients, after, strict=True) if new != old)
    dead = tuple(r for r in changed if r.state == FAILED)
    attempts = row.attempts + 1
    still = [r for r in after if r.state == PENDING]
    next_at = now + backoff(attempts, policy, rng) if still else None
    state = PENDING if still else SENT if any(r.state == SENT for r in after) else FAILED
    accepted = [a for a, reply in replies.items() if reply.accepted]
    error = "; ".join(f"{a}: {reply}" for a, reply in replies.items() if not reply.accepted)
    released = row.claimed_by == holder
    return Plan(
        recorded=Recorded(
            item_id=row.id, outcome=report.outcome, state=state, sent=tuple(accepted),
            deferred=tuple(r.address for r in still), dead=tuple(r.address for r in dead),
            error=error[:2000] or None, next_attempt_at=next_at,
        ),
        row={
            "id": row.id, "state": state, "attempts": attempts,
            "permanent_failures": max((r.permanent_failures for r in after), default=0),
            "next_attempt_at": next_at or row.next_attempt_at,
            "sent_at": now if accepted else row.sent_at,
            "last_error": error[:2000] or None,
            # A claim taken over by another sender (ours expired) stays theirs.
            "claimed_by": None if released else row.claimed_by,
            "claimed_until": None if released else row.claimed_until,
        },
        recipients=changed,
        attempt={
            "outbox_id": row.id, "at": now, "holder": holder, "outcome": report.outcome,
            "detail": "; ".join(f"{a}: {reply}" for a, reply in replies.items())[:4000],
            "next_attempt_at": next_at,
        },
        dead=dead,
    )


def _answered(
    recipient: RecipientState,
    reply: RecipientReply | None,
    now: datetime,
    policy: OutboxPolicy,
    too_old: bool,
) -> RecipientState:
    """One recipient after the relay's answer (if any) about it."""
    if recipient.state != PENDING:
        return recipient
    new = recipient
    if reply is not None:
        new = replace(new, attempts=new.attempts + 1, last_reply=str(reply)[:2000])
        if reply.accepted:
            return replace(new, state=SENT, sent_at=now)
        if reply.permanent:
            # A 5xx is sometimes a glitch (a relay's lookup failing): fail after a few.
            new = replace(new, permanent_failures=new.permanent_failures + 1)
            if new.permanent_failures >= policy.max_permanent_failures:
                return replace(new, state=FAILED)
    if too_old:
        return replace(new, state=FAILED, last_reply=(
            f"gave up after {new.attempts} attempts: {new.last_reply or 'no answer'}")[:2000])
    return new


# The statements `record` runs, compiled once and run on the driver's cursor
# (`Direct`): it runs once per mail the relay accepts, in the daemon's process
# beside the ingest writer, and SQLAlchemy's execution of Core statements was
# most of its CPU (issue 13).
_LOAD_ONE = (
    select(
        _OUTBOX.c.id, _OUTBOX.c.ticket_id, _OUTBOX.c.message_id, _OUTBOX.c.attempts,
        _OUTBOX.c.created_at, _OUTBOX.c.next_attempt_at, _OUTBOX.c.sent_at,
        _OUTBOX.c.claimed_by, _OUTBOX.c.claimed_until,
        _RECIPIENTS.c.id, _RECIPIENTS.c.address, _RECIPIENTS.c.state, _RECIPIENTS.c.attempts,
        _RECIPIENTS.c.permanent_failures, _RECIPIENTS.c.last_reply, _RECIPIENTS.c.sent_at,
    )
    .select_from(_OUTBOX.outerjoin(_RECIPIENTS, _RECIPIENTS.c.outbox_id == _OUTBOX.c.id))
    .where(_OUTBOX.c.id == bindparam("item_id"))
    .order_by(_RECIPIENTS.c.id)
)
_LOAD = Direct(_LOAD_ONE)
_LOAD_LOCKED = Direct(_LOAD_ONE.with_for_update(of=_OUTBOX))
_ROW_FIELDS = ("state", "attempts", "permanent_failures", "next_attempt_at", "sent_at",
               "last_error", "claimed_by", "claimed_until")
_UPDATE_ROW = Direct(
    update(_OUTBOX).where(_OUTBOX.c.id == bindparam("row_id"))
    .values({name: bindparam(f"new_{name}", type_=_OUTBOX.c[name].type)
             for name in _ROW_FIELDS})
)
_RECIPIENT_FIELDS = ("state", "attempts", "permanent_failures", "last_reply", "sent_at",
                     "updated_at")
_UPDATE_RECIPIENT = Direct(
    update(_RECIPIENTS).where(_RECIPIENTS.c.id == bindparam("recipient_id"))
    .values({name: bindparam(f"new_{name}", type_=_RECIPIENTS.c[name].type)
             for name in _RECIPIENT_FIELDS})
)
_INSERT_ATTEMPT = Direct(insert(schema.outbox_attempts))


def record(
    conn: Connection,
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
    rows, recipients = _load(conn, [r.item_id for r in reports])
    plans = [
        found for report in reports if report.item_id in rows
        if (found := plan(rows[report.item_id], recipients.get(report.item_id, []), report,
                          holder=holder, now=now, policy=policy, rng=rng)) is not None
    ]
    if not plans:
        return []
    _UPDATE_ROW.executemany(conn, [
        {"row_id": p.row["id"], **{f"new_{k}": p.row[k] for k in _ROW_FIELDS}} for p in plans])
    changed = [{"recipient_id": r.id, "new_state": r.state, "new_attempts": r.attempts,
                "new_permanent_failures": r.permanent_failures, "new_last_reply": r.last_reply,
                "new_sent_at": r.sent_at, "new_updated_at": now}
               for p in plans for r in p.recipients]
    if changed:
        _UPDATE_RECIPIENT.executemany(conn, changed)
    # The log keeps what needs explaining: a first attempt that reached everyone
    # is told by the recipients' sent_at.
    attempts = [p.attempt for p in plans
                if p.row["attempts"] > 1 or p.recorded.outcome != "sent"]
    if attempts:
        _INSERT_ATTEMPT.executemany(conn, attempts)
    events = [_dead_event(rows[p.row["id"]], r, now) for p in plans for r in p.dead
              if rows[p.row["id"]].ticket_id is not None]
    if events:
        INSERT_EVENT.executemany(conn, events)
    return [p.recorded for p in plans]


def _load(
    conn: Connection, ids: list[int]
) -> tuple[dict[int, RowState], dict[int, list[RecipientState]]]:
    # One query a row: `record` gets one or two reports at a time (the sender
    # holds each mail's dot until the results before it are written).
    query = _LOAD_LOCKED if conn.dialect.name == "postgresql" else _LOAD
    rows: dict[int, RowState] = {}
    recipients: dict[int, list[RecipientState]] = {}
    found = [r for item_id in sorted(set(ids)) for r in query.all(conn, {"item_id": item_id})]
    for r in found:
        (item_id, ticket_id, message_id, attempts, created_at, next_attempt_at, sent_at,
         claimed_by, claimed_until, rid, address, state, tries, refusals, reply, at) = r
        if item_id not in rows:
            rows[item_id] = RowState(item_id, ticket_id, message_id, attempts, created_at,
                                     next_attempt_at, sent_at, claimed_by, claimed_until)
        if rid is not None:
            recipients.setdefault(item_id, []).append(
                RecipientState(rid, address, state, tries, refusals, reply, at))
    return rows, recipients


def _dead_event(row: RowState, recipient: RecipientState, now: datetime) -> dict[str, Any]:
    """A dead-lettered recipient is noted on the ticket, so the agent knows who missed it."""
    return {
        "ticket_id": row.ticket_id, "actor": "outbox", "kind": "outbox.recipient_failed",
        "created_at": now, "message_row_id": None,
        "detail": {"outbox_id": row.id, "address": recipient.address,
                   "error": recipient.last_reply, "message_id": row.message_id},
    }


def backoff(attempts: int, policy: OutboxPolicy, rng: random.Random | None = None) -> timedelta:
    """Capped exponential backoff with jitter (half fixed, half random)."""
    ceiling = min(
        policy.retry_max_delay.total_seconds(),
        policy.retry_base.total_seconds() * 2 ** max(0, attempts - 1),
    )
    jitter = (rng or random).random()
    return timedelta(seconds=ceiling / 2 + jitter * ceiling / 2)


