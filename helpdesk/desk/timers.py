"""The periodic job behind time-driven rules: apply the timers that are due, store next deadlines.

`run(session, timers, ctx, now)` reads only the tickets whose stored deadline
(`tickets.timer_due_at`) has passed -- which includes every ticket changed
since the last pass, since a change makes the deadline stale (database
triggers, migration 0009) -- asks the pure `helpdesk.rules.timers` which
timers fire, applies them, and stores each ticket's next deadline. Applying
means status changes and tags as events named `timer:<name>`, notices to the
requester and escalations to the team lead through the outbox.

A timer fires at most once per ticket state (`rules.timers.state_key`): each
firing is first claimed in `timer_firings` (one row per ticket and timer), so
even two passes racing on one ticket apply it once. Several daemons may run
the pass: the caller also holds a lease so that only one does at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session, selectinload

from helpdesk.desk import notices, notify, tickets
from helpdesk.desk.actions import ActionContext
from helpdesk.rules.timers import (
    ESCALATED_TAG,
    FiredRecord,
    Firing,
    Timer,
    TimerTicket,
    conditions_signature,
    due,
    next_deadline,
    raise_priority,
    state_key,
)
from helpdesk.store import queries, schema
from helpdesk.store.models import (
    TIMER_STALE,
    Event,
    StoreValue,
    Suppression,
    Ticket,
    TicketTag,
)
from helpdesk.store.upsert import dialect_insert
from helpdesk.templates import RenderedTemplate, TemplateRenderError, build_context, fallback
from helpdesk.thread import format_tag
from helpdesk.values import Address, TicketStatus

log = structlog.get_logger()

EventFn = Callable[[str, dict[str, object]], None]

# The store value holding the signature of the timers the stored deadlines were
# computed for; a different set of timers makes them all stale.
SIGNATURE_KEY = "timers.signature"
# Tickets read per query: bounds memory when many are due at once (the first
# pass after an upgrade or a change of the timers looks at every open ticket).
CHUNK = 500

_tickets = schema.tickets
_firings = schema.timer_firings
_tags = schema.ticket_tags
_SET_DEADLINE = (
    update(_tickets)
    .where(_tickets.c.id == bindparam("ticket_id"))
    .values(timer_due_at=bindparam("due"))
)
# RETURNING tells whether the row was written (psycopg reports no rowcount here).
@functools.cache
def _insert_firing(dialect: str) -> Any:
    return (dialect_insert(dialect)(_firings).on_conflict_do_nothing()
            .returning(_firings.c.timer))


@dataclass(frozen=True)
class Chunk:
    """One chunk of a timer pass: what fired, and whether the pass is done."""

    fired: list[Firing]
    done: bool


def run(session: Session, timers: Sequence[Timer], ctx: ActionContext, now: datetime,
        *, chunk: int = CHUNK) -> list[Firing]:
    """Apply every due timer and store the next deadlines, in the caller's transaction;
    returns what fired."""
    fired: list[Firing] = []
    seen: set[int] = set()
    while True:
        part = run_chunk(session, timers, ctx, now, seen=seen, size=chunk)
        fired += part.fired
        if part.done:
            return fired


def run_chunk(session: Session, timers: Sequence[Timer], ctx: ActionContext, now: datetime,
              *, seen: set[int], size: int = CHUNK) -> Chunk:
    """The next `size` due tickets, earliest deadline first: fire, store next deadlines.

    `seen` (the caller keeps it across the chunks of one pass) collects the
    tickets looked at: a ticket is looked at once per pass even if its new
    deadline were already due. A caller may commit between chunks (the daemon
    does), so that a long first pass does not hold its row locks throughout.
    """
    if not timers:
        return Chunk([], True)
    if not seen:
        _reset_if_changed(session, timers)
    # Earliest deadline first, in the order of the partial index (timer_due_at, id):
    # a range read however stale the planner's statistics; what was looked at has
    # a new deadline (later, or none), so the next chunk reads the next tickets.
    ids = [i for i in session.scalars(
        select(Ticket.id)
        .where(Ticket.timer_due_at <= now)
        .order_by(Ticket.timer_due_at, Ticket.id)
        .limit(size)
    ) if i not in seen]
    if not ids:
        return Chunk([], True)
    seen.update(ids)
    return Chunk(_run_chunk(session, timers, sorted(ids), ctx, now), False)


def _run_chunk(session: Session, timers: Sequence[Timer], ids: list[int], ctx: ActionContext,
               now: datetime) -> list[Firing]:
    # Snapshots by plain SQL: most tickets looked at only get a new deadline;
    # the ORM loads the few that fire (the first pass after an upgrade looks at
    # every open ticket).
    snapshots = _snapshots(session, ids)
    records = _records(session, ids)
    fired: list[Firing] = []
    for ticket_id, before in snapshots.items():
        mine = records.setdefault(ticket_id, {})
        if not due(timers, before, now, mine):
            continue
        ticket = session.scalars(
            select(Ticket).where(Ticket.id == ticket_id).options(selectinload(Ticket.tags))
        ).one()
        fired += _fire(session, ticket, timers, mine, ctx, now)
        snapshots[ticket_id] = snapshot(ticket)
    # The ORM's changes first: they make the deadline stale (trigger), the
    # deadlines written next must come after them.
    session.flush()
    deadlines = [
        {"ticket_id": ticket_id, "due": next_deadline(timers, snap, records[ticket_id])}
        for ticket_id, snap in snapshots.items()
    ]
    session.connection().execute(_SET_DEADLINE, deadlines)
    return fired


def _snapshots(session: Session, ids: list[int]) -> dict[int, TimerTicket]:
    conn = session.connection()
    t = _tickets.c
    tags: dict[int, set[str]] = {}
    for ticket_id, tag in conn.execute(select(_tags.c.ticket_id, _tags.c.tag)
                                       .where(_tags.c.ticket_id.in_(ids))):
        tags.setdefault(ticket_id, set()).add(tag)
    rows = conn.execute(
        select(t.id, t.status, t.priority, t.created_at, t.updated_at, t.first_response_at,
               t.merged_into_id)
        .where(t.id.in_(ids)).order_by(t.id)
    )
    return {
        row.id: TimerTicket(
            id=row.id, status=row.status, priority=row.priority, created_at=row.created_at,
            updated_at=row.updated_at, first_response_at=row.first_response_at,
            tags=frozenset(tags.get(row.id, ())), merged=row.merged_into_id is not None)
        for row in rows
    }


def _fire(session: Session, ticket: Ticket, timers: Sequence[Timer],
          records: dict[str, FiredRecord], ctx: ActionContext, now: datetime) -> list[Firing]:
    """Apply the timers due for one ticket, each claimed first; updates `records`."""
    before = snapshot(ticket)
    applied: list[tuple[Firing, str]] = []
    for firing in due(timers, before, now, records):
        name = firing.timer.name
        state = state_key(firing.timer, before)
        if not _claim(session, ticket.id, name, state, records.get(name), now):
            log.info("timer.skipped", timer=name, ticket_id=ticket.id,
                     reason="already fired in this state by another pass")
            continue
        _apply(session, ticket, firing, ctx, now)
        applied.append((firing, state))
    if not applied:
        return []
    after = snapshot(ticket)
    for firing, state in applied:
        left = state_key(firing.timer, after)
        session.connection().execute(
            update(_firings)
            .where(_firings.c.ticket_id == ticket.id, _firings.c.timer == firing.timer.name)
            .values(left_state=left)
        )
        records[firing.timer.name] = FiredRecord(state, left)
    return [firing for firing, _ in applied]


def _claim(session: Session, ticket_id: int, timer: str, state: str,
           previous: FiredRecord | None, now: datetime) -> bool:
    """Record that `timer` fires for the ticket in `state`; False when another pass did.

    An insert that does nothing on conflict, or an update that expects the
    state read before: a concurrent pass that got there first (PostgreSQL
    re-checks the condition after waiting for its row lock) makes it a no-op.
    """
    conn = session.connection()
    if previous is None:
        values = {"ticket_id": ticket_id, "timer": timer, "state": state, "left_state": None,
                  "fired_at": now}
        row = conn.execute(_insert_firing(conn.dialect.name), values).first()
    else:
        row = conn.execute(
            update(_firings)
            .where(_firings.c.ticket_id == ticket_id, _firings.c.timer == timer,
                   _firings.c.state == previous.state)
            .values(state=state, left_state=None, fired_at=now)
            .returning(_firings.c.timer)
        ).first()
    return row is not None


def _records(session: Session, ids: list[int]) -> dict[int, dict[str, FiredRecord]]:
    found: dict[int, dict[str, FiredRecord]] = {}
    rows = session.connection().execute(
        select(_firings.c.ticket_id, _firings.c.timer, _firings.c.state, _firings.c.left_state)
        .where(_firings.c.ticket_id.in_(ids))
    )
    for ticket_id, timer, state, left in rows:
        found.setdefault(ticket_id, {})[timer] = FiredRecord(state, left)
    return found


def snapshot(ticket: Ticket) -> TimerTicket:
    """What timers look at, from a loaded ticket."""
    return TimerTicket(
        id=ticket.id, status=ticket.status, priority=ticket.priority,
        created_at=ticket.created_at, updated_at=ticket.updated_at,
        first_response_at=ticket.first_response_at,
        tags=frozenset(t.tag for t in ticket.tags), merged=ticket.merged_into_id is not None,
    )


def _reset_if_changed(session: Session, timers: Sequence[Timer]) -> None:
    """Make the deadlines stale when the timers differ from those they were computed for.

    Stale: every ticket that had a deadline, and every ticket in a status a
    timer applies to (it may have one now). Runs once per change of the
    timers' conditions (and once after the upgrade that added deadlines).
    """
    signature = conditions_signature(timers)
    conn = session.connection()
    stored = conn.execute(
        select(StoreValue.value).where(StoreValue.key == SIGNATURE_KEY)
    ).scalar()
    if stored == signature:
        return
    statuses = set().union(*(t.statuses for t in timers))
    if any(not t.statuses for t in timers):
        statuses |= {s.value for s in TicketStatus
                     if s not in (TicketStatus.RESOLVED, TicketStatus.CLOSED)}
    result = conn.execute(
        update(_tickets)
        .where(_tickets.c.merged_into_id.is_(None),
               or_(_tickets.c.timer_due_at.is_not(None), _tickets.c.status.in_(sorted(statuses))))
        .values(timer_due_at=TIMER_STALE)
    )
    insert = dialect_insert(conn.dialect.name)
    conn.execute(insert(schema.store_values).values(key=SIGNATURE_KEY, value=signature)
                 .on_conflict_do_update(index_elements=["key"], set_={"value": signature}))
    log.info("timers.deadlines_reset", tickets=result.rowcount,
             reason="first pass" if stored is None else "the timers changed")


def _apply(session: Session, ticket: Ticket, firing: Firing, ctx: ActionContext,
           now: datetime) -> None:
    timer = firing.timer
    actor = f"timer:{timer.name}"

    def event(kind: str, detail: dict[str, object]) -> None:
        session.add(Event(ticket_id=ticket.id, actor=actor, kind=kind, detail=detail,
                          created_at=now))

    event("timer.fired", {"reason": firing.reason, "file": timer.path.name})
    resolved = False
    if timer.set_status is not None:
        # A timer that resolves announces it once: its `notify` template is the notice.
        notice = notices.Notice(ctx, template=timer.notify or "resolved")
        changed = tickets.change_status(session, ticket, timer.set_status, actor=actor,
                                        now=now, notice=notice)
        resolved = changed and timer.set_status is TicketStatus.RESOLVED
    have = {t.tag for t in ticket.tags}
    for tag in timer.tags:
        if tag not in have:
            ticket.tags.append(TicketTag(tag=tag))
            have.add(tag)
    if timer.escalate:
        _escalate(session, ticket, ctx, now, event, have)
    if timer.notify is not None and not resolved:
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

