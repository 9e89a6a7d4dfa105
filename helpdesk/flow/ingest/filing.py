"""Filing: a new mail put on its ticket, with what it changes and what follows from it.

The steps, each in the ingest savepoint of the mail: who wrote it and with
which powers (an agent's mail is trusted only as `ctx.trust` says), which
ticket it belongs to (a bounce to the ticket of the mail it returns, else
threading) or a new one, the message row with its attachments, participants
and audit events, the ticket's status (a person's mail reopens, a requester's
answer takes a pending ticket back into the queue), then the agent's commands
or the admin's rules, and the notification of the assignee.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from helpdesk.desk import notify
from helpdesk.desk.actions import Applied, apply_actions
from helpdesk.flow import agentmail, bounces
from helpdesk.flow.ingest import rows
from helpdesk.flow.ingest.context import IngestContext
from helpdesk.mail.commands import CommandBlock
from helpdesk.mail.forwarded import ForwardedMail
from helpdesk.mail.parse import attach
from helpdesk.mail.prepare import Prepared
from helpdesk.mail.trust import TrustVerdict, agent_trust
from helpdesk.rules import evaluate
from helpdesk.rules.regexes import regex_timed_out
from helpdesk.store import batchreads, blobs, queries
from helpdesk.store.failures import is_outage
from helpdesk.thread import clean_subject, match_thread
from helpdesk.values import (
    AttachmentPart,
    IngestOutcome,
    MailClass,
    MessageKind,
    Origin,
    OutcomeKind,
    ParsedMessage,
    Priority,
    RuleInput,
    SetStatus,
    ThreadMatch,
    ThreadReason,
    TicketStatus,
    TicketView,
    Verdict,
)

__all__ = ["file_message"]

log = structlog.get_logger()

_FINISHED = (TicketStatus.RESOLVED, TicketStatus.CLOSED)


@dataclass(frozen=True)
class _Route:
    """Who wrote the mail, in which capacity, and the ticket it belongs to."""

    sender: str
    agent_powers: bool
    match: ThreadMatch
    # The ticket the mail belongs to; None: it opens a new one.
    view: TicketView | None
    # The agent's #commands (only with agent powers).
    block: CommandBlock | None
    to_note: bool
    # A customer's mail an agent forwarded to open a ticket on their behalf.
    forwarded: ForwardedMail | None
    # The mail as filed: the customer's inside a forward, else the mail itself.
    effective: ParsedMessage
    # Whose mail it counts as: the requester's address for a forward on behalf.
    author: str

    @property
    def working(self) -> bool:
        """An agent's commands, note or reply on an existing ticket."""
        return self.agent_powers and self.view is not None and self.block is not None


@dataclass(frozen=True)
class _Place:
    ticket_id: int
    requester: str | None
    known: frozenset[str]
    kind: OutcomeKind
    # The ticket this mail opened, as rules see it (participants still to come).
    opened: queries.TicketState | None = None


def file_message(
    session: Session,
    raw: bytes,
    origin: Origin,
    msg: ParsedMessage,
    message_id: str,
    prepared: Prepared,
    ctx: IngestContext,
    *,
    guard_actions: bool = True,
) -> IngestOutcome:
    """Store a new (not duplicate) mail on its ticket, or on a new ticket, in `session`.

    With `guard_actions`, the rules' actions run in a savepoint of their own: a
    failing action is recorded on the ticket and the mail is stored without
    its effects. Without (ingest's optimistic pass over a whole batch), a
    failing action raises, and the batch is stored again with the guard on.
    """
    now = ctx.clock()
    verdict = prepared.verdict
    early: list[dict[str, object]] = []
    route = _route(session, msg, origin, prepared, ctx, early)
    place = _place(session, route, origin, ctx, now)
    filed = _store(session, raw, origin, message_id, route, place, msg, verdict, now)
    participants = place.known
    if not verdict.automated:
        participants |= _record_participants(session, route, place, filed.stored, ctx)
    events = rows.message_events(place.ticket_id, filed.row_id, message_id, filed.stored,
                                 route.match, place.kind, route.author, now)
    events += [{**e, "ticket_id": place.ticket_id, "message_row_id": filed.row_id}
               for e in early]
    events += _ticket_changes(session, route, place, verdict, filed.row_id, now)
    if verdict.bounce is not None:
        events += bounces.record(session, verdict.bounce, ticket_id=place.ticket_id,
                                 message_row_id=filed.row_id, now=now,
                                 suppress_for=ctx.bounce_suppression)
    fired, applied = _follow_up(session, route, place, filed, participants, prepared, origin,
                                message_id, ctx, now, events, guard_actions=guard_actions)
    return IngestOutcome(
        place.kind,
        ticket_id=place.ticket_id,
        message_row_id=filed.row_id,
        message_id=message_id,
        notes=tuple(f"{n.kind}: {n.detail}" for n in route.match.notes),
        mail_class=verdict.mail_class.value,
        rules_fired=fired,
        mails_queued=tuple(applied.mails),
        suppressed=tuple(applied.suppressed),
    )


