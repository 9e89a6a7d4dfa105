"""Named queries the services need; each takes a session and returns rows or values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
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
)
from helpdesk.values import Origin, Priority, TicketStatus, TicketView


def message_by_origin(session: Session, origin: Origin) -> Message | None:
    """The stored message that came from exactly this server copy (IMAP mailbox+UIDVALIDITY+UID)."""
    if origin.mailbox is None or origin.uid is None or origin.uidvalidity is None:
        return None
    return session.scalars(
        select(Message).where(
            Message.origin_mailbox == origin.mailbox,
            Message.origin_uidvalidity == origin.uidvalidity,
            Message.origin_uid == origin.uid,
        ).limit(1)
    ).first()


def message_by_content(session: Session, message_id: str, content_hash: str) -> Message | None:
    """The stored message with this Message-ID and content, if any."""
    return session.scalars(
        select(Message)
        .where(Message.message_id == message_id, Message.content_hash == content_hash)
        .limit(1)
    ).first()


def tickets_by_message_ids(session: Session, message_ids: Sequence[str]) -> dict[str, int]:
    """Map each known Message-ID (incoming or outgoing) to the ticket it is on."""
    if not message_ids:
        return {}
    rows = session.execute(
        select(Message.message_id, Message.ticket_id)
        .where(Message.message_id.in_(list(message_ids)))
        .order_by(Message.id)
    )
    found: dict[str, int] = {}
    for mid, ticket_id in rows:
        found.setdefault(mid, ticket_id)  # the first stored copy wins
    return found


def ticket_view(session: Session, ticket_id: int) -> TicketView | None:
    """A frozen snapshot of a ticket for pure logic, or None."""
    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        return None
    participants = session.scalars(
        select(Participant.address).where(Participant.ticket_id == ticket_id)
    ).all()
    return TicketView(
        id=ticket.id,
        status=TicketStatus(ticket.status),
        subject=ticket.subject,
        requester=ticket.requester.address if ticket.requester else None,
        participants=frozenset(participants),
        merged_into=ticket.merged_into_id,
        team=ticket.team.name if ticket.team else None,
        assignee=ticket.assignee.primary_address if ticket.assignee else None,
        priority=Priority(ticket.priority),
        tags=frozenset(t.tag for t in ticket.tags),
    )


def agent_by_address(session: Session, address: str) -> Agent | None:
    """The agent who writes from `address`, active or not."""
    return session.scalars(
        select(Agent).join(AgentAddress).where(AgentAddress.address == address.lower())
    ).first()


def team_by_name(session: Session, name: str) -> Team | None:
    return session.scalars(select(Team).where(Team.name == name)).first()


def get_or_create_contact(session: Session, address: str, name: str = "") -> Contact:
    """The contact for `address`, created if new; safe against a concurrent insert."""
    contact = session.scalars(select(Contact).where(Contact.address == address)).first()
    if contact is not None:
        if name and not contact.name:
            contact.name = name
        return contact
    try:
        with session.begin_nested():
            contact = Contact(address=address, name=name)
            session.add(contact)
    except IntegrityError:
        # Another daemon inserted the same address between our select and insert.
        contact = session.scalars(select(Contact).where(Contact.address == address)).one()
    return contact


def add_participant(session: Session, ticket_id: int, address: str, role: str) -> None:
    """Record `address` as a participant of the ticket, once."""
    if session.get(Participant, (ticket_id, address)) is None:
        session.add(Participant(ticket_id=ticket_id, address=address, role=role))


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
