"""The periodic job behind time-driven rules: apply the timers that are due, in one transaction.

`run(session, timers, ctx, now)` finds the tickets a timer could apply to,
asks the pure `helpdesk.rules.timers.due` which fire, and applies them:
status changes and tags as events named `timer:<name>`, notices to the
requester and escalations to the team lead through the outbox. Several
daemons may run it: the caller holds a lease so only one does at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from helpdesk import notify
from helpdesk.actions import ActionContext
from helpdesk.rules.timers import ESCALATED_TAG, Firing, Timer, TimerTicket, due, raise_priority
from helpdesk.store import queries
from helpdesk.store.models import Event, Suppression, Ticket, TicketTag
from helpdesk.templates import RenderedTemplate, TemplateRenderError, build_context, fallback
from helpdesk.thread import format_tag
from helpdesk.values import Address, TicketStatus

log = structlog.get_logger()

EventFn = Callable[[str, dict[str, object]], None]


def run(session: Session, timers: Sequence[Timer], ctx: ActionContext, now: datetime
        ) -> list[Firing]:
    """Apply every due timer; returns what fired."""
    if not timers:
        return []
    fired: list[Firing] = []
    for ticket in _candidates(session, timers):
        snapshot = TimerTicket(
            id=ticket.id, status=ticket.status, priority=ticket.priority,
            created_at=ticket.created_at, updated_at=ticket.updated_at,
            first_response_at=ticket.first_response_at,
            tags=frozenset(t.tag for t in ticket.tags),
        )
        for firing in due(timers, snapshot, now):
            _apply(session, ticket, firing, ctx, now)
            fired.append(firing)
    session.flush()
    return fired


def _candidates(session: Session, timers: Sequence[Timer]) -> list[Ticket]:
    statuses = set().union(*(t.statuses for t in timers))
    open_states = [s.value for s in TicketStatus if s not in (TicketStatus.RESOLVED,
                                                               TicketStatus.CLOSED)]
    wanted = statuses | (set(open_states) if any(not t.statuses for t in timers) else set())
    return list(session.scalars(
        select(Ticket)
        .where(Ticket.status.in_(sorted(wanted)), Ticket.merged_into_id.is_(None))
        .options(selectinload(Ticket.tags))
        .order_by(Ticket.id)
    ))


def _apply(session: Session, ticket: Ticket, firing: Firing, ctx: ActionContext,
           now: datetime) -> None:
    timer = firing.timer
    actor = f"timer:{timer.name}"

    def event(kind: str, detail: dict[str, object]) -> None:
        session.add(Event(ticket_id=ticket.id, actor=actor, kind=kind, detail=detail,
                          created_at=now))

    event("timer.fired", {"reason": firing.reason, "file": timer.path.name})
    if timer.set_status is not None and ticket.status != timer.set_status:
        event("status.changed", {"from": ticket.status, "to": timer.set_status.value})
        ticket.status = timer.set_status.value
        if timer.set_status in (TicketStatus.RESOLVED, TicketStatus.CLOSED):
            ticket.resolved_at = ticket.resolved_at or now
    have = {t.tag for t in ticket.tags}
    for tag in timer.tags:
        if tag not in have:
            ticket.tags.append(TicketTag(tag=tag))
            have.add(tag)
    if timer.escalate:
        _escalate(session, ticket, ctx, now, event, have)
    if timer.notify is not None:
        _notify(session, ticket, timer.notify, ctx, now, event)
    ticket.updated_at = now
    log.info("timer.fired", timer=timer.name, ticket_id=ticket.id, reason=firing.reason)


def _escalate(session: Session, ticket: Ticket, ctx: ActionContext, now: datetime,
              event: EventFn, tags: set[str]) -> None:
    before = ticket.priority
    ticket.priority = raise_priority(before)
    if ESCALATED_TAG not in tags:
        ticket.tags.append(TicketTag(tag=ESCALATED_TAG))
    to = None
    if ticket.team is not None:
        to = ticket.team.lead_address or ticket.team.address
    event("ticket.escalated", {"priority_from": before, "priority_to": ticket.priority,
                               "to": to})
    if to is None:
        event("escalation.skipped", {"reason": "the ticket has no team with a lead or address"})
        return
    rendered = _render(session, ticket, "escalated", ctx,
                       Address(to, ticket.team.name if ticket.team else ""), event)
    notify.escalation(session, ticket, Address(to), rendered, ctx, now)


def _notify(session: Session, ticket: Ticket, template: str, ctx: ActionContext, now: datetime,
            event: EventFn) -> None:
    requester = ticket.requester
    if requester is None:
        return
    blocked = session.get(Suppression, requester.address)
    if blocked is not None and blocked.until > now:
        event("notice.suppressed", {"to": requester.address, "reason": "address bounced"})
        return
    rendered = _render(session, ticket, template, ctx, None, event)
    item = notify.timer_notice(session, ticket, Address(requester.address, requester.name),
                               rendered, ctx, now)
    event("notice.queued", {"template": template, "to": requester.address,
                            "message_id": item.message_id})


def _render(session: Session, ticket: Ticket, template: str, ctx: ActionContext,
            team: Address | None, event: EventFn) -> RenderedTemplate:
    view = queries.view_of(ticket)
    context = build_context(
        helpdesk_name=ctx.helpdesk_name, support_address=ctx.support_address, ticket=view,
        reference=format_tag(ticket.id, ctx.tag_prefix), created_at=ticket.created_at,
        team=team,
    )
    try:
        return ctx.templates.render(template, context)
    except TemplateRenderError as exc:
        event("template.failed", {"template": template, "error": str(exc)})
        return fallback(template, context)