@dataclass(frozen=True)
class _Filed:
    """The mail as written on its ticket."""

    row_id: int
    kind: MessageKind
    # As received, and as filed (an agent's mail without its #commands, the customer's
    # mail inside a forward on their behalf); both with their attachments' bytes.
    msg: ParsedMessage
    stored: ParsedMessage


def _store(
    session: Session,
    raw: bytes,
    origin: Origin,
    message_id: str,
    route: _Route,
    place: _Place,
    msg: ParsedMessage,
    verdict: Verdict,
    now: datetime,
) -> _Filed:
    """Write the message row and its attachments."""
    if route.working:
        assert route.block is not None
        kind = agentmail.classify_agent_mail(route.block, route.to_note)
        stored = dataclasses.replace(msg, new_text=route.block.remaining)
    else:
        kind = _message_kind(verdict)
        stored = route.effective
    conn = session.connection()
    # The unique (message_id, content) constraint speaks here, inside the savepoint.
    row_id = blobs.insert_one(
        conn, rows.MESSAGES,
        rows.message_values(stored, raw, origin, message_id, place.ticket_id, kind, verdict,
                            now),
        "raw",
    )
    # A second copy of this mail later in the batch must find it (store.batchreads).
    batchreads.stored(session, batchreads.Copy(row_id, place.ticket_id, message_id,
                                               stored.content_hash, False),
                      batchreads.origin_key(origin))
    # A worker sent large attachments back without their bytes: decode them
    # from the raw mail now, after the message row is written (its raw bytes
    # were bound then), for the rows below and for what rules and actions send.
    msg, stored = _with_payloads(raw, msg, stored)
    if stored.attachments:
        blobs.insert_many(conn, rows.ATTACHMENTS,
                          [rows.attachment_values(row_id, a) for a in stored.attachments],
                          "content")
    return _Filed(row_id, kind, msg, stored)


def _follow_up(
    session: Session,
    route: _Route,
    place: _Place,
    filed: _Filed,
    participants: frozenset[str],
    prepared: Prepared,
    origin: Origin,
    message_id: str,
    ctx: IngestContext,
    now: datetime,
    events: list[dict[str, object]],
    *,
    guard_actions: bool,
) -> tuple[tuple[str, ...], Applied]:
    """The agent's commands or the rules, then the assignee's notification; writes `events`.

    Returns the rules that fired and what their actions did.
    """
    conn = session.connection()
    fired: tuple[str, ...] = ()
    applied = Applied()
    if route.working:
        assert route.block is not None
        rows.INSERT_EVENT.executemany(conn, events)
        events = []
        agentmail.handle(session, ticket_id=place.ticket_id, message_row_id=filed.row_id,
                         msg=filed.msg, block=route.block, kind=filed.kind, ctx=ctx.actions,
                         now=now)
    elif ctx.rules is not None and ctx.actions is not None:
        fired, applied = _run_rules(session, place, participants, filed.row_id, filed.stored,
                                    prepared, origin, message_id, ctx, now, events,
                                    guard_actions=guard_actions)
        events += applied.events
    # The mail's events and its rules' in one statement (unless written already).
    if events:
        rows.INSERT_EVENT.executemany(conn, events)
    if (place.kind is OutcomeKind.REPLY and not route.agent_powers
            and not prepared.verdict.automated and ctx.notify and ctx.actions is not None):
        to = notify.customer_replied(session, ticket_id=place.ticket_id,
                                     message_row_id=filed.row_id, msg=filed.msg,
                                     ctx=ctx.actions, now=now)
        if to:
            applied.mails.append(f"notify:{to}")
    return fired, applied


