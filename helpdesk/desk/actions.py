"""Actions: what the rules decided, applied to a ticket inside the ingest transaction.

Field changes (team, assignee, priority, tags, status) become ticket updates
and events naming the rule. Mail (auto-replies, forwards) becomes outbox rows
through `outbox.enqueue`, in the same transaction. This is the last line of
loop protection: whatever the rules say, no automatic reply goes to automated
mail, to our own addresses, to no-reply senders, to an address that bounced
permanently, or to a sender who already had `[auto_reply] max_per_sender`
replies in the window (design.md §4, RFC 3834 §2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import insert
from sqlalchemy.orm import Session

from helpdesk.delivery import anchors, outbox
from helpdesk.desk import notices, tickets
from helpdesk.desk.notices import AUTO_GENERATED, AUTO_REPLIED, AutomaticFields
from helpdesk.rules.regexes import regex_timed_out
from helpdesk.store import queries
from helpdesk.store.models import AutoReplyLog, Event, Ticket, table
from helpdesk.templates import (
    RenderedTemplate,
    TemplateRenderError,
    TemplateSet,
    build_context,
    fallback,
)
from helpdesk.thread import format_tag, with_tag
from helpdesk.values import (
    Action,
    Address,
    AddTags,
    AutoReply,
    Evaluation,
    Forward,
    MessageKind,
    OutgoingMail,
    ParsedMessage,
    SetAssignee,
    SetPriority,
    SetStatus,
    SetTeam,
    Verdict,
)

log = structlog.get_logger()

# Appended to the reply that reaches [auto_reply] max_per_sender; "-- " is the
# signature separator (RFC 3676 section 4.3), so readers fold it away as one.
LIMIT_NOTICE = (
    "\n\n-- \nThis is the last automatic reply you will receive from us today; "
    "we have read every message you sent and will answer in person."
)
_INSERT_EVENT = insert(table(Event))
_INSERT_AUTO_REPLY = insert(table(AutoReplyLog))


@dataclass(frozen=True)
class ActionContext:
    """Everything actions need that is not in the message or the ticket."""

    helpdesk_name: str
    support_address: str
    tag_prefix: str
    signer: outbox.Signer
    templates: TemplateSet = field(default_factory=TemplateSet)
    teams: Mapping[str, str | None] = field(default_factory=dict)
    is_own_address: Callable[[str], bool] = lambda _address: False
    auto_reply_limit: int = 10
    auto_reply_window: timedelta = timedelta(hours=24)
    # Envelope senders of automatic mail ([outbox] bounce_address); "" is "<>".
    requester_envelope: str = ""
    staff_envelope: str = ""
    precedence_bulk: bool = True

    @property
    def support(self) -> Address:
        return Address(self.support_address, self.helpdesk_name)

    def automatic(self, keyword: str, *, to_staff: bool) -> AutomaticFields:
        """The OutgoingMail fields that mark automatic mail (RFC 3834) and route its bounces."""
        return AutomaticFields(
            automated=True,
            auto_submitted=keyword,
            precedence="bulk" if self.precedence_bulk else None,
            envelope_sender=self.staff_envelope if to_staff else self.requester_envelope,
        )


@dataclass
class Applied:
    """What applying the actions did, for the per-message log line and counters."""

    changes: list[str] = field(default_factory=list)
    mails: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)


def apply_actions(
    session: Session,
    *,
    ticket_id: int,
    message_row_id: int | None,
    msg: ParsedMessage,
    verdict: Verdict,
    evaluation: Evaluation,
    ctx: ActionContext,
    now: datetime,
    correlation_id: str | None = None,
) -> Applied:
    """Apply `evaluation` to the ticket; returns what was done and what was suppressed."""
    # No flush before every query: the changes and events of this mail are
    # written together at the end (the unit of work cost several ms a mail).
    with session.no_autoflush:
        ticket = session.get_one(Ticket, ticket_id, options=queries.TICKET_WITH_RELATIONS)
        events: list[dict[str, object]] = []
        applied = _apply(session, ticket, message_row_id, msg, verdict, evaluation, ctx, now,
                         correlation_id, events)
        ticket.updated_at = now
    session.flush()
    if events:
        # Core, not the ORM: one executemany for all of this mail's events.
        session.connection().execute(_INSERT_EVENT, events)
    return applied


def _apply(
    session: Session,
    ticket: Ticket,
    message_row_id: int | None,
    msg: ParsedMessage,
    verdict: Verdict,
    evaluation: Evaluation,
    ctx: ActionContext,
    now: datetime,
    correlation_id: str | None,
    events: list[dict[str, object]],
) -> Applied:
    applied = Applied()

    def event(actor: str, kind: str, detail: dict[str, object]) -> None:
        events.append({"ticket_id": ticket.id, "message_row_id": message_row_id, "actor": actor,
                       "kind": kind, "detail": detail, "created_at": now})

    for trace in evaluation.trace:
        if trace.matched:
            event(f"rule:{trace.rule}", "rule.matched",
                  {"file": trace.file, "reasons": list(trace.reasons)})
        elif regex_timed_out(trace.reasons):
            # The admin's regex ran out of time on this mail, so the rule did
            # not match: say so where the admin looks, the ticket and the log.
            event(f"rule:{trace.rule}", "rule.regex_timeout",
                  {"file": trace.file, "reasons": list(trace.reasons)})
            log.warning("rule.regex_timeout", ticket_id=ticket.id, rule=trace.rule,
                        file=trace.file)

    # A rule's own automatic reply to this mail says enough: no resolution notice besides.
    answered = any(isinstance(a, AutoReply) for _, a in _each_action(evaluation))
    quiet = "a rule's automatic reply answers this mail" if answered else None
    notice = notices.Notice(ctx, verdict=verdict, correlation_id=correlation_id, quiet=quiet)
    _apply_fields(session, ticket, _last_wins(evaluation), event, applied, now, message_row_id,
                  notice)
    mail_sent = False
    for rule, action in _each_action(evaluation):
        if isinstance(action, AutoReply):
            if mail_sent:
                event(rule, "auto_reply.skipped", {"reason": "one automatic reply per message"})
                continue
            mail_sent = _auto_reply(session, ticket, msg, verdict, action, rule, ctx, now,
                                    correlation_id, event, applied)
        elif isinstance(action, Forward):
            _forward(session, ticket, msg, action, rule, ctx, now, correlation_id, event, applied)
    return applied


def _each_action(evaluation: Evaluation) -> list[tuple[str, Action]]:
    return [(f"rule:{t.rule}", a) for t in evaluation.trace if t.matched for a in t.actions]


def _last_wins(evaluation: Evaluation) -> dict[str, tuple[str, Action]]:
    """One value per field: when two rules set the team, the later rule wins (file order)."""
    final: dict[str, tuple[str, Action]] = {}
    tags: list[str] = []
    tag_rule = ""
    for rule, action in _each_action(evaluation):
        if isinstance(action, AddTags):
            tags.extend(action.tags)
            tag_rule = rule
        elif not isinstance(action, AutoReply | Forward):
            final[type(action).__name__] = (rule, action)
    if tags:
        final["AddTags"] = (tag_rule, AddTags(tuple(dict.fromkeys(tags))))
    return final


def _apply_fields(
    session: Session,
    ticket: Ticket,
    final: dict[str, tuple[str, Action]],
    event: Callable[[str, str, dict[str, object]], None],
    applied: Applied,
    now: datetime,
    message_row_id: int | None,
    notice: notices.Notice,
) -> None:
    for rule, action in final.values():
        if isinstance(action, SetTeam):
            team = queries.known_team(session, action.team)
            if team is None:
                event(rule, "action.failed", {"action": "team", "error": f"no team {action.team}"})
            elif ticket.team_id != team.id:
                before = ticket.team.name if ticket.team else None
                ticket.team = team
                event(rule, "team.changed", {"from": before, "to": team.name})
                applied.changes.append(f"team={team.name}")
        elif isinstance(action, SetAssignee):
            agent = queries.agent_by_address(session, action.agent)
            if agent is None or not agent.active:
                event(rule, "action.failed",
                      {"action": "assignee", "error": f"no active agent {action.agent}"})
            elif ticket.assignee_id != agent.id:
                before = ticket.assignee.primary_address if ticket.assignee else None
                ticket.assignee = agent
                event(rule, "assignee.changed", {"from": before, "to": agent.primary_address})
                applied.changes.append(f"assignee={agent.primary_address}")
        elif isinstance(action, SetPriority):
            if tickets.change_priority(session, ticket, action.priority, actor=rule, now=now,
                                       message_row_id=message_row_id):
                applied.changes.append(f"priority={action.priority.value}")
        elif isinstance(action, SetStatus):
            if tickets.change_status(session, ticket, action.status, actor=rule, now=now,
                                     notice=notice, message_row_id=message_row_id):
                applied.changes.append(f"status={action.status.value}")
        elif isinstance(action, AddTags):
            new = tickets.add_tags(session, ticket, action.tags, actor=rule, now=now,
                                   message_row_id=message_row_id)
            if new:
                applied.changes.append("tags+=" + ",".join(new))


def _auto_reply(
    session: Session,
    ticket: Ticket,
    msg: ParsedMessage,
    verdict: Verdict,
    action: AutoReply,
    rule: str,
    ctx: ActionContext,
    now: datetime,
    correlation_id: str | None,
    event: Callable[[str, str, dict[str, object]], None],
    applied: Applied,
) -> bool:
    assert msg.from_ is not None
    recipient = msg.from_
    reason, sent_in_window = _why_not_auto_reply(session, recipient.address, verdict, ctx, now)
    if reason is not None:
        event(rule, "auto_reply.suppressed", {"template": action.template, "reason": reason,
                                              "to": recipient.address})
        applied.suppressed.append(reason.split(":")[0])
        return False
    rendered = _render(session, ticket, msg, action.template, None, rule, ctx, event)
    body = rendered.body
    if sent_in_window == ctx.auto_reply_limit - 1:
        body = body.rstrip("\n") + LIMIT_NOTICE + "\n"
    parent = anchors.after_message(session, ticket, msg, ctx.signer.loop_id)
    mail = OutgoingMail(
        kind=MessageKind.AUTO_REPLY,
        ticket_id=ticket.id,
        from_=ctx.support,
        to=(recipient,),
        subject=with_tag(rendered.subject, ticket.id, ctx.tag_prefix),
        body=body,
        reply_to=ctx.support,
        in_reply_to=parent.in_reply_to,
        references=parent.references,
        thread_topic=ticket.subject,
        parent_thread_index=parent.parent_thread_index,
        **ctx.automatic(AUTO_REPLIED, to_staff=False),
    )
    item = outbox.enqueue(session, mail, ctx.signer, now=now, correlation_id=correlation_id)
    session.connection().execute(_INSERT_AUTO_REPLY, {"address": recipient.address,
                                                      "ticket_id": ticket.id, "sent_at": now})
    event(rule, "auto_reply.queued", {"template": action.template, "to": recipient.address,
                                      "message_id": item.message_id})
    applied.mails.append(f"auto_reply:{action.template}")
    return True


def _why_not_auto_reply(
    session: Session, address: str, verdict: Verdict, ctx: ActionContext, now: datetime
) -> tuple[str | None, int]:
    """The reason not to answer `address` automatically (None: go ahead) and the count so far."""
    return notices.why_no_automatic_mail(session, address, verdict=verdict, ctx=ctx, now=now)


def _suppressed_until(session: Session, address: str, now: datetime) -> datetime | None:
    return notices.suppressed_until(session, address, now)


def _forward(
    session: Session,
    ticket: Ticket,
    msg: ParsedMessage,
    action: Forward,
    rule: str,
    ctx: ActionContext,
    now: datetime,
    correlation_id: str | None,
    event: Callable[[str, str, dict[str, object]], None],
    applied: Applied,
) -> None:
    if action.team is not None:
        address = ctx.teams.get(action.team)
        team = Address(address or "", action.team)
        if not address:
            event(rule, "forward.skipped",
                  {"team": action.team, "reason": "the team has no address configured"})
            applied.suppressed.append("no_team_address")
            return
    else:
        assert action.address is not None
        address, team = action.address, None
    if _suppressed_until(session, address, now) is not None:
        event(rule, "forward.skipped", {"to": address, "reason": "address bounced permanently"})
        applied.suppressed.append("bounced")
        return
    rendered = _render(session, ticket, msg, action.template, team, rule, ctx, event)
    # A forward is no reply: no In-Reply-To, but the thread's References and a
    # child of its Thread-Index, so that the team's mail client groups the ticket.
    parent = anchors.after_message(session, ticket, msg, ctx.signer.loop_id)
    mail = OutgoingMail(
        kind=MessageKind.FORWARD,
        ticket_id=ticket.id,
        from_=ctx.support,
        to=(Address(address, team.name if team else ""),),
        subject=with_tag(rendered.subject, ticket.id, ctx.tag_prefix),
        body=rendered.body,
        # Answers from the team go to the help desk, so they land on the ticket.
        reply_to=ctx.support,
        references=parent.references,
        thread_topic=ticket.subject,
        attachments=tuple(a for a in msg.attachments if not a.inline),
        parent_thread_index=parent.parent_thread_index,
        # Sent to a third party because a mail arrived, not an answer to its sender.
        **ctx.automatic(AUTO_GENERATED, to_staff=True),
    )
    item = outbox.enqueue(session, mail, ctx.signer, now=now, correlation_id=correlation_id)
    event(rule, "forward.queued", {"template": action.template, "to": address,
                                   "message_id": item.message_id})
    applied.mails.append(f"forward:{address}")


def _render(
    session: Session,
    ticket: Ticket,
    msg: ParsedMessage,
    template: str,
    team: Address | None,
    rule: str,
    ctx: ActionContext,
    event: Callable[[str, str, dict[str, object]], None],
) -> RenderedTemplate:
    view = queries.view_of(ticket)
    context = build_context(
        helpdesk_name=ctx.helpdesk_name,
        support_address=ctx.support_address,
        ticket=view,
        reference=format_tag(ticket.id, ctx.tag_prefix),
        created_at=ticket.created_at,
        message=msg,
        requester=Address(view.requester or "", ticket.requester.name if ticket.requester else ""),
        team=team,
    )
    try:
        return ctx.templates.render(template, context)
    except (TemplateRenderError, KeyError) as exc:
        # The ticket must not suffer from a broken template: send the built-in text.
        event(rule, "template.failed", {"template": template, "error": str(exc)})
        log.warning("template.failed", template=template, error=str(exc), ticket_id=ticket.id)
        return fallback(template, context)
