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

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import bindparam, insert, update
from sqlalchemy.orm import Session

from helpdesk.delivery import anchors, outbox
from helpdesk.desk import notices, tickets
from helpdesk.desk.notices import AUTO_GENERATED, AUTO_REPLIED, AutomaticFields
from helpdesk.errors import InvalidInput
from helpdesk.rules.regexes import regex_timed_out
from helpdesk.store import batchreads, queries, schema
from helpdesk.store.direct import Direct
from helpdesk.store.models import Ticket
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
    TicketStatus,
    Verdict,
)

log = structlog.get_logger()

# Appended to the reply that reaches [auto_reply] max_per_sender; "-- " is the
# signature separator (RFC 3676 section 4.3), so readers fold it away as one.
LIMIT_NOTICE = (
    "\n\n-- \nThis is the last automatic reply you will receive from us today; "
    "we have read every message you sent and will answer in person."
)
_INSERT_AUTO_REPLY = Direct(insert(schema.auto_replies))
_INSERT_TAG = Direct(insert(schema.ticket_tags))
_UPDATE_TICKET = Direct(
    update(schema.tickets).where(schema.tickets.c.id == bindparam("ticket_id"))
)


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
    # The ticket's events, for the caller to write (`apply_actions`).
    events: list[dict[str, object]] = field(default_factory=list)


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
    state: queries.TicketState | None = None,
) -> Applied:
    """Apply `evaluation` to the ticket; returns what was done and what was suppressed.

    The events are returned (`Applied.events`), not written: the caller writes
    them with its own, in one statement.

    `state` is the ticket as the caller already knows it (ingest: just opened,
    or read for the rules); without it, it is read here.
    """
    if state is None:
        state = queries.ticket_state(session, ticket_id)
        if state is None:
            raise LookupError(f"no ticket {ticket_id}")
    work = _Work(state, message_row_id, now)
    applied = _apply(session, work, msg, verdict, evaluation, ctx, correlation_id)
    # Core, not the ORM: one UPDATE of the ticket and one executemany of the
    # events per mail (the unit of work cost a few milliseconds a mail, issue 13).
    conn = session.connection()
    _UPDATE_TICKET.execute(conn, {**work.changes, "updated_at": now, "ticket_id": ticket_id})
    queries.expire_ticket(session, ticket_id)
    if work.new_tags:
        _INSERT_TAG.executemany(conn, [{"ticket_id": ticket_id, "tag": t} for t in work.new_tags])
    applied.events = work.events
    return applied


@dataclass
class _Work:
    """The ticket as the actions change it, and what to write at the end."""

    state: queries.TicketState
    message_row_id: int | None
    now: datetime
    changes: dict[str, object] = field(default_factory=dict)
    new_tags: list[str] = field(default_factory=list)
    events: list[dict[str, object]] = field(default_factory=list)

    @property
    def ticket_id(self) -> int:
        return self.state.view.id

    def event(self, actor: str, kind: str, detail: dict[str, object]) -> None:
        self.events.append({"ticket_id": self.ticket_id, "message_row_id": self.message_row_id,
                            "actor": actor, "kind": kind, "detail": detail,
                            "created_at": self.now})

    def change(self, **view_fields: object) -> None:
        """Change the ticket's view as later actions and templates see it."""
        self.state = dataclasses.replace(
            self.state, view=dataclasses.replace(self.state.view, **view_fields))  # type: ignore[arg-type]


