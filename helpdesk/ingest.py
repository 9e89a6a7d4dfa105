"""Ingest: one raw message becomes one ticket entry, inside the caller's transaction.

`ingest()` parses, dedupes, threads and stores: the raw bytes, the ticket
change, the participants and the audit events, all in the session the caller
opened, so that they commit together (design.md §1). It never raises for bad
input: what cannot be parsed or stored is quarantined with its error. It does
raise `StoreUnavailable` when the database itself fails (locked, gone), so that
the caller leaves the message unacknowledged and retries later.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from helpdesk import quarantine as quarantine_service
from helpdesk.errors import StoreUnavailable
from helpdesk.mail.parse import parse as parse_message
from helpdesk.store import queries
from helpdesk.store.models import Attachment, Event, Message, Ticket, utcnow
from helpdesk.thread import ThreadPolicy, clean_subject, match_thread
from helpdesk.values import (
    Direction,
    IngestOutcome,
    MessageKind,
    Origin,
    OutcomeKind,
    ParsedMessage,
    ThreadMatch,
    TicketStatus,
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


def ingest(session: Session, raw: bytes, origin: Origin, ctx: IngestContext) -> IngestOutcome:
    """Store `raw` as exactly one ticket entry, or as a duplicate of one, or in quarantine."""
    started = time.perf_counter()
    try:
        outcome = _ingest(session, raw, origin, ctx)
    except (OperationalError, InterfaceError) as exc:
        raise StoreUnavailable(f"database error: {exc.orig}") from exc
    log.info(
        "message.ingested",
        outcome=outcome.kind.value,
        ticket_id=outcome.ticket_id,
        message_id=outcome.message_id,
        quarantine_id=outcome.quarantine_id,
        error=outcome.error,
        source=origin.source,
        mailbox=origin.mailbox,
        uid=origin.uid,
        path=origin.path,
        size=len(raw),
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return outcome


def _ingest(session: Session, raw: bytes, origin: Origin, ctx: IngestContext) -> IngestOutcome:
    # The cheapest check first: this exact server copy was stored before a crash
    # stopped us from moving it on the server.
    known = queries.message_by_origin(session, origin)
    if known is not None:
        return _duplicate(known)

    try:
        msg = ctx.parse(raw)
    except Exception as exc:  # noqa: BLE001 - parse promises not to raise; if it does, keep the mail
        return _quarantine(session, raw, origin, f"parser failed: {exc!r}", None)

    problem = _unusable(msg)
    if problem:
        return _quarantine(session, raw, origin, problem, msg)

    message_id = _storable_id(msg.message_id)
    known = queries.message_by_content(session, message_id, msg.content_hash)
    if known is not None:
        return _duplicate(known)

    try:
        with session.begin_nested():
            return _store(session, raw, origin, msg, message_id, ctx)
    except IntegrityError as exc:
        # Two daemons raced on the same mail: the unique (message_id, content)
        # constraint lets exactly one of them win.
        known = queries.message_by_content(session, message_id, msg.content_hash)
        if known is not None:
            return _duplicate(known)
        return _quarantine(session, raw, origin, f"could not be stored: {exc.orig}", msg)
    except (OperationalError, InterfaceError):
        raise
    except (DBAPIError, ValueError, TypeError, OverflowError) as exc:
        # The database refused this mail's data (an encoding it cannot hold, a
        # value out of range): a property of the mail, so quarantine it.
        detail = traceback.format_exc(limit=8)
        return _quarantine(session, raw, origin, f"could not be stored: {exc}", msg, detail)


def _unusable(msg: ParsedMessage) -> str | None:
    """Why this parsed mail cannot become a ticket entry, or None."""
    if not msg.headers:
        defects = ", ".join(msg.defects) or "no header lines"
        return f"not an e-mail message: no headers found ({defects})"
    if msg.from_ is None or "@" not in msg.from_.address:
        raw_from = msg.header("From")
        shown = f"{raw_from!r}" if raw_from else "missing"
        return f"no usable sender address: From is {shown}"
    return None


def _storable_id(message_id: str) -> str:
    if len(message_id) <= MAX_MESSAGE_ID:
        return message_id
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{digest}@long-id.helpdesk.invalid"


def _duplicate(known: Message) -> IngestOutcome:
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


def _store(
    session: Session,
    raw: bytes,
    origin: Origin,
    msg: ParsedMessage,
    message_id: str,
    ctx: IngestContext,
) -> IngestOutcome:
    now = ctx.clock()
    assert msg.from_ is not None  # _unusable() made sure
    sender = msg.from_.address
    agent = queries.agent_by_address(session, sender)
    match = match_thread(
        msg,
        get_ticket=lambda ticket_id: queries.ticket_view(session, ticket_id),
        find_by_message_ids=lambda ids: queries.tickets_by_message_ids(
            session, [_storable_id(i) for i in ids]
        ),
        is_agent=lambda address: queries.agent_by_address(session, address) is not None,
        policy=ctx.policy,
        tag_prefix=ctx.tag_prefix,
    )

    if match.ticket_id is None:
        ticket = _open_ticket(session, msg, sender, now, ctx)
        kind = OutcomeKind.NEW_TICKET
    else:
        ticket = session.get_one(Ticket, match.ticket_id)
        kind = OutcomeKind.REPLY

    row = _message_row(msg, raw, origin, message_id, ticket.id, now)
    row.kind = MessageKind.AGENT_REPLY if agent is not None else MessageKind.CUSTOMER
    session.add(row)
    session.flush()  # the unique constraint speaks here, inside the savepoint

    _record_participants(session, ticket, msg, agent is not None, ctx)
    _record_events(session, ticket, row, msg, match, kind, sender, now)
    if match.reopen and ticket.status in (TicketStatus.RESOLVED, TicketStatus.CLOSED):
        _reopen(session, ticket, row, sender, now)
    ticket.updated_at = now
    session.flush()
    return IngestOutcome(
        kind,
        ticket_id=ticket.id,
        message_row_id=row.id,
        message_id=message_id,
        notes=tuple(f"{n.kind}: {n.detail}" for n in match.notes),
    )


def _open_ticket(
    session: Session, msg: ParsedMessage, sender: str, now: datetime, ctx: IngestContext
) -> Ticket:
    assert msg.from_ is not None
    requester = queries.get_or_create_contact(session, sender, msg.from_.name[:200])
    ticket = Ticket(
        subject=clean_subject(msg.subject, ctx.tag_prefix),
        status=TicketStatus.NEW,
        priority="normal",
        requester_id=requester.id,
        created_at=now,
        updated_at=now,
    )
    session.add(ticket)
    session.flush()
    return ticket


def _message_row(
    msg: ParsedMessage,
    raw: bytes,
    origin: Origin,
    message_id: str,
    ticket_id: int,
    now: datetime,
) -> Message:
    row = Message(
        ticket_id=ticket_id,
        direction=Direction.INCOMING,
        message_id=message_id,
        message_id_synthetic=msg.message_id_synthetic,
        content_hash=msg.content_hash,
        in_reply_to=" ".join(msg.in_reply_to),
        references=" ".join(msg.references),
        from_address=msg.from_.address if msg.from_ else "",
        from_name=(msg.from_.name if msg.from_ else "")[:200],
        to_addresses=", ".join(str(a) for a in msg.to),
        cc_addresses=", ".join(str(a) for a in msg.cc),
        subject=msg.subject,
        sent_at=msg.date,
        received_at=now,
        text=msg.text,
        new_text=msg.new_text,
        html=msg.html,
        raw=raw,
        size=len(raw),
        defects=", ".join(msg.defects),
        origin_source=origin.source,
        origin_mailbox=origin.mailbox,
        origin_uidvalidity=origin.uidvalidity,
        origin_uid=origin.uid,
        origin_path=origin.path,
    )
    row.attachments = [
        Attachment(
            filename=part.filename,
            content_type=part.content_type[:255],
            size=part.size,
            sha256=part.sha256,
            inline=part.inline,
            content_id=part.content_id,
            content=part.content,
        )
        for part in msg.attachments
    ]
    return row


def _record_participants(
    session: Session, ticket: Ticket, msg: ParsedMessage, from_agent: bool, ctx: IngestContext
) -> None:
    assert msg.from_ is not None
    is_requester = ticket.requester is not None and ticket.requester.address == msg.from_.address
    role = "requester" if is_requester else ("agent" if from_agent else "cc")
    queries.add_participant(session, ticket.id, msg.from_.address, role)
    # Everyone the sender copied may answer on this ticket without tripping
    # the foreign-tag guard; our own addresses are not participants.
    for address in (*msg.to, *msg.cc):
        if address.address and not ctx.is_own_address(address.address):
            queries.add_participant(session, ticket.id, address.address, "cc")


def _record_events(
    session: Session,
    ticket: Ticket,
    row: Message,
    msg: ParsedMessage,
    match: ThreadMatch,
    kind: OutcomeKind,
    sender: str,
    now: datetime,
) -> None:
    if kind is OutcomeKind.NEW_TICKET:
        detail: dict[str, object] = {"message_id": row.message_id, "subject": ticket.subject}
        if match.related_ticket_id is not None:
            detail["related_ticket_id"] = match.related_ticket_id
        session.add(_event(ticket.id, row.id, sender, "ticket.created", detail, now))
    else:
        session.add(
            _event(
                ticket.id,
                row.id,
                sender,
                "message.added",
                {"message_id": row.message_id, "matched_by": match.reason.value},
                now,
            )
        )
    for note in match.notes:
        detail = {"detail": note.detail, "message_id": row.message_id, "ticket_id": ticket.id}
        session.add(_event(ticket.id, row.id, "system", f"thread.{note.kind}", detail, now))
        # The ticket a stranger's tag pointed at gets the warning too, so its
        # agents see that someone tried to write into it.
        if note.ticket_id != ticket.id and _ticket_exists(session, note.ticket_id):
            session.add(
                _event(note.ticket_id, None, "system", f"thread.{note.kind}", detail, now)
            )
    if msg.defects:
        session.add(
            _event(ticket.id, row.id, "system", "message.defects", {"defects": list(msg.defects)},
                   now)
        )


def _ticket_exists(session: Session, ticket_id: int) -> bool:
    return session.get(Ticket, ticket_id) is not None


def _reopen(session: Session, ticket: Ticket, row: Message, sender: str, now: datetime) -> None:
    previous = ticket.status
    ticket.status = TicketStatus.OPEN
    ticket.resolved_at = None
    session.add(
        _event(
            ticket.id,
            row.id,
            sender,
            "status.changed",
            {"from": previous, "to": TicketStatus.OPEN.value, "reason": "new mail from " + sender},
            now,
        )
    )


def _event(
    ticket_id: int,
    message_row_id: int | None,
    actor: str,
    kind: str,
    detail: dict[str, object],
    now: datetime,
) -> Event:
    return Event(
        ticket_id=ticket_id,
        message_row_id=message_row_id,
        actor=actor,
        kind=kind,
        detail=detail,
        created_at=now,
    )