def _route(
    session: Session,
    msg: ParsedMessage,
    origin: Origin,
    prepared: Prepared,
    ctx: IngestContext,
    events: list[dict[str, object]],
) -> _Route:
    assert msg.from_ is not None  # prepare's unusable() made sure
    sender = msg.from_.address
    agent_powers = _agent_powers(session, msg, prepared, ctx, events)
    views: dict[int, TicketView | None] = {}

    def get_ticket(ticket_id: int) -> TicketView | None:
        if ticket_id not in views:
            views[ticket_id] = queries.thread_view(session, ticket_id)
        return views[ticket_id]

    def is_agent(address: str) -> bool:
        return agent_powers if address == sender else queries.is_agent_address(session, address)

    match = _bounce_match(session, prepared.verdict) or match_thread(
        msg,
        get_ticket=get_ticket,
        find_by_message_ids=lambda ids: queries.tickets_by_message_ids(
            session, [rows.storable_id(i) for i in ids]
        ),
        is_agent=is_agent,
        policy=ctx.policy,
        tag_prefix=ctx.tag_prefix,
        verify_signed_id=ctx.verify_signed_id,
    )
    # An agent's mail: commands, note or reply; or a customer's mail forwarded on their behalf.
    block = prepared.commands if agent_powers else None
    to_note = agent_powers and _addressed_to(msg, origin, ctx.note_address)
    forwarded = None
    if agent_powers and match.is_new and block is not None and not (block.is_note or to_note):
        forwarded = prepared.forwarded
    effective = _on_behalf(msg, forwarded) if forwarded is not None else msg
    assert effective.from_ is not None
    return _Route(
        sender=sender,
        agent_powers=agent_powers,
        match=match,
        view=get_ticket(match.ticket_id) if match.ticket_id is not None else None,
        block=block,
        to_note=to_note,
        forwarded=forwarded,
        effective=effective,
        author=effective.from_.address,
    )


def _place(
    session: Session, route: _Route, origin: Origin, ctx: IngestContext, now: datetime
) -> _Place:
    view = route.view
    if view is not None:
        return _Place(view.id, view.requester, view.participants, OutcomeKind.REPLY)
    team = ctx.mailbox_teams.get(origin.mailbox or "")
    opened = _open_ticket(session, route.effective, route.author, now, ctx, team)
    return _Place(opened.view.id, route.author, frozenset(), OutcomeKind.NEW_TICKET, opened)


def _ticket_changes(
    session: Session,
    route: _Route,
    place: _Place,
    verdict: Verdict,
    row_id: int,
    now: datetime,
) -> list[dict[str, object]]:
    """What the mail does to its ticket's status and timestamps, as events."""
    ticket_id, sender, view = place.ticket_id, route.sender, route.view
    conn = session.connection()
    events = []
    if route.forwarded is not None:
        events.append(rows.event(ticket_id, row_id, sender, "ticket.opened_on_behalf",
                                 {"requester": route.author, "found": route.forwarded.how},
                                 now))
    # Only a person reopens a ticket: an out-of-office answering our
    # resolution notice must not; nor does an agent's note.
    reopen = route.match.reopen and not verdict.automated and not route.working
    # A ticket waiting for its requester goes back into the queue when the
    # requester (or someone copied) answers; an agent's mail does not.
    answered = not verdict.automated and not route.agent_powers
    if view is not None and ((reopen and view.status in _FINISHED)
                             or (answered and view.status is TicketStatus.PENDING)):
        rows.REOPEN_TICKET.execute(conn, {"ticket_id": ticket_id, "now": now})
        queries.expire_ticket(session, ticket_id)
        events.append(
            rows.event(ticket_id, row_id, sender, "status.changed",
                       {"from": view.status.value, "to": TicketStatus.OPEN.value,
                        "reason": "new mail from " + sender}, now)
        )
    elif view is not None:
        rows.TOUCH_TICKET.execute(conn, {"ticket_id": ticket_id, "now": now})
        queries.expire_ticket(session, ticket_id)
    if verdict.automated:
        events.append(rows.event(ticket_id, row_id, "system", "message.classified",
                                 {"class": verdict.mail_class.value,
                                  "reasons": list(verdict.reasons)}, now))
    return events


