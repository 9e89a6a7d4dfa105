"""What people see of outgoing mail, read through Core: no ORM, no mail composition.

`outbox list` and `helpdesk status` read here, on a read-only connection
(`AppContext.reading()`) or inside a session. Importing the ORM, the models and
the composer cost `outbox list` about a third of its start-up, and a list is
all it shows (issue 13 item 5). `helpdesk.delivery.outbox` re-exports these
for the writers' side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Connection, select

from helpdesk.store import schema

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["OutboxLike", "OutboxRow", "RecipientView", "RelayStatus", "delivery_summary",
           "list_outbox", "recipient_views", "relay_status"]

PENDING, SENT, FAILED = "pending", "sent", "failed"


class _Recipient(Protocol):
    @property
    def address(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def last_reply(self) -> str | None: ...
    @property
    def sent_at(self) -> datetime | None: ...


class OutboxLike(Protocol):
    """An outbox row as these views read it: the ORM's `OutboxItem` or an `OutboxRow`."""

    @property
    def id(self) -> int: ...
    @property
    def ticket_id(self) -> int | None: ...
    @property
    def kind(self) -> str: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def raw(self) -> bytes | None: ...
    @property
    def envelope_from(self) -> str: ...
    @property
    def message_id(self) -> str: ...
    @property
    def next_attempt_at(self) -> datetime: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def state(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def sent_at(self) -> datetime | None: ...
    @property
    def envelope_to(self) -> list[str]: ...
    @property
    def recipients(self) -> Sequence[_Recipient]: ...


@dataclass(frozen=True)
class RecipientView:
    """One recipient's delivery state, for `outbox list/show` and `tickets show`."""

    address: str
    state: str
    attempts: int
    last_reply: str | None
    sent_at: datetime | None


def recipient_views(item: OutboxLike) -> list[RecipientView]:
    """Each recipient's state; rows sent before per-recipient state existed show the row's."""
    if item.recipients:
        return [RecipientView(r.address, r.state, r.attempts, r.last_reply, r.sent_at)
                for r in item.recipients]
    return [RecipientView(a, item.state, item.attempts, item.last_error, item.sent_at)
            for a in item.envelope_to]


def delivery_summary(item: OutboxLike) -> str:
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


# -- the outbox, listed -----------------------------------------------------------------


@dataclass(frozen=True)
class OutboxRow:
    """One outbox row as `outbox list` shows it; `raw` only where `subject` is not stored."""

    id: int
    ticket_id: int | None
    kind: str
    state: str
    subject: str | None
    envelope_from: str
    envelope_to: list[str]
    message_id: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    recipients: tuple[RecipientView, ...]
    raw: bytes | None = None


_outbox, _recipients = schema.outbox, schema.outbox_recipients
_LISTED = [c for c in _outbox.c if c.name not in ("raw", "claimed_by", "claimed_until",
                                                 "correlation_id", "permanent_failures")]


def list_outbox(conn: Connection | Session, *, states: Sequence[str] | None = None,
                ticket_id: int | None = None, limit: int = 100) -> list[OutboxRow]:
    """Outbox rows, newest first, with their recipients; a row's mail bytes only when its
    subject was not stored (rows queued before revision 0005): a list of a thousand
    forwards with attachments must not read them all."""
    query = select(*_LISTED).order_by(_outbox.c.id.desc()).limit(limit)
    if states:
        query = query.where(_outbox.c.state.in_(list(states)))
    if ticket_id is not None:
        query = query.where(_outbox.c.ticket_id == ticket_id)
    rows = conn.execute(query).mappings().all()
    ids = [row["id"] for row in rows]
    recipients: dict[int, list[RecipientView]] = {}
    raws: dict[int, bytes] = {}
    if ids:
        for r in conn.execute(
            select(_recipients.c.outbox_id, _recipients.c.address, _recipients.c.state,
                   _recipients.c.attempts, _recipients.c.last_reply, _recipients.c.sent_at)
            .where(_recipients.c.outbox_id.in_(ids)).order_by(_recipients.c.id)
        ):
            recipients.setdefault(r.outbox_id, []).append(
                RecipientView(r.address, r.state, r.attempts, r.last_reply, r.sent_at))
        unnamed = [row["id"] for row in rows if row["subject"] is None]
        if unnamed:
            raws = {r.id: r.raw for r in conn.execute(
                select(_outbox.c.id, _outbox.c.raw).where(_outbox.c.id.in_(unnamed)))}
    return [OutboxRow(**{c.name: row[c.name] for c in _LISTED},
                      recipients=tuple(recipients.get(row["id"], ())),
                      raw=raws.get(row["id"]))
            for row in rows]


# -- the relay's own state --------------------------------------------------------------


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


def relay_status(conn: Connection | Session, relay: str | None = None) -> list[RelayStatus]:
    """The relay state the senders recorded (one relay, or all), for `outbox list` and status."""
    table = schema.relay_state
    query = select(table).order_by(table.c.relay)
    if relay is not None:
        query = query.where(table.c.relay == relay)
    return [RelayStatus(r.relay, r.state, r.problem, r.error, r.since, r.checked_at,
                        r.next_try_at, r.holder) for r in conn.execute(query)]
