"""Notifications to staff and requesters that no rule asked for.

* `customer_replied`: a customer's reply on a ticket tells the assignee, or
  the team when unassigned. The notification carries the new text and the
  ticket tag, and its Reply-To is the support address, so the agent's answer
  goes back into the ticket and is relayed. Agents who opted out (`helpdesk
  agents notify EMAIL off`) get none.
* `timer_notice` and `escalation`: the mail of time-driven rules
  (`helpdesk.desk.timers`), threaded with the conversation the recipient already
  has: the notice answers the requester's latest mail, the escalation our
  forward of the ticket to the team.

All of it is automatic mail (RFC 3834): `Auto-Submitted: auto-generated`
(caused by a change or by time, not an answer to the recipient's mail), the
bounce envelope sender of `[outbox]`, and `Precedence: bulk` unless turned off.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from helpdesk.delivery import anchors, outbox
from helpdesk.desk.actions import ActionContext
from helpdesk.desk.notices import AUTO_GENERATED
from helpdesk.store import schema
from helpdesk.store.direct import Direct
from helpdesk.store.events import INSERT_EVENT
from helpdesk.store.models import Ticket
from helpdesk.templates import RenderedTemplate
from helpdesk.thread import format_tag, with_tag
from helpdesk.values import Address, MessageKind, OutgoingMail, ParsedMessage


def customer_replied(
    session: Session,
    *,
    ticket_id: int,
    message_row_id: int,
    msg: ParsedMessage,
    ctx: ActionContext,
    now: datetime,
) -> str | None:
    """Queue the notification for a customer's reply; returns to whom, or None."""
    # Core: ingest asks for every reply, after the rules may have changed the team.
    conn = session.connection()
    ticket: Any = _NOTIFY_TARGET.first(conn, {"ticket_id": ticket_id})
    assert ticket is not None  # ingest filed the reply on it in this transaction
    to = _recipient(ticket)
    if to is None:
        return None
    assert msg.from_ is not None
    tag = format_tag(ticket_id, ctx.tag_prefix)
    who = str(msg.from_)
    text = (msg.new_text or msg.text).strip() or "(no text)"
    body = (
        f"{who} wrote on ticket {tag} \"{ticket.subject}\":\n\n{text}\n\n"
        f"-- \nReply to this mail to answer {msg.from_.name or msg.from_.address} "
        "(keep the tag in the subject).\n"
        "Start with #note for an internal note, or use #status, #assign, #team, "
        "#priority, #tag on the first lines.\n"
    )
    attachments = tuple(a for a in msg.attachments if not a.inline)
    # Like a forward: the customer's thread in References and Thread-Index, no
    # In-Reply-To (the agent never received the customer's mail).
    ref = anchors.TicketRef(ticket_id, ticket.created_at, ticket.requester)
    parent = anchors.after_message(session, ref, msg, ctx.signer.loop_id)
    mail = OutgoingMail(
        kind=MessageKind.SYSTEM,
        ticket_id=ticket_id,
        from_=Address(ctx.support_address, f"{msg.from_.name or msg.from_.address} via "
                      f"{ctx.helpdesk_name}"),
        to=(to,),
        subject=f"{tag} New reply: {ticket.subject}",
        body=body,
        reply_to=ctx.support,
        references=parent.references,
        thread_topic=ticket.subject,
        attachments=attachments,
        parent_thread_index=parent.parent_thread_index,
        **ctx.automatic(AUTO_GENERATED, to_staff=True),
    )
    outbox.enqueue(session, mail, ctx.signer, now=now, correlation_id=msg.message_id)
    INSERT_EVENT.execute(conn, {"ticket_id": ticket_id, "message_row_id": message_row_id,
                                 "actor": "system", "kind": "notification.queued",
                                 "detail": {"to": to.address}, "created_at": now})
    return to.address


_tickets, _agents, _teams = schema.tickets, schema.agents, schema.teams
_contacts = schema.contacts
_NOTIFY_TARGET = Direct(
    select(
        _tickets.c.subject, _tickets.c.created_at, _contacts.c.address.label("requester"),
        _tickets.c.assignee_id, _agents.c.name.label("agent_name"), _agents.c.active,
        _agents.c.notify,
        select(schema.agent_addresses.c.address)
        .where(schema.agent_addresses.c.agent_id == _tickets.c.assignee_id)
        .order_by(schema.agent_addresses.c.id).limit(1).scalar_subquery().label("agent_address"),
        _teams.c.name.label("team_name"), _teams.c.address.label("team_address"),
    )
    .outerjoin(_contacts, _contacts.c.id == _tickets.c.requester_id)
    .outerjoin(_agents, _agents.c.id == _tickets.c.assignee_id)
    .outerjoin(_teams, _teams.c.id == _tickets.c.team_id)
    .where(_tickets.c.id == bindparam("ticket_id"))
)


def _recipient(ticket: Any) -> Address | None:
    """Who hears of a reply on the ticket (a row of `_NOTIFY_TARGET`), or None."""
    if ticket.assignee_id is not None:
        if ticket.active and ticket.notify and ticket.agent_address:
            return Address(ticket.agent_address, ticket.agent_name)
        return None  # the assignee opted out; the team is not paged instead
    if ticket.team_address:
        return Address(ticket.team_address, ticket.team_name)
    return None


def timer_notice(
    session: Session, ticket: Ticket, to: Address, rendered: RenderedTemplate,
    ctx: ActionContext, now: datetime,
) -> outbox.Queued:
    """Queue a timer's notice to the requester, in reply to their latest mail."""
    parent = anchors.after_row(session, ticket, anchors.requester_anchor(session, ticket),
                               ctx.signer.loop_id)
    mail = _timer_mail(MessageKind.SYSTEM, ticket, to, rendered, parent, ctx, to_staff=False)
    return outbox.enqueue(session, mail, ctx.signer, now=now)


def escalation(
    session: Session, ticket: Ticket, to: Address, rendered: RenderedTemplate,
    ctx: ActionContext, now: datetime,
) -> outbox.Queued:
    """Queue an escalation to a team lead, in reply to our forward of the ticket to the team.

    Without such a forward it continues the requester's latest mail, so that
    the References still name the ticket's first mail.
    """
    team_address = ticket.team.address if ticket.team is not None else None
    anchor = anchors.forward_anchor(session, ticket, team_address or to.address)
    if anchor is None:
        anchor = anchors.requester_anchor(session, ticket)
    parent = anchors.after_row(session, ticket, anchor, ctx.signer.loop_id)
    mail = _timer_mail(MessageKind.FORWARD, ticket, to, rendered, parent, ctx, to_staff=True)
    return outbox.enqueue(session, mail, ctx.signer, now=now)


def _timer_mail(
    kind: MessageKind, ticket: Ticket, to: Address, rendered: RenderedTemplate,
    parent: anchors.Continuation, ctx: ActionContext, *, to_staff: bool,
) -> OutgoingMail:
    """Mail caused by time (RFC 3834 auto-generated), continuing the conversation of `parent`."""
    return OutgoingMail(
        kind=kind,
        ticket_id=ticket.id,
        from_=ctx.support,
        to=(to,),
        subject=with_tag(rendered.subject, ticket.id, ctx.tag_prefix),
        body=rendered.body,
        reply_to=ctx.support,
        in_reply_to=parent.in_reply_to,
        references=parent.references,
        thread_topic=ticket.subject,
        parent_thread_index=parent.parent_thread_index,
        **ctx.automatic(AUTO_GENERATED, to_staff=to_staff),
    )