def _with_payloads(raw: bytes, *messages: ParsedMessage) -> tuple[ParsedMessage, ...]:
    """`messages` with every detached attachment decoded from `raw`, each once."""
    decoded: dict[int, AttachmentPart] = {}

    def one(part: AttachmentPart) -> AttachmentPart:
        if not part.detached:
            return part
        if id(part) not in decoded:
            decoded[id(part)] = attach(part, raw)
        return decoded[id(part)]

    return tuple(
        dataclasses.replace(msg, attachments=tuple(map(one, msg.attachments)))
        if any(part.detached for part in msg.attachments) else msg
        for msg in messages
    )


def _agent_powers(
    session: Session,
    msg: ParsedMessage,
    prepared: Prepared,
    ctx: IngestContext,
    events: list[dict[str, object]],
) -> bool:
    """Whether this mail may act as an agent: an agent's address, and trusted (`ctx.trust`)."""
    assert msg.from_ is not None
    if prepared.verdict.automated or not queries.is_agent_address(session, msg.from_.address):
        return False
    if msg.sender_source != "from":
        trust = TrustVerdict(False, f"the sender comes from {msg.sender_source or 'nowhere'}, "
                                    "not from From")
    else:
        trust = prepared.trust or agent_trust(msg, ctx.trust)
    if not trust.trusted:
        # From addresses are forgeable: without proof this is a customer's mail.
        events.append({"actor": "system", "kind": "agent.untrusted",
                       "detail": {"from": msg.from_.address, "reason": trust.reason},
                       "created_at": ctx.clock()})
        log.info("agent.untrusted", sender=msg.from_.address, message_id=msg.message_id,
                 reason=trust.reason)
    return trust.trusted


def _addressed_to(msg: ParsedMessage, origin: Origin, address: str | None) -> bool:
    if not address:
        return False
    wanted = address.lower()
    recipients = [a.address for a in (*msg.to, *msg.cc)]
    if origin.recipient:
        recipients.append(origin.recipient.lower())
    return wanted in recipients


def _on_behalf(msg: ParsedMessage, forwarded: ForwardedMail) -> ParsedMessage:
    """The customer's mail inside an agent's forward, as if the customer had sent it."""
    return dataclasses.replace(
        msg,
        from_=forwarded.sender,
        subject=forwarded.subject or msg.subject,
        date=forwarded.date or msg.date,
        text=forwarded.text,
        new_text=forwarded.text,
        quoted_text="",
        attachments=forwarded.attachments or msg.attachments,
        to=(),
        cc=(),
        in_reply_to=(),
        references=(),
    )


def _bounce_match(session: Session, verdict: Verdict) -> ThreadMatch | None:
    """A bounce of one of our mails belongs to that mail's ticket, whatever its subject."""
    report = verdict.bounce
    if report is None or not report.original_message_id:
        return None
    hits = queries.tickets_by_message_ids(session, [rows.storable_id(report.original_message_id)])
    ticket_id = next(iter(hits.values()), None)
    return ThreadMatch(ticket_id, ThreadReason.REFERENCES) if ticket_id is not None else None


def _message_kind(verdict: Verdict) -> MessageKind:
    if verdict.mail_class in (MailClass.BOUNCE, MailClass.OWN):
        return MessageKind.SYSTEM
    if verdict.mail_class is MailClass.AUTO_REPLY:
        return MessageKind.AUTO_REPLY
    return MessageKind.CUSTOMER


def _record_participants(
    session: Session, route: _Route, place: _Place, msg: ParsedMessage, ctx: IngestContext
) -> frozenset[str]:
    """Record the writer and whom they copied on the ticket; returns their addresses."""
    assert msg.from_ is not None
    if route.author == place.requester:
        role = "requester"
    else:
        role = "agent" if route.agent_powers else "cc"
    people = [(msg.from_.address, role)]
    # Everyone the sender copied may answer on this ticket without tripping
    # the foreign-tag guard; our own addresses are not participants.
    people += [
        (a.address, "cc") for a in (*msg.to, *msg.cc)
        if a.address and not ctx.is_own_address(a.address)
    ]
    if route.forwarded is not None:
        people.append((route.sender, "agent"))
    new = [(address, role) for address, role in people if address not in place.known]
    queries.add_participants(session, place.ticket_id, new)
    return frozenset(address for address, _role in people)


