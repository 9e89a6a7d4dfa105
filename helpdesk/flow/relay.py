"""Relay: an agent's reply goes to the requester and the people copied, from the support address.

Used for replies that arrive by e-mail (ingest) and for `helpdesk tickets
reply`. The relayed mail continues the requester's own thread: In-Reply-To is
the requester's latest mail on the ticket, References its References (or
In-Reply-To) plus that mail (RFC 5322 section 3.6.4), Thread-Index a child
of its Thread-Index (`helpdesk.delivery.anchors`), so Gmail and Outlook show it in
the same conversation; the ticket tag is in the subject. People copied keep
their display names. Agents and our own addresses never receive the relay.

A relayed reply is a person's mail, not an automatic one: no Auto-Submitted,
and the envelope sender is the support address, so that an answer or a
bounce comes back to the desk.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32, default
from email.utils import getaddresses

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.delivery import anchors, outbox
from helpdesk.desk.actions import ActionContext
from helpdesk.store import queries
from helpdesk.store.models import (
    AgentAddress,
    Contact,
    Event,
    Message,
    Participant,
    Ticket,
)
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
) -> outbox.Queued | None:
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
    parent = anchors.after_row(session, ticket, anchors.requester_anchor(session, ticket),
                               ctx.signer.loop_id)
    rendered = _render(session, ticket, agent, text, ctx)
    mail = OutgoingMail(
        kind=MessageKind.AGENT_REPLY,
        ticket_id=ticket_id,
        from_=Address(ctx.support_address, _clean_name(agent.name) or ctx.helpdesk_name),
        to=tuple(recipients[:1]),
        cc=tuple(recipients[1:]),
        subject=with_tag(rendered.subject, ticket_id, ctx.tag_prefix),
        body=rendered.body,
        reply_to=ctx.support,
        in_reply_to=parent.in_reply_to,
        references=parent.references,
        thread_topic=ticket.subject,
        parent_thread_index=parent.parent_thread_index,
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
    """The requester first, then everyone copied, with their names; never agents or us."""
    agents = set(session.scalars(select(AgentAddress.address)))
    people = session.execute(
        select(Participant.address, Participant.role).where(Participant.ticket_id == ticket.id)
    ).all()
    requester = ticket.requester.address if ticket.requester else None
    ordered = ([requester] if requester else []) + sorted(
        address for address, role in people if address != requester and role != "agent"
    )
    wanted = [a for a in dict.fromkeys(ordered) if a not in agents and not ctx.is_own_address(a)]
    names = _names(session, ticket, wanted)
    return [Address(a, names.get(a, "")) for a in wanted]


# A display name longer than this is cut (RFC 5322 has no limit; readers do).
_MAX_NAME = 200
# Address headers longer than this are not read for names (hostile mail).
_MAX_ADDRESS_HEADER = 8192
# How many of the ticket's mails are read for the names of people copied.
_NAME_SEARCH = 20


def _names(session: Session, ticket: Ticket, addresses: Collection[str]) -> dict[str, str]:
    """Display names: the contacts' first, then as the ticket's mails wrote them (newest first)."""
    names = {
        address: name
        for address, name in session.execute(
            select(Contact.address, Contact.name).where(Contact.address.in_(list(addresses)))
        )
        if name
    }
    missing = set(addresses) - set(names)
    if missing:
        rows = session.scalars(
            select(Message.raw)
            .where(Message.ticket_id == ticket.id, Message.direction == Direction.INCOMING.value)
            .order_by(Message.id.desc())
            .limit(_NAME_SEARCH)
        )
        for raw in rows:
            for address, name in _header_names(raw or b""):
                if address in missing and name:
                    names[address] = name
                    missing.discard(address)
            if not missing:
                break
    return {address: _clean_name(name) for address, name in names.items()}


def _header_names(raw: bytes) -> list[tuple[str, str]]:
    """(address, decoded display name) of From, To and Cc of a raw mail."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(anchors.header_block(raw))
    values = [str(v) for name in ("From", "To", "Cc") for v in headers.get_all(name, [])]
    found = []
    for value in values:
        if len(value) > _MAX_ADDRESS_HEADER:
            continue
        for name, address in getaddresses([value]):
            if name and address:
                found.append((address.strip().lower(), _decoded(name)))
    return found


def _decoded(name: str) -> str:
    """An RFC 2047-encoded display name decoded; as written when it cannot be."""
    try:
        return str(default.header_factory("X-Name", name))
    except Exception:  # noqa: BLE001 - other people's broken headers must not stop a relay
        return name


def _clean_name(name: str) -> str:
    """One line of text: no controls (compose refuses them), no runs of white space."""
    spaced = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
                     for ch in name[: _MAX_NAME * 2])
    return " ".join(spaced.split())[:_MAX_NAME].strip("\"' ")


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
