"""Agents working from their mail client: replies, internal notes and #commands.

Called by ingest for a mail from an agent (whose agent powers were trusted)
that threads onto a ticket. Commands at the top of the mail (`#assign`,
`#team`, `#status`, `#priority`, `#tag`) are applied as events and cut from
the text; an unknown command is answered to the agent with a short error mail
and nothing is relayed; a note (`#note` as the first line, or mail to the note
address) is stored and never relayed; otherwise the new text is relayed to
the requester and the people copied (`helpdesk.flow.relay`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from helpdesk.delivery import anchors, outbox
from helpdesk.desk import tickets
from helpdesk.desk.actions import ActionContext
from helpdesk.desk.notices import AUTO_REPLIED, Notice, resolution_notice
from helpdesk.errors import HelpdeskError
from helpdesk.flow import relay
from helpdesk.mail.commands import MAX_COMMANDS, RESOLVED_QUIET, Command, CommandBlock
from helpdesk.store.models import Event, Ticket
from helpdesk.thread import format_tag
from helpdesk.values import (
    Address,
    MessageKind,
    OutgoingMail,
    ParsedMessage,
    Priority,
    TicketStatus,
)


@dataclass
class AgentMailResult:
    """What an agent's mail did."""

    kind: MessageKind
    applied: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    relayed: bool = False


def classify_agent_mail(block: CommandBlock, to_note_address: bool) -> MessageKind:
    """How an agent's mail is stored: a note, or a reply (commands alone are a note)."""
    if block.is_note or to_note_address or not block.ok or not block.remaining.strip():
        return MessageKind.NOTE
    return MessageKind.AGENT_REPLY


def handle(
    session: Session,
    *,
    ticket_id: int,
    message_row_id: int,
    msg: ParsedMessage,
    block: CommandBlock,
    kind: MessageKind,
    ctx: ActionContext | None,
    now: datetime,
) -> AgentMailResult:
    """Apply the commands, then relay the reply or keep the note; see the module docstring.

    A mail that resolves the ticket (`#status resolved`) has the requester
    told after its reply was relayed, so the answer comes before the notice;
    `#status resolved quiet` resolves without a notice.
    """
    assert msg.from_ is not None
    ticket = session.get_one(Ticket, ticket_id)
    was = ticket.status
    result = _handle(session, ticket_id=ticket_id, message_row_id=message_row_id, msg=msg,
                     block=block, kind=kind, ctx=ctx, now=now)
    if was != TicketStatus.RESOLVED and ticket.status == TicketStatus.RESOLVED:
        quiet = any(c.name == "status" and c.argument == RESOLVED_QUIET for c in block.commands)
        notice = Notice(ctx, quiet="#status resolved quiet" if quiet else None,
                        correlation_id=msg.message_id)
        resolution_notice(session, ticket, notice, actor=msg.from_.address, now=now,
                          message_row_id=message_row_id)
    return result


def _handle(
    session: Session,
    *,
    ticket_id: int,
    message_row_id: int,
    msg: ParsedMessage,
    block: CommandBlock,
    kind: MessageKind,
    ctx: ActionContext | None,
    now: datetime,
) -> AgentMailResult:
    assert msg.from_ is not None
    agent = msg.from_
    result = AgentMailResult(kind=kind)
    tags: list[Command] = []
    for command in block.commands:
        if command.name.lower() == "tag":
            tags.append(command)  # applied together below: one look at the ticket's tags
            continue
        try:
            result.applied.append(_apply(session, ticket_id, command, agent.address, now))
        except HelpdeskError as exc:
            result.rejected.append(f"{command.line}: {exc}")
    _apply_tags(session, ticket_id, tags, agent.address, now, result)
    result.rejected.extend(f"{line}: {reason}" for line, reason in block.unknown)
    if block.skipped:
        result.rejected.append(
            f"{block.skipped} more command lines: at most {MAX_COMMANDS} commands are "
            "applied from one mail"
        )
    if result.rejected:
        session.add(Event(ticket_id=ticket_id, message_row_id=message_row_id,
                          actor=agent.address, kind="commands.rejected",
                          detail={"rejected": result.rejected}, created_at=now))
        if ctx is not None:
            _error_mail(session, ticket_id, msg, result.rejected, ctx, now)
        return result
    if kind is MessageKind.NOTE:
        session.add(Event(ticket_id=ticket_id, message_row_id=message_row_id,
                          actor=agent.address, kind="note.added", detail={}, created_at=now))
        return result
    if ctx is None:
        session.add(Event(ticket_id=ticket_id, message_row_id=message_row_id,
                          actor=agent.address, kind="relay.skipped",
                          detail={"reason": "no outgoing mail configured"}, created_at=now))
        return result
    item = relay.agent_reply(
        session, ticket_id=ticket_id, agent=agent, text=block.remaining, ctx=ctx, now=now,
        correlation_id=msg.message_id, message_row_id=message_row_id,
    )
    result.relayed = item is not None
    return result


