"""Ingest: one raw message becomes one ticket entry, inside the caller's transaction.

`ingest()` parses, dedupes, threads and stores: the raw bytes, the ticket
change, the participants and the audit events, all in the session the caller
opened, so that they commit together (design.md §1). It never raises for bad
input: what cannot be parsed or stored is quarantined with its error. It does
raise `StoreUnavailable` when the database itself fails (locked, gone), so that
the caller leaves the message unacknowledged and retries later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import bindparam, insert, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from helpdesk import agentmail, bounces, notify
from helpdesk import quarantine as quarantine_service
from helpdesk.actions import ActionContext, Applied, apply_actions
from helpdesk.errors import StoreUnavailable
from helpdesk.mail.forwarded import ForwardedMail
from helpdesk.mail.parse import parse as parse_message
from helpdesk.mail.prepare import PrepareConfig, Prepared, prepare_with
from helpdesk.mail.trust import TrustPolicy, TrustVerdict, agent_trust
from helpdesk.rules import RuleSet, evaluate
from helpdesk.rules.regexes import regex_timed_out
from helpdesk.store import queries
from helpdesk.store.failures import is_outage
from helpdesk.store.models import Attachment, Event, Message, Ticket, table, utcnow
from helpdesk.thread import ThreadPolicy, clean_subject, match_thread
from helpdesk.values import (
    AttachmentPart,
    Direction,
    IngestOutcome,
    MailClass,
    MessageKind,
    Origin,
    OutcomeKind,
    ParsedMessage,
    RuleInput,
    ThreadMatch,
    ThreadReason,
    TicketStatus,
    TicketView,
    Verdict,
)

log = structlog.get_logger()

# Message-IDs longer than this are stored as a digest: some mailers produce
# kilobyte-long ids, and an index entry must stay well under PostgreSQL's limit.
MAX_MESSAGE_ID = 500


@dataclass(frozen=True)
class IngestContext:
    """What ingest needs to know about this help desk; built once from settings."""

    tag_prefix: str = "#"
    policy: ThreadPolicy = field(default_factory=ThreadPolicy)
    is_own_address: Callable[[str], bool] = lambda _address: False
    parse: Callable[[bytes], ParsedMessage] = parse_message
    clock: Callable[[], datetime] = utcnow
    # Our X-Loop value (the support address): mail carrying it is our own.
    loop_id: str = ""
    # The ticket a Message-ID we signed belongs to; None for others and forgeries.
    verify_signed_id: Callable[[str], int | None] = lambda _message_id: None
    # Rules and what their actions need; None: store and thread only.
    rules: RuleSet | None = None
    actions: ActionContext | None = None
    # The team a new ticket from a mailbox starts with ([[mailbox]] team).
    mailbox_teams: Mapping[str, str] = field(default_factory=dict)
    # No automatic mail to an address that bounced permanently, for this long.
    bounce_suppression: timedelta = timedelta(days=7)
    # What makes mail from an agent's address the agent's ([security]); by
    # default nothing does: agent powers by mail are off (helpdesk.mail.trust).
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    # Mail from an agent to this address is an internal note.
    note_address: str | None = None
    # Tell the assignee (or the team) about customer replies.
    notify: bool = True
    # The same knowledge as plain data, for the pure stage in worker processes.
    prepare: PrepareConfig = field(default_factory=PrepareConfig)


def ingest(session: Session, raw: bytes, origin: Origin, ctx: IngestContext) -> IngestOutcome:
    """Store `raw` as exactly one ticket entry, or as a duplicate of one, or in quarantine.

    The pure stage runs here, in this process and without a time limit: the
    daemon and the CLI run it in worker processes instead (`helpdesk.intake`)
    and call `ingest_batch`. Raises `StoreUnavailable` when the store fails.
    """
    prepared = prepare_with(raw, parse=ctx.parse, is_own_address=ctx.is_own_address,
                            loop_id=ctx.loop_id, trust=ctx.trust)
    return ingest_batch(session, [(raw, origin, prepared)], ctx)[0]


def ingest_batch(
    session: Session, items: Sequence[tuple[bytes, Origin, Prepared]], ctx: IngestContext
) -> list[IngestOutcome]:
    """Store prepared mails in the caller's transaction, each in a savepoint of its own.

    One mail's failure (data the database refuses, a bug) rolls back that
    mail's savepoint and quarantines it; the others are unaffected. A failure
    of the store itself raises `StoreUnavailable`, and the caller's
    transaction, the whole batch, must not be committed or acknowledged.
    """
    return [_one(session, raw, origin, prepared, ctx) for raw, origin, prepared in items]


def _one(
    session: Session, raw: bytes, origin: Origin, prepared: Prepared, ctx: IngestContext
) -> IngestOutcome:
    detail = ""
    try:
        with session.begin_nested():
            return _ingest(session, raw, origin, prepared, ctx)
    except DBAPIError as exc:
        if is_outage(exc):
            raise StoreUnavailable(f"database error: {exc.orig}") from exc
        # The database refused this mail's data (a value too long for an
        # index, bytes it cannot hold, too many ids): the mail's problem.
        error = f"could not be stored: {_first_line(exc.orig)}"
        detail = traceback.format_exc(limit=8)
    except Exception as exc:
        # Our bug, not the mail's fault; but keeping the mail with the
        # traceback lets the others go on and an admin retry it once fixed.
        log.exception("ingest.failed", message_id=prepared.msg.message_id if prepared.msg
                      else None, mailbox=origin.mailbox, uid=origin.uid)
        error = f"internal error while storing: {type(exc).__name__}: {exc}"
        detail = traceback.format_exc(limit=8)
    try:
        with session.begin_nested():
            return _quarantine(session, raw, origin, error, prepared.msg, detail)
    except DBAPIError as exc:
        if is_outage(exc):
            raise StoreUnavailable(f"database error: {exc.orig}") from exc
    # Even the mail's decoded subject and sender were refused: keep the bytes alone.
    with session.begin_nested():
        return _quarantine(session, raw, origin, error, None, detail)


def _first_line(value: object) -> str:
    return str(value).strip().split("\n", 1)[0][:500]


def log_ingested(outcome: IngestOutcome, origin: Origin, *, size: int, seconds: float) -> None:
    """The `message.ingested` line, written by the caller once the transaction committed."""
    log.info(
        "message.ingested",
        outcome=outcome.kind.value,
        ticket_id=outcome.ticket_id,
        message_id=outcome.message_id,
        quarantine_id=outcome.quarantine_id,
        error=outcome.error,
        mail_class=outcome.mail_class,
        rules_fired=list(outcome.rules_fired),
        mails_queued=list(outcome.mails_queued),
        suppressed=list(outcome.suppressed),
        source=origin.source,
        mailbox=origin.mailbox,
        uid=origin.uid,
        path=origin.path,
        size=size,
        duration_ms=round(seconds * 1000, 2),
    )


def _ingest(
    session: Session, raw: bytes, origin: Origin, prepared: Prepared, ctx: IngestContext
) -> IngestOutcome:
    # The cheapest check first: this exact server copy was stored before a crash
    # stopped us from moving it on the server.
    known = queries.message_by_origin(session, origin)
    if known is not None:
        return _duplicate(known)
    msg = prepared.msg
    if prepared.problem or msg is None:
        problem = prepared.problem or "not an e-mail message"
        return _quarantine(session, raw, origin, problem, msg, prepared.detail)

    message_id = _storable_id(msg.message_id)
    known = queries.message_by_content(session, message_id, msg.content_hash)
    if known is not None:
        return _duplicate(known)

    try:
        with session.begin_nested():
            return _store(session, raw, origin, msg, message_id, prepared, ctx)
    except IntegrityError:
        # Two daemons raced on the same mail: the unique (message_id, content)
        # constraint lets exactly one of them win.
        known = queries.message_by_content(session, message_id, msg.content_hash)
        if known is not None:
            return _duplicate(known)
        raise


def _storable_id(message_id: str) -> str:
    if len(message_id) <= MAX_MESSAGE_ID:
        return message_id
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{digest}@long-id.helpdesk.invalid"


def _duplicate(known: queries.StoredRef) -> IngestOutcome:
    return IngestOutcome(
        OutcomeKind.DUPLICATE,
        ticket_id=known.ticket_id,
        message_row_id=known.id,
        message_id=known.message_id,
    )


def _quarantine(
    session: Session,
    raw: bytes,
    origin: Origin,
    error: str,
    msg: ParsedMessage | None,
    detail: str = "",
) -> IngestOutcome:
    item = quarantine_service.quarantine(session, raw, origin, error, detail=detail, msg=msg)
    return IngestOutcome(
        OutcomeKind.QUARANTINED,
        quarantine_id=item.id,
        message_id=msg.message_id if msg else None,
        error=error,
    )


# The write path runs once per message, so it uses prebuilt Core statements:
# the ORM's unit of work cost about 2 ms a message here, several times the SQL.
_TICKETS = table(Ticket)
_MESSAGES = table(Message)
_INSERT_TICKET = insert(_TICKETS).returning(_TICKETS.c.id)
_INSERT_MESSAGE = insert(_MESSAGES).returning(_MESSAGES.c.id)
_INSERT_ATTACHMENT = insert(table(Attachment))
_INSERT_EVENT = insert(table(Event))
_TOUCH_TICKET = (
    update(_TICKETS)
    .where(_TICKETS.c.id == bindparam("ticket_id"))
    .values(updated_at=bindparam("now"))
)
_REOPEN_TICKET = (
    update(_TICKETS)
    .where(_TICKETS.c.id == bindparam("ticket_id"))
    .values(status=TicketStatus.OPEN.value, resolved_at=None, updated_at=bindparam("now"))
)


def _store(
    session: Session,
    raw: bytes,
    origin: Origin,
    msg: ParsedMessage,
    message_id: str,
    prepared: Prepared,
    ctx: IngestContext,
) -> IngestOutcome:
    now = ctx.clock()
    verdict = prepared.verdict
    assert msg.from_ is not None  # prepare's unusable() made sure
    sender = msg.from_.address
    events: list[dict[str, object]] = []
    agent_powers = _agent_powers(session, msg, prepared, ctx, events)
    views: dict[int, TicketView | None] = {}

    def get_ticket(ticket_id: int) -> TicketView | None:
        if ticket_id not in views:
            views[ticket_id] = queries.thread_view(session, ticket_id)
        return views[ticket_id]

    def is_agent(address: str) -> bool:
        return agent_powers if address == sender else queries.is_agent_address(session, address)

    match = _bounce_match(session, verdict) or match_thread(
        msg,
        get_ticket=get_ticket,
        find_by_message_ids=lambda ids: queries.tickets_by_message_ids(
            session, [_storable_id(i) for i in ids]
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
    author = effective.from_.address  # the requester's address for a forward on behalf

    conn = session.connection()
    view = get_ticket(match.ticket_id) if match.ticket_id is not None else None
    if view is None:
        team = ctx.mailbox_teams.get(origin.mailbox or "")
        ticket_id = _open_ticket(session, effective, author, now, ctx, team)
        requester: str | None = author
        known: frozenset[str] = frozenset()
        kind = OutcomeKind.NEW_TICKET
    else:
        ticket_id, requester, known = view.id, view.requester, view.participants
        kind = OutcomeKind.REPLY

    working = agent_powers and view is not None and block is not None
    if working:
        assert block is not None
        message_kind = agentmail.classify_agent_mail(block, to_note)
        effective = dataclasses.replace(msg, new_text=block.remaining)
    else:
        message_kind = _message_kind(verdict, False)
    # The unique (message_id, content) constraint speaks here, inside the savepoint.
    row_id = conn.execute(
        _INSERT_MESSAGE,
        _message_values(effective, raw, origin, message_id, ticket_id, message_kind, verdict,
                        now),
    ).scalar_one()
    if effective.attachments:
        conn.execute(_INSERT_ATTACHMENT,
                     [_attachment_values(row_id, a) for a in effective.attachments])

    if not verdict.automated:
        role = "requester" if author == requester else ("agent" if agent_powers else "cc")
        _record_participants(session, ticket_id, effective, role, known, ctx)
        if forwarded is not None:
            queries.add_participants(session, ticket_id, [(sender, "agent")])
    events = _events(ticket_id, row_id, message_id, effective, match, kind, author, now) + [
        {**e, "ticket_id": ticket_id, "message_row_id": row_id} for e in events
    ]
    if forwarded is not None:
        events.append(_event(ticket_id, row_id, sender, "ticket.opened_on_behalf",
                             {"requester": author, "found": forwarded.how},
                             now))
    # Only a person reopens a ticket: an out-of-office answering our
    # resolution notice must not; nor does an agent's note.
    reopen = match.reopen and not verdict.automated and not working
    finished = (TicketStatus.RESOLVED, TicketStatus.CLOSED)
    # A ticket waiting for its requester goes back into the queue when the
    # requester (or someone copied) answers; an agent's mail does not.
    answered = not verdict.automated and not agent_powers
    if view is not None and ((reopen and view.status in finished)
                             or (answered and view.status is TicketStatus.PENDING)):
        conn.execute(_REOPEN_TICKET, {"ticket_id": ticket_id, "now": now})
        events.append(
            _event(ticket_id, row_id, sender, "status.changed",
                   {"from": view.status.value, "to": TicketStatus.OPEN.value,
                    "reason": "new mail from " + sender}, now)
        )
    elif view is not None:
        conn.execute(_TOUCH_TICKET, {"ticket_id": ticket_id, "now": now})
    if verdict.automated:
        events.append(_event(ticket_id, row_id, "system", "message.classified",
                             {"class": verdict.mail_class.value,
                              "reasons": list(verdict.reasons)}, now))
    if verdict.bounce is not None:
        events += bounces.record(session, verdict.bounce, ticket_id=ticket_id,
                                 message_row_id=row_id, now=now,
                                 suppress_for=ctx.bounce_suppression)
    conn.execute(_INSERT_EVENT, events)

    fired: tuple[str, ...] = ()
    applied = Applied()
    if working:
        assert block is not None
        agentmail.handle(session, ticket_id=ticket_id, message_row_id=row_id, msg=msg,
                         block=block, kind=message_kind, ctx=ctx.actions, now=now)
    elif ctx.rules is not None and ctx.actions is not None:
        fired, applied = _run_rules(session, ticket_id, row_id, effective, verdict, origin,
                                    kind is OutcomeKind.NEW_TICKET, message_id, ctx, now)
    if (kind is OutcomeKind.REPLY and not agent_powers and not verdict.automated
            and ctx.notify and ctx.actions is not None):
        to = notify.customer_replied(session, ticket_id=ticket_id, message_row_id=row_id,
                                     msg=msg, ctx=ctx.actions, now=now)
        if to:
            applied.mails.append(f"notify:{to}")
    return IngestOutcome(
        kind,
        ticket_id=ticket_id,
        message_row_id=row_id,
        message_id=message_id,
        notes=tuple(f"{n.kind}: {n.detail}" for n in match.notes),
        mail_class=verdict.mail_class.value,
        rules_fired=fired,
        mails_queued=tuple(applied.mails),
        suppressed=tuple(applied.suppressed),
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
    hits = queries.tickets_by_message_ids(session, [_storable_id(report.original_message_id)])
    ticket_id = next(iter(hits.values()), None)
    return ThreadMatch(ticket_id, ThreadReason.REFERENCES) if ticket_id is not None else None


def _message_kind(verdict: Verdict, sender_is_agent: bool) -> MessageKind:
    if verdict.mail_class in (MailClass.BOUNCE, MailClass.OWN):
        return MessageKind.SYSTEM
    if verdict.mail_class is MailClass.AUTO_REPLY:
        return MessageKind.AUTO_REPLY
    return MessageKind.AGENT_REPLY if sender_is_agent else MessageKind.CUSTOMER


def _run_rules(
    session: Session,
    ticket_id: int,
    row_id: int,
    msg: ParsedMessage,
    verdict: Verdict,
    origin: Origin,
    is_new: bool,
    correlation_id: str,
    ctx: IngestContext,
    now: datetime,
) -> tuple[tuple[str, ...], Applied]:
    assert ctx.rules is not None
    assert ctx.actions is not None
    if not ctx.rules.rules:
        # No rule can fire: skip loading the ticket and the actions' savepoint,
        # which cost a few milliseconds a mail (issue 13).
        return (), Applied()
    # Held here: the session's identity map keeps objects only while they are
    # referenced, and the actions below would otherwise load the ticket again.
    ticket = session.get_one(Ticket, ticket_id, options=queries.TICKET_WITH_RELATIONS)
    queries.hold(session, ticket)
    view = queries.view_of(ticket, queries.participants(session, ticket_id))
    recipients = (origin.recipient,) if origin.recipient else ()
    rule_input = RuleInput(mailbox=origin.mailbox, recipients=recipients, is_new=is_new,
                           verdict=verdict)
    evaluation = evaluate(ctx.rules, msg, view, rule_input, now=now)
    if not evaluation.fired and not any(regex_timed_out(t.reasons) for t in evaluation.trace):
        return (), Applied()  # nothing to apply, and nothing to report
    try:
        with session.begin_nested():
            applied = apply_actions(
                session, ticket_id=ticket_id, message_row_id=row_id, msg=msg, verdict=verdict,
                evaluation=evaluation, ctx=ctx.actions, now=now, correlation_id=correlation_id,
            )
    except Exception as exc:
        if isinstance(exc, DBAPIError) and is_outage(exc):
            raise
        log.exception("actions.failed", ticket_id=ticket_id)
        session.connection().execute(_INSERT_EVENT, [
            _event(ticket_id, row_id, "system", "actions.failed",
                   {"error": f"{type(exc).__name__}: {exc}", "rules": list(evaluation.fired)},
                   now)
        ])
        return evaluation.fired, Applied()
    return evaluation.fired, applied


def _open_ticket(
    session: Session,
    msg: ParsedMessage,
    sender: str,
    now: datetime,
    ctx: IngestContext,
    team: str | None,
) -> int:
    assert msg.from_ is not None
    requester_id = queries.contact_id(session, sender, msg.from_.name[:200], now)
    team_row = queries.known_team(session, team) if team else None
    values = {
        "team_id": team_row.id if team_row is not None else None,
        "subject": clean_subject(msg.subject, ctx.tag_prefix),
        "status": TicketStatus.NEW.value,
        "priority": "normal",
        "requester_id": requester_id,
        "created_at": now,
        "updated_at": now,
    }
    return int(session.connection().execute(_INSERT_TICKET, values).scalar_one())


def _message_values(
    msg: ParsedMessage,
    raw: bytes,
    origin: Origin,
    message_id: str,
    ticket_id: int,
    kind: MessageKind,
    verdict: Verdict,
    now: datetime,
) -> dict[str, object]:
    return {
        "mail_class": verdict.mail_class.value,
        "ticket_id": ticket_id,
        "direction": Direction.INCOMING.value,
        "kind": kind.value,
        "message_id": message_id,
        "message_id_synthetic": msg.message_id_synthetic,
        "content_hash": msg.content_hash,
        "in_reply_to": " ".join(msg.in_reply_to),
        "references": " ".join(msg.references),
        "from_address": msg.from_.address if msg.from_ else "",
        "from_name": (msg.from_.name if msg.from_ else "")[:200],
        "to_addresses": ", ".join(str(a) for a in msg.to),
        "cc_addresses": ", ".join(str(a) for a in msg.cc),
        "subject": msg.subject,
        "sent_at": msg.date,
        "received_at": now,
        "text": msg.text,
        "new_text": msg.new_text,
        "html": msg.html,
        "raw": raw,
        "size": len(raw),
        "defects": ", ".join(msg.defects),
        "thread_index": (msg.header("Thread-Index") or "").strip()[:999],
        "origin_source": origin.source,
        "origin_mailbox": origin.mailbox,
        "origin_uidvalidity": origin.uidvalidity,
        "origin_uid": origin.uid,
        "origin_path": origin.path,
    }


def _attachment_values(row_id: int, part: AttachmentPart) -> dict[str, object]:
    return {
        "message_id": row_id,
        "filename": part.filename,
        "content_type": part.content_type[:255],
        "size": part.size,
        "sha256": part.sha256,
        "inline": part.inline,
        "content_id": part.content_id,
        "content": part.content,
    }


def _record_participants(
    session: Session,
    ticket_id: int,
    msg: ParsedMessage,
    sender_role: str,
    known: frozenset[str],
    ctx: IngestContext,
) -> None:
    assert msg.from_ is not None
    people = [(msg.from_.address, sender_role)]
    # Everyone the sender copied may answer on this ticket without tripping
    # the foreign-tag guard; our own addresses are not participants.
    people += [
        (a.address, "cc") for a in (*msg.to, *msg.cc)
        if a.address and not ctx.is_own_address(a.address)
    ]
    new = [(address, role) for address, role in people if address not in known]
    queries.add_participants(session, ticket_id, new)


def _events(
    ticket_id: int,
    row_id: int,
    message_id: str,
    msg: ParsedMessage,
    match: ThreadMatch,
    kind: OutcomeKind,
    sender: str,
    now: datetime,
) -> list[dict[str, object]]:
    events = []
    if kind is OutcomeKind.NEW_TICKET:
        detail: dict[str, object] = {"message_id": message_id, "subject": msg.subject}
        if match.related_ticket_id is not None:
            detail["related_ticket_id"] = match.related_ticket_id
        events.append(_event(ticket_id, row_id, sender, "ticket.created", detail, now))
    else:
        detail = {"message_id": message_id, "matched_by": match.reason.value}
        events.append(_event(ticket_id, row_id, sender, "message.added", detail, now))
    for note in match.notes:
        detail = {"detail": note.detail, "message_id": message_id, "ticket_id": ticket_id}
        events.append(_event(ticket_id, row_id, "system", f"thread.{note.kind}", detail, now))
        # The ticket a stranger's tag pointed at gets the warning too, so its
        # agents see that someone tried to write into it. Notes only ever name
        # tickets that threading found, so the row exists.
        if note.ticket_id != ticket_id and note.kind != "unknown_tag":
            events.append(
                _event(note.ticket_id, None, "system", f"thread.{note.kind}", detail, now)
            )
    if msg.defects:
        detail = {"defects": list(msg.defects)}
        events.append(_event(ticket_id, row_id, "system", "message.defects", detail, now))
    return events


def _event(
    ticket_id: int,
    message_row_id: int | None,
    actor: str,
    kind: str,
    detail: dict[str, object],
    now: datetime,
) -> dict[str, object]:
    return {
        "ticket_id": ticket_id,
        "message_row_id": message_row_id,
        "actor": actor,
        "kind": kind,
        "detail": detail,
        "created_at": now,
    }