def _apply(
    session: Session,
    work: _Work,
    msg: ParsedMessage,
    verdict: Verdict,
    evaluation: Evaluation,
    ctx: ActionContext,
    correlation_id: str | None,
) -> Applied:
    applied = Applied()
    for trace in evaluation.trace:
        if trace.matched:
            work.event(f"rule:{trace.rule}", "rule.matched",
                       {"file": trace.file, "reasons": list(trace.reasons)})
        elif regex_timed_out(trace.reasons):
            # The admin's regex ran out of time on this mail, so the rule did
            # not match: say so where the admin looks, the ticket and the log.
            work.event(f"rule:{trace.rule}", "rule.regex_timeout",
                       {"file": trace.file, "reasons": list(trace.reasons)})
            log.warning("rule.regex_timeout", ticket_id=work.ticket_id, rule=trace.rule,
                        file=trace.file)

    # A rule's own automatic reply to this mail says enough: no resolution notice besides.
    answered = any(isinstance(a, AutoReply) for _, a in _each_action(evaluation))
    quiet = "a rule's automatic reply answers this mail" if answered else None
    notice = notices.Notice(ctx, verdict=verdict, correlation_id=correlation_id, quiet=quiet)
    _apply_fields(session, work, _last_wins(evaluation), applied, notice)
    mail_sent = False
    for rule, action in _each_action(evaluation):
        if isinstance(action, AutoReply):
            if mail_sent:
                work.event(rule, "auto_reply.skipped",
                           {"reason": "one automatic reply per message"})
                continue
            mail_sent = _auto_reply(session, work, msg, verdict, action, rule, ctx,
                                    correlation_id, applied)
        elif isinstance(action, Forward):
            _forward(session, work, msg, action, rule, ctx, correlation_id, applied)
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
    work: _Work,
    final: dict[str, tuple[str, Action]],
    applied: Applied,
    notice: notices.Notice,
) -> None:
    for rule, action in final.values():
        view = work.state.view
        if isinstance(action, SetTeam):
            team = queries.known_team(session, action.team)
            if team is None:
                work.event(rule, "action.failed",
                           {"action": "team", "error": f"no team {action.team}"})
            elif work.changes.get("team_id", work.state.team_id) != team.id:
                work.event(rule, "team.changed", {"from": view.team, "to": team.name})
                work.changes["team_id"] = team.id
                work.change(team=team.name)
                applied.changes.append(f"team={team.name}")
        elif isinstance(action, SetAssignee):
            agent = queries.agent_by_address(session, action.agent)
            if agent is None or not agent.active:
                work.event(rule, "action.failed",
                           {"action": "assignee", "error": f"no active agent {action.agent}"})
            elif work.changes.get("assignee_id", work.state.assignee_id) != agent.id:
                work.event(rule, "assignee.changed",
                           {"from": view.assignee, "to": agent.primary_address})
                work.changes["assignee_id"] = agent.id
                work.change(assignee=agent.primary_address)
                applied.changes.append(f"assignee={agent.primary_address}")
        elif isinstance(action, SetPriority):
            if view.priority is not action.priority:
                work.event(rule, "priority.changed",
                           {"from": view.priority.value, "to": action.priority.value})
                work.changes["priority"] = action.priority.value
                work.change(priority=action.priority)
                applied.changes.append(f"priority={action.priority.value}")
        elif isinstance(action, SetStatus):
            if _change_status(session, work, action, rule, notice):
                applied.changes.append(f"status={action.status.value}")
        elif isinstance(action, AddTags):
            problem = tickets.tag_problem(action.tags)
            if problem:
                raise InvalidInput(problem)
            new = [tag for tag in dict.fromkeys(action.tags) if tag and tag not in view.tags]
            if new:
                work.event(rule, "tags.added", {"tags": new})
                work.new_tags.extend(new)
                work.change(tags=view.tags | frozenset(new))
                applied.changes.append("tags+=" + ",".join(new))


def _change_status(
    session: Session, work: _Work, action: SetStatus, rule: str, notice: notices.Notice
) -> bool:
    """A rule's status change: the columns and event every path shares (`tickets`).

    A move to resolved or closed goes through `tickets.change_status` on the
    ORM ticket (the resolution notice reads it; `resolved_at` is kept), so the
    changes so far are written first and the ticket is read afresh. Any other
    move is written with the ticket's other changes.
    """
    before = work.state.view.status
    if before is action.status:
        return False
    if action.status not in (TicketStatus.RESOLVED, TicketStatus.CLOSED):
        # No notice and no resolution time to keep: loading the ORM ticket cost about
        # a sixteenth of the writer's time with the shipped rules (issue 13).
        work.changes.update(tickets.status_columns(action.status, None, work.now))
        work.event(rule, "status.changed", {"from": before.value, "to": action.status.value})
        work.change(status=action.status)
        return True
    conn = session.connection()
    if work.changes:
        _UPDATE_TICKET.execute(conn, {**work.changes, "updated_at": work.now,
                                      "ticket_id": work.ticket_id})
    ticket = session.get_one(Ticket, work.ticket_id, populate_existing=True)
    changed = tickets.change_status(session, ticket, action.status, actor=rule, now=work.now,
                                    notice=notice, message_row_id=work.message_row_id)
    session.flush()
    work.change(status=action.status)
    return changed


def _ref(work: _Work) -> anchors.TicketRef:
    state = work.state
    return anchors.TicketRef(work.ticket_id, state.created_at, state.view.requester,
                             fresh=state.fresh)


