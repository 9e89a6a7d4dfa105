"""Relay: an agent's reply goes to the requester and the people copied, from the support address.

Used for replies that arrive by e-mail (ingest) and for `helpdesk tickets
reply`. The relayed mail continues the requester's own thread: In-Reply-To is
the requester's latest mail on the ticket, References its references plus
that mail, so Gmail and Outlook show it in the same conversation; the ticket
tag is in the subject. Agents and our own addresses never receive the relay.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk import outbox
from helpdesk.actions import ActionContext
from helpdesk.store import queries
from helpdesk.store.models import AgentAddress, Event, Message, OutboxItem, Participant, Ticket
from helpdesk.templates import RenderedTemplate, TemplateRenderError, build_context, fallback
from helpdesk.thread import format_tag, with_tag
from helpdesk.values import (
    Address,
    Direction,
    MessageKind,
    OutgoingMail,
    ParsedMessage,
    TicketStatus,
)


def agent_reply(
    session: Session,
    *,
    ticket_id: int,
    agent: Address,
    text: str,
    ctx: ActionContext,
    now: datetime,
    correlation_id: str | None = None,
    message_row_id: int | None = None,
) -> OutboxItem | None:
    """Queue the relay of `text` to the ticket's customers; None when there is nobody to tell."""
    ticket = session.get_one(Ticket, ticket_id)
    recipients = _customers(session, ticket, ctx)
    record_response(session, ticket, agent.address, now, message_row_id)
    if not recipients:
        session.add(Event(ticket_id=ticket_id, message_row_id=message_row_id,
                          actor=agent.address, kind="relay.skipped",
                          detail={"reason": "no requester or copied person to relay to"},
                          created_at=now))
        return None
    anchor = _requester_anchor(session, ticket)
    rendered = _render(session, ticket, agent, text, ctx)
    mail = OutgoingMail(
        kind=MessageKind.AGENT_REPLY,
        ticket_id=ticket_id,
        from_=Address(ctx.support_address, agent.name or ctx.helpdesk_name),
        to=tuple(recipients[:1]),
        cc=tuple(recipients[1:]),
        subject=with_tag(rendered.subject, ticket_id, ctx.tag_prefix),
        body=rendered.body,
        reply_to=ctx.support,
        in_reply_to=anchor.message_id if anchor else None,
        references=_references(anchor),
        thread_topic=ticket.subject,
    )
    item = outbox.enqueue(session, mail, ctx.signer, now=now, correlation_id=correlation_id)
    session.add(Event(ticket_id=ticket_id, message_row_id=message_row_id, actor=agent.address,
                      kind="reply.relayed",
                      detail={"to": [r.address for r in recipients],
                              "message_id": item.message_id},
                      created_at=now))
    return item


def record_response(
    session: Session, ticket: Ticket, agent: str, now: datetime, message_row_id: int | None
) -> None:
    """An agent answered: first-response time once, and `new` becomes `open`."""
    if ticket.first_response_at is None:
        ticket.first_response_at = now
    if ticket.status == TicketStatus.NEW:
        ticket.status = TicketStatus.OPEN
        session.add(Event(ticket_id=ticket.id, message_row_id=message_row_id, actor=agent,
                          kind="status.changed",
                          detail={"from": "new", "to": "open", "reason": "agent replied"},
                          created_at=now))
    ticket.updated_at = now


def _customers(session: Session, ticket: Ticket, ctx: ActionContext) -> list[Address]:
    """The requester first, then everyone copied; never agents or our own addresses."""
    agents = set(session.scalars(select(AgentAddress.address)))
    people = session.execute(
        select(Participant.address, Participant.role).where(Participant.ticket_id == ticket.id)
    ).all()
    requester = ticket.requester.address if ticket.requester else None
    ordered = ([requester] if requester else []) + sorted(
        address for address, role in people if address != requester and role != "agent"
    )
    names = {ticket.requester.address: ticket.requester.name} if ticket.requester else {}
    return [
        Address(a, names.get(a, ""))
        for a in dict.fromkeys(ordered)
        if a not in agents and not ctx.is_own_address(a)
    ]


def _requester_anchor(session: Session, ticket: Ticket) -> Message | None:
    """The requester's latest mail on the ticket (else the latest incoming one)."""
    incoming = (
        select(Message)
        .where(Message.ticket_id == ticket.id, Message.direction == Direction.INCOMING.value,
               Message.message_id_synthetic.is_(False))
        .order_by(Message.id.desc())
        .limit(1)
    )
    if ticket.requester is not None:
        own = session.scalars(
            incoming.where(Message.from_address == ticket.requester.address)
        ).first()
        if own is not None:
            return own
    return session.scalars(incoming).first()


def _references(anchor: Message | None) -> tuple[str, ...]:
    if anchor is None:
        return ()
    return (*anchor.references.split(), anchor.message_id)


def _render(
    session: Session, ticket: Ticket, agent: Address, text: str, ctx: ActionContext
) -> RenderedTemplate:
    view = queries.view_of(ticket)
    message = ParsedMessage(message_id="", message_id_synthetic=True, subject=ticket.subject,
                            from_=agent, text=text, new_text=text)
    context = build_context(
        helpdesk_name=ctx.helpdesk_name,
        support_address=ctx.support_address,
        ticket=view,
        reference=format_tag(ticket.id, ctx.tag_prefix),
        created_at=ticket.created_at,
        message=message,
        agent=agent,
    )
    try:
        return ctx.templates.render("agent-reply", context)
    except TemplateRenderError as exc:
        session.add(Event(ticket_id=ticket.id, actor="system", kind="template.failed",
                          detail={"template": "agent-reply", "error": str(exc)}))
        return fallback("agent-reply", context)