def _apply(session: Session, ticket_id: int, command: Command, actor: str, now: datetime) -> str:
    name, argument = command.name.lower(), command.argument.strip()
    if name == "assign":
        tickets.assign(session, ticket_id, agent=argument, actor=actor, now=now)
    elif name == "team":
        tickets.assign(session, ticket_id, team=argument, actor=actor, now=now)
    elif name == "status":
        # The resolution notice is queued by `handle`, after the relay.
        tickets.set_status(session, ticket_id, argument.split()[0], actor=actor, now=now)
    elif name == "priority":
        ticket = session.get_one(Ticket, ticket_id)
        tickets.change_priority(session, ticket, Priority(argument.lower()), actor=actor, now=now)
    else:
        raise HelpdeskError(f"unknown command #{name}")
    return f"#{name} {argument}".strip()


def _apply_tags(session: Session, ticket_id: int, commands: list[Command], actor: str,
                now: datetime, result: AgentMailResult) -> None:
    """All `#tag` lines of a mail in one `add_tags` call; a line with a bad tag is rejected."""
    wanted: list[str] = []
    for command in commands:
        words = command.argument.replace(",", " ").split()
        problem = tickets.tag_problem(words)
        if problem:
            result.rejected.append(f"{command.line}: {problem}")
            continue
        wanted.extend(words)
        result.applied.append(f"#tag {command.argument.strip()}")
    if wanted:
        tickets.add_tags(session, session.get_one(Ticket, ticket_id), wanted, actor=actor,
                         now=now)


def _error_mail(session: Session, ticket_id: int, msg: ParsedMessage, rejected: list[str],
                ctx: ActionContext, now: datetime) -> None:
    assert msg.from_ is not None
    lines = "\n".join(f"  {r}" for r in rejected)
    body = (
        f"Your mail to ticket {format_tag(ticket_id, ctx.tag_prefix)} was not relayed to the "
        f"requester, because these commands could not be applied:\n\n{lines}\n\n"
        "Commands go on the first lines of the mail, one per line:\n"
        "  #assign agent@example.com   #team NAME   #status new|open|pending|resolved|closed\n"
        "  #status resolved quiet (no resolution notice to the requester)\n"
        "  #priority low|normal|high|urgent   #tag WORD   #note (an internal note)\n\n"
        "Fix them and send the mail again.\n"
    )
    ticket = session.get_one(Ticket, ticket_id)
    parent = anchors.after_message(session, ticket, msg, ctx.signer.loop_id)
    mail = OutgoingMail(
        kind=MessageKind.SYSTEM,
        ticket_id=ticket_id,
        from_=ctx.support,
        to=(Address(msg.from_.address, msg.from_.name),),
        subject=f"{format_tag(ticket_id, ctx.tag_prefix)} Commands not applied: {msg.subject}",
        body=body,
        reply_to=ctx.support,
        in_reply_to=parent.in_reply_to,
        references=parent.references,
        thread_topic=ticket.subject,
        parent_thread_index=parent.parent_thread_index,
        # A direct answer to the agent's mail, sent to our own staff.
        **ctx.automatic(AUTO_REPLIED, to_staff=True),
    )
    outbox.enqueue(session, mail, ctx.signer, now=now, correlation_id=msg.message_id)
