"""Notifications: a customer's reply on a ticket tells the assignee, or the team when unassigned.

The notification carries the new text and the ticket tag, and its Reply-To is
the support address, so the agent's answer goes back into the ticket and is
relayed. Agents who opted out (`helpdesk agents notify EMAIL off`) get none.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from helpdesk import outbox
from helpdesk.actions import ActionContext
from helpdesk.store.models import Event, Ticket
from helpdesk.thread import format_tag, reply_references
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
    ticket = session.get_one(Ticket, ticket_id)
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
    mail = OutgoingMail(
        kind=MessageKind.SYSTEM,
        ticket_id=ticket_id,
        from_=Address(ctx.support_address, f"{msg.from_.name or msg.from_.address} via "
                      f"{ctx.helpdesk_name}"),
        to=(to,),
        subject=f"{tag} New reply: {ticket.subject}",
        body=body,
        reply_to=ctx.support,
        references=reply_references(msg),
        automated=True,
        thread_topic=ticket.subject,
        attachments=attachments,
    )
    outbox.enqueue(session, mail, ctx.signer, now=now, correlation_id=msg.message_id)
    session.add(Event(ticket_id=ticket_id, message_row_id=message_row_id, actor="system",
                      kind="notification.queued", detail={"to": to.address}, created_at=now))
    return to.address


def _recipient(ticket: Ticket) -> Address | None:
    agent = ticket.assignee
    if agent is not None:
        if agent.active and agent.notify and agent.primary_address:
            return Address(agent.primary_address, agent.name)
        return None  # the assignee opted out; the team is not paged instead
    if ticket.team is not None and ticket.team.address:
        return Address(ticket.team.address, ticket.team.name)
    return None
