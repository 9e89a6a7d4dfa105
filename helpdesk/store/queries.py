"""Named queries the services need; each takes a session and returns rows or values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from helpdesk.store.models import (
    Agent,
    AgentAddress,
    Contact,
    Message,
    Participant,
    QuarantineItem,
    Team,
    Ticket,
    TicketTag,
    table,
)
from helpdesk.values import Direction, Origin, Priority, TicketStatus, TicketView


@dataclass(frozen=True, slots=True)
class StoredRef:
    """Where a stored message is: enough to report a duplicate."""

    id: int
    ticket_id: int
    message_id: str


_messages = table(Message)
_REF_COLUMNS = (_messages.c.id, _messages.c.ticket_id, _messages.c.message_id)
_BY_ORIGIN = (
    select(*_REF_COLUMNS)
    .where(
        _messages.c.origin_mailbox == bindparam("mailbox"),
        _messages.c.origin_uidvalidity == bindparam("uidvalidity"),
        _messages.c.origin_uid == bindparam("uid"),
    )
    .limit(1)
)
_BY_CONTENT = (
    select(*_REF_COLUMNS)
    .where(
        _messages.c.message_id == bindparam("message_id"),
        # A copy of a mail we sent (a Bcc, a list, an alias pointing back at us)
        # is ours whatever a relay did to its bytes: the Message-ID is enough.
        or_(_messages.c.content_hash == bindparam("content_hash"),
            _messages.c.direction == Direction.OUTGOING.value),
    )
    .limit(1)
)


def message_by_origin(session: Session, origin: Origin) -> StoredRef | None:
    """The stored message that came from exactly this server copy (IMAP mailbox+UIDVALIDITY+UID)."""
    if origin.mailbox is None or origin.uid is None or origin.uidvalidity is None:
        return None
    row = session.connection().execute(
        _BY_ORIGIN,
        {"mailbox": origin.mailbox, "uidvalidity": origin.uidvalidity, "uid": origin.uid},
    ).first()
    return StoredRef(*row) if row else None


def message_by_content(session: Session, message_id: str, content_hash: str) -> StoredRef | None:
    """The stored message with this Message-ID and content, or our own sent mail with this id."""
    row = session.connection().execute(
        _BY_CONTENT, {"message_id": message_id, "content_hash": content_hash}
    ).first()
    return StoredRef(*row) if row else None


_TICKETS_BY_IDS = (
    select(_messages.c.id, _messages.c.message_id, _messages.c.ticket_id)
    .where(_messages.c.message_id.in_(bindparam("ids", expanding=True)))
    .order_by(_messages.c.id)
)


# Bound parameters per lookup: far below SQLite's 32,766 and PostgreSQL's 65,535,
# whatever a mail's References header holds (issue 12 §9).
_IDS_PER_QUERY = 500


def tickets_by_message_ids(session: Session, message_ids: Sequence[str]) -> dict[str, int]:
    """Map each known Message-ID (incoming or outgoing) to the ticket it is on."""
    found: dict[str, tuple[int, int]] = {}  # id -> (row id, ticket)
    conn = session.connection()
    unique = list(dict.fromkeys(message_ids))
    for start in range(0, len(unique), _IDS_PER_QUERY):
        chunk = unique[start:start + _IDS_PER_QUERY]
        for row_id, mid, ticket_id in conn.execute(_TICKETS_BY_IDS, {"ids": chunk}):
            if mid not in found or row_id < found[mid][0]:
                found[mid] = (row_id, ticket_id)  # the first stored copy wins
    return {mid: ticket_id for mid, (_row, ticket_id) in found.items()}


def ticket_view(session: Session, ticket_id: int) -> TicketView | None:
    """A frozen snapshot of a ticket for pure logic, or None."""
    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        return None
    participants = session.scalars(
        select(Participant.address).where(Participant.ticket_id == ticket_id)
    ).all()
    return view_of(ticket, frozenset(participants))


def view_of(ticket: Ticket, participants: frozenset[str] = frozenset()) -> TicketView:
    """A snapshot of an already loaded ticket (templates need no participants)."""
    return TicketView(
        id=ticket.id,
        status=TicketStatus(ticket.status),
        subject=ticket.subject,
        requester=ticket.requester.address if ticket.requester else None,
        participants=participants,
        merged_into=ticket.merged_into_id,
        team=ticket.team.name if ticket.team else None,
        assignee=ticket.assignee.primary_address if ticket.assignee else None,
        priority=Priority(ticket.priority),
        tags=frozenset(t.tag for t in ticket.tags),
    )


_tickets = table(Ticket)
_THREAD_VIEW = (
    select(_tickets.c.id, _tickets.c.status, _tickets.c.subject, _tickets.c.merged_into_id,
           table(Contact).c.address)
    .outerjoin(table(Contact), table(Contact).c.id == _tickets.c.requester_id)
    .where(_tickets.c.id == bindparam("ticket_id"))
)
_PARTICIPANTS = select(table(Participant).c.address).where(
    table(Participant).c.ticket_id == bindparam("ticket_id")
)


def thread_view(session: Session, ticket_id: int) -> TicketView | None:
    """The part of a ticket threading needs (status, requester, participants), in two queries."""
    conn = session.connection()
    row = conn.execute(_THREAD_VIEW, {"ticket_id": ticket_id}).first()
    if row is None:
        return None
    participants = conn.execute(_PARTICIPANTS, {"ticket_id": ticket_id}).scalars().all()
    return TicketView(
        id=row.id,
        status=TicketStatus(row.status),
        subject=row.subject,
        requester=row.address,
        participants=frozenset(participants),
        merged_into=row.merged_into_id,
    )


_IS_AGENT = select(table(AgentAddress).c.id).where(
    table(AgentAddress).c.address == bindparam("address")
).limit(1)


def is_agent_address(session: Session, address: str) -> bool:
    """Whether `address` belongs to an agent (active or not)."""
    found = session.connection().execute(_IS_AGENT, {"address": address.lower()}).first()
    return found is not None


def agent_by_address(session: Session, address: str) -> Agent | None:
    """The agent who writes from `address`, active or not."""
    return session.scalars(
        select(Agent).join(AgentAddress).where(AgentAddress.address == address.lower())
    ).first()


def team_by_name(session: Session, name: str) -> Team | None:
    return session.scalars(select(Team).where(Team.name == name)).first()


_contacts = table(Contact)
_CONTACT_ID = select(_contacts.c.id).where(_contacts.c.address == bindparam("address"))
_INSERT_CONTACT = insert(_contacts).returning(_contacts.c.id)


def contact_id(session: Session, address: str, name: str, now: datetime) -> int:
    """The id of the contact for `address`, created if new; safe against a concurrent insert."""
    found = session.connection().execute(_CONTACT_ID, {"address": address}).scalar()
    if found is not None:
        return int(found)
    try:
        with session.begin_nested():
            # The connection must be asked for inside the savepoint: the session
            # emits SAVEPOINT when it hands the connection out.
            new_id = session.connection().execute(
                _INSERT_CONTACT, {"address": address, "name": name, "created_at": now}
            ).scalar_one()
    except IntegrityError:
        # Another daemon inserted the same address between our select and insert.
        return int(session.connection().execute(_CONTACT_ID, {"address": address}).scalar_one())
    return int(new_id)


_ADD_PARTICIPANT = {
    "postgresql": pg_insert(table(Participant)).on_conflict_do_nothing(),
    "sqlite": sqlite_insert(table(Participant)).on_conflict_do_nothing(),
}


def add_participants(session: Session, ticket_id: int, people: Sequence[tuple[str, str]]) -> None:
    """Record (address, role) pairs as participants of the ticket; known ones are kept as they are.

    ON CONFLICT DO NOTHING, so two daemons adding the same person to a ticket
    at once cannot fail each other's transaction.
    """
    roles: dict[str, str] = {}
    for address, role in people:
        roles.setdefault(address, role)  # the first role given wins
    if not roles:
        return
    conn = session.connection()
    rows = [{"ticket_id": ticket_id, "address": a, "role": r} for a, r in roles.items()]
    conn.execute(_ADD_PARTICIPANT[conn.dialect.name], rows)


@dataclass(frozen=True)
class TicketFilter:
    """What `tickets list` narrows by; None means any."""

    status: Sequence[str] | None = None
    team: str | None = None
    assignee: str | None = None
    requester: str | None = None
    limit: int = 50


@dataclass(frozen=True)
class TicketSummary:
    """One row of a ticket listing."""

    id: int
    subject: str
    status: str
    priority: str
    team: str | None
    assignee: str | None
    requester: str | None
    created_at: datetime
    updated_at: datetime
    message_count: int


def list_tickets(session: Session, flt: TicketFilter) -> list[TicketSummary]:
    """Tickets matching `flt`, most recently updated first."""
    counts = (
        select(Message.ticket_id, func.count(Message.id).label("n"))
        .group_by(Message.ticket_id)
        .subquery()
    )
    query = (
        select(Ticket, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.ticket_id == Ticket.id)
        .order_by(Ticket.updated_at.desc(), Ticket.id.desc())
        .limit(flt.limit)
    )
    if flt.status:
        query = query.where(Ticket.status.in_(list(flt.status)))
    if flt.team:
        query = query.join(Team, Team.id == Ticket.team_id).where(Team.name == flt.team)
    if flt.assignee:
        query = query.where(
            Ticket.assignee_id.in_(
                select(AgentAddress.agent_id).where(AgentAddress.address == flt.assignee.lower())
            )
        )
    if flt.requester:
        query = query.join(Contact, Contact.id == Ticket.requester_id).where(
            Contact.address == flt.requester.lower()
        )
    return [
        TicketSummary(
            id=t.id,
            subject=t.subject,
            status=t.status,
            priority=t.priority,
            team=t.team.name if t.team else None,
            assignee=t.assignee.primary_address if t.assignee else None,
            requester=t.requester.address if t.requester else None,
            created_at=t.created_at,
            updated_at=t.updated_at,
            message_count=n,
        )
        for t, n in session.execute(query)
    ]


def held_quarantine_by_hash(session: Session, sha256: str) -> QuarantineItem | None:
    """The quarantined copy of these exact bytes that is still held, if any."""
    return session.scalars(
        select(QuarantineItem)
        .where(QuarantineItem.content_sha256 == sha256, QuarantineItem.state == "held")
        .limit(1)
    ).first()


def ticket_tags(session: Session, ticket_id: int) -> list[str]:
    return list(
        session.scalars(select(TicketTag.tag).where(TicketTag.ticket_id == ticket_id)).all()
    )