def _run_rules(
    session: Session,
    place: _Place,
    participants: frozenset[str],
    row_id: int,
    msg: ParsedMessage,
    prepared: Prepared,
    origin: Origin,
    correlation_id: str,
    ctx: IngestContext,
    now: datetime,
    pending: list[dict[str, object]],
    *,
    guard_actions: bool,
) -> tuple[tuple[str, ...], Applied]:
    """Evaluate the rules and apply what fired; `pending`: the mail's events, not yet written."""
    assert ctx.rules is not None
    assert ctx.actions is not None
    verdict = prepared.verdict
    if not ctx.rules.rules:
        # No rule can fire: skip reading the ticket and the actions' savepoint,
        # which cost a few milliseconds a mail (issue 13).
        return (), Applied()
    ticket_id = place.ticket_id
    state = _ticket_state(session, place, participants)
    recipients = (origin.recipient,) if origin.recipient else ()
    rule_input = RuleInput(mailbox=origin.mailbox, recipients=recipients,
                           is_new=place.kind is OutcomeKind.NEW_TICKET, verdict=verdict)
    evaluation = evaluate(ctx.rules, msg, state.view, rule_input, now=now,
                          searched=prepared.searched)
    if not evaluation.fired and not any(regex_timed_out(t.reasons) for t in evaluation.trace):
        return (), Applied()  # nothing to apply, and nothing to report
    if pending and any(isinstance(action, SetStatus) for action in evaluation.actions):
        # A status change writes its event at once (tickets.change_status, shared by
        # every path): the mail's own events come first in the ticket's history.
        rows.INSERT_EVENT.executemany(session.connection(), pending)
        pending.clear()

    def apply() -> Applied:
        assert ctx.actions is not None
        return apply_actions(
            session, ticket_id=ticket_id, message_row_id=row_id, msg=msg, verdict=verdict,
            evaluation=evaluation, ctx=ctx.actions, now=now, correlation_id=correlation_id,
            state=state,
        )

    if not guard_actions:
        return evaluation.fired, apply()
    try:
        with session.begin_nested():
            applied = apply()
    except Exception as exc:
        if isinstance(exc, DBAPIError) and is_outage(exc):
            raise
        log.exception("actions.failed", ticket_id=ticket_id)
        failed = rows.event(ticket_id, row_id, "system", "actions.failed",
                            {"error": f"{type(exc).__name__}: {exc}",
                             "rules": list(evaluation.fired)}, now)
        return evaluation.fired, Applied(events=[failed])
    return evaluation.fired, applied


def _ticket_state(session: Session, place: _Place,
                  participants: frozenset[str]) -> queries.TicketState:
    """The mail's ticket as rules see it."""
    # A ticket this mail opened is known without a query; another one is read
    # by Core (the ORM's load and unit of work cost milliseconds a mail).
    if place.opened is not None:
        return dataclasses.replace(
            place.opened, view=dataclasses.replace(place.opened.view, participants=participants))
    found = queries.ticket_state(session, place.ticket_id, participants)
    assert found is not None  # threading found it in this transaction
    return found


def _open_ticket(
    session: Session,
    msg: ParsedMessage,
    sender: str,
    now: datetime,
    ctx: IngestContext,
    team: str | None,
) -> queries.TicketState:
    assert msg.from_ is not None
    requester_id, requester_name = queries.contact(session, sender, msg.from_.name[:200], now)
    team_row = queries.known_team(session, team) if team else None
    values = {
        "team_id": team_row.id if team_row is not None else None,
        "subject": clean_subject(msg.subject, ctx.tag_prefix),
        "status": TicketStatus.NEW.value,
        "priority": Priority.NORMAL.value,
        "requester_id": requester_id,
        "created_at": now,
        "updated_at": now,
    }
    ticket_id = int(rows.INSERT_TICKET.scalar_one(session.connection(), values))
    view = TicketView(id=ticket_id, status=TicketStatus.NEW, subject=str(values["subject"]),
                      requester=sender, team=team_row.name if team_row is not None else None)
    return queries.TicketState(view, now, requester_name, team_row.id if team_row else None,
                               None, fresh=True)
