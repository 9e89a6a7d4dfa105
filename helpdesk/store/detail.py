"""One ticket as `tickets show` presents it, read through Core: no ORM, no mail bytes.

The ORM's `Ticket.messages` loaded every message's raw mail, and the ticket's
outbox rows theirs, to show text that is stored beside them: a ticket of fifty
mails with attachments read them all. Here each statement names the columns it
shows, and the command imports neither `sqlalchemy.orm` nor the models
(issue 13 item 5). `helpdesk export` shares the deliveries (`queries` re-exports
them) and still reads its tickets through the ORM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select

from helpdesk.store import schema
from helpdesk.values import Direction, MessageKind

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["AttachmentRow", "Conversation", "Delivery", "Entry", "EventRow", "MessageRow",
           "RecipientState", "TicketHead", "conversation", "deliveries", "events",
           "relayed_copies"]


@dataclass(frozen=True)
class TicketHead:
    """A ticket's own fields, names resolved (team, assignee's primary address, requester)."""

    id: int
    subject: str
    status: str
    priority: str
    team: str | None
    assignee: str | None
    requester: str | None
    tags: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    first_response_at: datetime | None
    resolved_at: datetime | None
    merged_into_id: int | None
    message_count: int


@dataclass(frozen=True)
class AttachmentRow:
    """An attachment's description (not its bytes)."""

    id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool


@dataclass(frozen=True)
class MessageRow:
    """One stored mail as shown: its headers' fields and text, not its raw bytes."""

    id: int
    kind: str
    direction: str
    from_address: str
    from_name: str
    to_addresses: str
    cc_addresses: str
    sent_at: datetime | None
    received_at: datetime
    subject: str
    message_id: str
    text: str
    new_text: str
    defects: str
    attachments: tuple[AttachmentRow, ...]


@dataclass(frozen=True)
class EventRow:
    """One line of a ticket's audit trail."""

    id: int
    created_at: datetime
    actor: str
    kind: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class RecipientState:
    """Where one recipient of an outgoing mail stands: pending, sent or failed."""

    address: str
    state: str


@dataclass(frozen=True)
class Delivery:
    """One outgoing mail of a ticket and its delivery state (an outbox row)."""

    outbox_id: int
    message_id: str
    kind: str
    subject: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    sent_at: datetime | None
    recipients: tuple[RecipientState, ...]


@dataclass(frozen=True)
class Entry:
    """One mail of a ticket's thread as people read it.

    An agent's mail that was relayed to the requester is one entry: the
    agent's mail, `relayed`, with the delivery of the relayed copy (the copy
    itself is not a second entry). An outgoing mail carries its own delivery.
    """

    message: MessageRow
    relayed: bool
    delivery: Delivery | None


@dataclass(frozen=True)
class Conversation:
    """A ticket, its thread in arrival order, its outgoing mail and its events."""

    ticket: TicketHead
    entries: tuple[Entry, ...]
    deliveries: tuple[Delivery, ...]
    events: tuple[EventRow, ...]


def conversation(conn: Connection | Session, ticket_id: int) -> Conversation | None:
    """The ticket as `tickets show` presents it; None when there is none."""
    c = schema.connection_of(conn)
    head = _head(c, ticket_id)
    if head is None:
        return None
    messages = _messages(c, ticket_id)
    sent = deliveries(c, ticket_id)
    return Conversation(head, arrange(messages, sent, relayed_copies(c, ticket_id)),
                        tuple(sent), tuple(events(c, ticket_id)))


def arrange(messages: Sequence[MessageRow], sent: Sequence[Delivery],
            relays: dict[int, str]) -> tuple[Entry, ...]:
    """The thread as people read it: a relayed agent's mail once, with its copy's delivery."""
    by_message_id = {d.message_id: d for d in sent}
    copies = set(relays.values())
    entries: list[Entry] = []
    for message in messages:
        outgoing = message.direction == Direction.OUTGOING.value
        if outgoing and message.message_id in copies:
            continue  # shown as the agent's mail it relays
        relay = relays.get(message.id)
        sent_as = relay or (message.message_id if outgoing else None)
        entries.append(Entry(
            message=message,
            relayed=relay is not None or (outgoing and message.kind == MessageKind.AGENT_REPLY),
            delivery=by_message_id.get(sent_as) if sent_as else None,
        ))
    return tuple(entries)


