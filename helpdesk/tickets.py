"""Ticket use cases shared by the CLI and (later) e-mail commands: show, assign, status.

Each function works inside the caller's transaction and records an event for
every change, naming the actor.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from helpdesk.errors import InvalidInput, NotFound
from helpdesk.store import queries
from helpdesk.store.models import Event, Message, Ticket, utcnow
from helpdesk.values import TicketStatus


def get(session: Session, ticket_id: int) -> Ticket:
    """The ticket with its messages and attachments loaded, or NotFound."""
    ticket = session.scalars(
        select(Ticket)
        .where(Ticket.id == ticket_id)
        .options(selectinload(Ticket.messages).selectinload(Message.attachments))
    ).first()
    if ticket is None:
        raise NotFound("ticket", ticket_id)
    return ticket


def events(session: Session, ticket_id: int) -> list[Event]:
    """The audit trail of a ticket, oldest first."""
    return list(
        session.scalars(
            select(Event).where(Event.ticket_id == ticket_id).order_by(Event.id)
        )
    )


def assign(
    session: Session,
    ticket_id: int,
    *,
    agent: str | None = None,
    team: str | None = None,
    actor: str,
    now: datetime | None = None,
) -> Ticket:
    """Assign the ticket to an agent (by address) and/or a team (by name)."""
    if agent is None and team is None:
        raise InvalidInput("give an agent address, a team, or both")
    ticket = get(session, ticket_id)
    when = now or utcnow()
    if team is not None:
        team_row = queries.team_by_name(session, team)
        if team_row is None:
            raise NotFound("team", team)
        if ticket.team_id != team_row.id:
            before = ticket.team.name if ticket.team else None
            ticket.team = team_row
            _log(session, ticket, actor, "team.changed", {"from": before, "to": team}, when)
    if agent is not None:
        agent_row = queries.agent_by_address(session, agent)
        if agent_row is None:
            raise NotFound("agent", agent)
        if not agent_row.active:
            raise InvalidInput(f"agent {agent} is disabled")
        if ticket.assignee_id != agent_row.id:
            before = ticket.assignee.primary_address if ticket.assignee else None
            ticket.assignee = agent_row
            _log(
                session,
                ticket,
                actor,
                "assignee.changed",
                {"from": before, "to": agent_row.primary_address},
                when,
            )
    ticket.updated_at = when
    session.flush()
    return ticket


def set_status(
    session: Session, ticket_id: int, status: str, *, actor: str, now: datetime | None = None
) -> Ticket:
    """Move the ticket to `status`, keeping resolved_at in step."""
    try:
        new = TicketStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in TicketStatus)
        raise InvalidInput(f"unknown status {status!r}; use one of {allowed}") from None
    ticket = get(session, ticket_id)
    when = now or utcnow()
    if ticket.status == new:
        return ticket
    before = ticket.status
    ticket.status = new
    if new in (TicketStatus.RESOLVED, TicketStatus.CLOSED):
        ticket.resolved_at = ticket.resolved_at or when
    else:
        ticket.resolved_at = None
    ticket.updated_at = when
    _log(session, ticket, actor, "status.changed", {"from": before, "to": new.value}, when)
    session.flush()
    return ticket


def _log(
    session: Session,
    ticket: Ticket,
    actor: str,
    kind: str,
    detail: dict[str, object],
    when: datetime,
) -> None:
    session.add(Event(ticket_id=ticket.id, actor=actor, kind=kind, detail=detail, created_at=when))