def _auto_reply(
    session: Session,
    work: _Work,
    msg: ParsedMessage,
    verdict: Verdict,
    action: AutoReply,
    rule: str,
    ctx: ActionContext,
    correlation_id: str | None,
    applied: Applied,
) -> bool:
    assert msg.from_ is not None
    recipient, now, ticket_id = msg.from_, work.now, work.ticket_id
    reason, sent_in_window = _why_not_auto_reply(session, recipient.address, verdict, ctx, now)
    if reason is not None:
        work.event(rule, "auto_reply.suppressed", {"template": action.template,
                                                   "reason": reason, "to": recipient.address})
        applied.suppressed.append(reason.split(":")[0])
        return False
    rendered = _render(work, msg, action.template, None, rule, ctx)
    body = rendered.body
    if sent_in_window == ctx.auto_reply_limit - 1:
        body = body.rstrip("\n") + LIMIT_NOTICE + "\n"
    parent = anchors.after_message(session, _ref(work), msg, ctx.signer.loop_id)
    mail = OutgoingMail(
        kind=MessageKind.AUTO_REPLY,
        ticket_id=ticket_id,
        from_=ctx.support,
        to=(recipient,),
        subject=with_tag(rendered.subject, ticket_id, ctx.tag_prefix),
        body=body,
        reply_to=ctx.support,
        in_reply_to=parent.in_reply_to,
        references=parent.references,
        thread_topic=work.state.view.subject,
        parent_thread_index=parent.parent_thread_index,
        **ctx.automatic(AUTO_REPLIED, to_staff=False),
    )
    item = outbox.enqueue(session, mail, ctx.signer, now=now, correlation_id=correlation_id)
    _INSERT_AUTO_REPLY.execute(session.connection(), {"address": recipient.address,
                                                      "ticket_id": ticket_id, "sent_at": now})
    batchreads.auto_replied(session, recipient.address, now)
    work.event(rule, "auto_reply.queued", {"template": action.template, "to": recipient.address,
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
    work: _Work,
    msg: ParsedMessage,
    action: Forward,
    rule: str,
    ctx: ActionContext,
    correlation_id: str | None,
    applied: Applied,
) -> None:
    if action.team is not None:
        address = ctx.teams.get(action.team)
        team = Address(address or "", action.team)
        if not address:
            work.event(rule, "forward.skipped",
                       {"team": action.team, "reason": "the team has no address configured"})
            applied.suppressed.append("no_team_address")
            return
    else:
        assert action.address is not None
        address, team = action.address, None
    if _suppressed_until(session, address, work.now) is not None:
        work.event(rule, "forward.skipped",
                   {"to": address, "reason": "address bounced permanently"})
        applied.suppressed.append("bounced")
        return
    rendered = _render(work, msg, action.template, team, rule, ctx)
    # A forward is no reply: no In-Reply-To, but the thread's References and a
    # child of its Thread-Index, so that the team's mail client groups the ticket.
    parent = anchors.after_message(session, _ref(work), msg, ctx.signer.loop_id)
    mail = OutgoingMail(
        kind=MessageKind.FORWARD,
        ticket_id=work.ticket_id,
        from_=ctx.support,
        to=(Address(address, team.name if team else ""),),
        subject=with_tag(rendered.subject, work.ticket_id, ctx.tag_prefix),
        body=rendered.body,
        # Answers from the team go to the help desk, so they land on the ticket.
        reply_to=ctx.support,
        references=parent.references,
        thread_topic=work.state.view.subject,
        attachments=tuple(a for a in msg.attachments if not a.inline),
        parent_thread_index=parent.parent_thread_index,
        # Sent to a third party because a mail arrived, not an answer to its sender.
        **ctx.automatic(AUTO_GENERATED, to_staff=True),
    )
    item = outbox.enqueue(session, mail, ctx.signer, now=work.now,
                          correlation_id=correlation_id)
    work.event(rule, "forward.queued", {"template": action.template, "to": address,
                                        "message_id": item.message_id})
    applied.mails.append(f"forward:{address}")


def _render(
    work: _Work,
    msg: ParsedMessage,
    template: str,
    team: Address | None,
    rule: str,
    ctx: ActionContext,
) -> RenderedTemplate:
    view = work.state.view
    context = build_context(
        helpdesk_name=ctx.helpdesk_name,
        support_address=ctx.support_address,
        ticket=view,
        reference=format_tag(view.id, ctx.tag_prefix),
        created_at=work.state.created_at,
        message=msg,
        requester=Address(view.requester or "", work.state.requester_name),
        team=team,
    )
    try:
        return ctx.templates.render(template, context)
    except (TemplateRenderError, KeyError) as exc:
        # The ticket must not suffer from a broken template: send the built-in text.
        work.event(rule, "template.failed", {"template": template, "error": str(exc)})
        log.warning("template.failed", template=template, error=str(exc), ticket_id=view.id)
        return fallback(template, context)