def _head(conn: Connection, ticket_id: int) -> TicketHead | None:
    t, m = schema.tickets.c, schema.messages
    assignee = (  # the agent's primary address: their first one
        select(schema.agent_addresses.c.address)
        .where(schema.agent_addresses.c.agent_id == t.assignee_id)
        .order_by(schema.agent_addresses.c.id).limit(1).scalar_subquery()
    )
    count = select(func.count()).select_from(m).where(m.c.ticket_id == t.id).scalar_subquery()
    row = conn.execute(
        select(t.id, t.subject, t.status, t.priority, schema.teams.c.name.label("team"),
               assignee.label("assignee"), schema.contacts.c.address.label("requester"),
               t.created_at, t.updated_at, t.first_response_at, t.resolved_at,
               t.merged_into_id, count.label("message_count"))
        .select_from(schema.tickets)
        .outerjoin(schema.teams, schema.teams.c.id == t.team_id)
        .outerjoin(schema.contacts, schema.contacts.c.id == t.requester_id)
        .where(t.id == ticket_id)
    ).one_or_none()
    if row is None:
        return None
    tags = conn.execute(select(schema.ticket_tags.c.tag)
                        .where(schema.ticket_tags.c.ticket_id == ticket_id)
                        .order_by(schema.ticket_tags.c.tag)).scalars().all()
    values = row._asdict()
    return TicketHead(**values, tags=tuple(tags))


_MESSAGE_COLUMNS = ("id", "kind", "direction", "from_address", "from_name", "to_addresses",
                    "cc_addresses", "sent_at", "received_at", "subject", "message_id", "text",
                    "new_text", "defects")
_ATTACHMENT_COLUMNS = ("id", "filename", "content_type", "size", "sha256", "inline")


def _messages(conn: Connection, ticket_id: int) -> list[MessageRow]:
    m, a = schema.messages, schema.attachments
    rows = conn.execute(select(*(m.c[name] for name in _MESSAGE_COLUMNS))
                        .where(m.c.ticket_id == ticket_id).order_by(m.c.id)).all()
    attached: dict[int, list[AttachmentRow]] = {}
    if rows:
        for r in conn.execute(
            select(a.c.message_id, *(a.c[name] for name in _ATTACHMENT_COLUMNS))
            .where(a.c.message_id.in_([row.id for row in rows])).order_by(a.c.id)
        ):
            attached.setdefault(r.message_id, []).append(
                AttachmentRow(**{name: getattr(r, name) for name in _ATTACHMENT_COLUMNS}))
    return [MessageRow(**row._asdict(), attachments=tuple(attached.get(row.id, ())))
            for row in rows]


def events(conn: Connection | Session, ticket_id: int) -> list[EventRow]:
    """The audit trail of a ticket, oldest first."""
    e = schema.events.c
    return [EventRow(r.id, r.created_at, r.actor, r.kind, r.detail)
            for r in schema.connection_of(conn).execute(
                select(e.id, e.created_at, e.actor, e.kind, e.detail)
                .where(e.ticket_id == ticket_id).order_by(e.id))]


def deliveries(conn: Connection | Session, ticket_id: int) -> list[Delivery]:
    """The outgoing mail of a ticket, oldest first, each recipient with its own state
    (rows queued before per-recipient state existed: the row's state for each)."""
    c = schema.connection_of(conn)
    o, m, r = schema.outbox, schema.messages, schema.outbox_recipients
    rows = c.execute(
        select(o.c.id, o.c.message_id, o.c.kind, m.c.subject, o.c.state, o.c.attempts,
               o.c.last_error, o.c.next_attempt_at, o.c.created_at, o.c.sent_at,
               o.c.envelope_to)
        .outerjoin(m, (m.c.message_id == o.c.message_id)
                   & (m.c.direction == Direction.OUTGOING.value)
                   & (m.c.ticket_id == o.c.ticket_id))
        .where(o.c.ticket_id == ticket_id)
        .order_by(o.c.id)
    ).all()
    states: dict[int, list[RecipientState]] = {}
    if rows:
        for rec in c.execute(select(r.c.outbox_id, r.c.address, r.c.state)
                             .where(r.c.outbox_id.in_([row.id for row in rows]))
                             .order_by(r.c.id)):
            states.setdefault(rec.outbox_id, []).append(RecipientState(rec.address, rec.state))
    return [
        Delivery(
            outbox_id=row.id, message_id=row.message_id, kind=row.kind,
            subject=row.subject or "", state=row.state, attempts=row.attempts,
            last_error=row.last_error, next_attempt_at=row.next_attempt_at,
            created_at=row.created_at, sent_at=row.sent_at,
            recipients=tuple(states.get(row.id)
                             or (RecipientState(a, row.state) for a in row.envelope_to)),
        )
        for row in rows
    ]


def relayed_copies(conn: Connection | Session, ticket_id: int) -> dict[int, str]:
    """Agents' mails relayed to the requester: the incoming row id -> the relay's Message-ID."""
    e = schema.events.c
    rows = schema.connection_of(conn).execute(
        select(e.message_row_id, e.detail)
        .where(e.ticket_id == ticket_id, e.kind == "reply.relayed",
               e.message_row_id.is_not(None))
    )
    return {row_id: str(detail["message_id"]) for row_id, detail in rows
            if row_id is not None and isinstance(detail, dict) and detail.get("message_id")}
