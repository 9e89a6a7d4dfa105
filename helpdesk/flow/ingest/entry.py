"""One mail, or a batch of them, from raw bytes to a stored entry, a duplicate or the quarantine."""

from __future__ import annotations

import traceback
from collections.abc import Sequence

import structlog
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from helpdesk.errors import StoreUnavailable
from helpdesk.flow import quarantine as quarantine_service
from helpdesk.flow.ingest.context import IngestContext
from helpdesk.flow.ingest.filing import file_message
from helpdesk.flow.ingest.rows import storable_id
from helpdesk.mail.prepare import Prepared, prepare_with
from helpdesk.store import batchreads, queries
from helpdesk.store.direct import written_later
from helpdesk.store.failures import is_outage
from helpdesk.values import IngestOutcome, Origin, OutcomeKind, ParsedMessage

__all__ = ["ingest", "ingest_batch", "log_ingested"]

log = structlog.get_logger()


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
    """Store prepared mails in the caller's transaction; a failing mail is quarantined alone.

    One mail's failure (data the database refuses, a bug) costs that mail
    alone: it is quarantined and the others are stored as if it had not been
    there. A failure of the store itself raises `StoreUnavailable`, and the
    caller's transaction, the whole batch, must not be committed or
    acknowledged.

    Stored optimistically: the whole batch in one savepoint first. A savepoint
    a mail costs two statements and a nested ORM transaction, about a tenth of
    the writer's time, and mails almost never fail here (the pure stage has
    quarantined the bad ones already). Only when a mail does fail is the
    batch's savepoint rolled back and the batch stored again, each mail in a
    savepoint of its own, so that the failing one is found and quarantined.
    """
    if len(items) > 1:
        stored = _all_in_one_savepoint(session, items, ctx)
        if stored is not None:
            return stored
    return [_one(session, raw, origin, prepared, ctx) for raw, origin, prepared in items]


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


def _all_in_one_savepoint(
    session: Session, items: Sequence[tuple[bytes, Origin, Prepared]], ctx: IngestContext
) -> list[IngestOutcome] | None:
    """Every mail of the batch in one savepoint; None (and nothing kept) if any mail fails."""
    try:
        with session.begin_nested():
            conn = session.connection()
            ahead = batchreads.read_ahead(conn, _wanted(items, ctx))
            # Writes go with the next read (PostgreSQL): a round trip each cost more
            # than the statements; a failing one splits the batch like any failure.
            with batchreads.kept(session, ahead), written_later(conn):
                return [_ingest(session, raw, origin, prepared, ctx, guard_actions=False)
                        for raw, origin, prepared in items]
    except DBAPIError as exc:
        if is_outage(exc):
            raise StoreUnavailable(f"database error: {exc.orig}") from exc
        error = f"{type(exc).__name__}: {_first_line(exc.orig)}"
    except Exception as exc:  # noqa: BLE001 - the pass a savepoint a mail finds and reports it
        error = f"{type(exc).__name__}: {_first_line(exc)}"
    log.info("ingest.batch_split", mails=len(items), error=error)
    return None


def _wanted(
    items: Sequence[tuple[bytes, Origin, Prepared]], ctx: IngestContext
) -> batchreads.Wanted:
    """What `_ingest` will look up for these mails: copies, threads, senders and guards."""
    message_ids: set[str] = set()
    origins: set[batchreads.ServerCopy] = set()
    addresses: set[str] = set()
    for _raw, origin, prepared in items:
        key = batchreads.origin_key(origin)
        if key is not None:
            origins.add(key)
        msg = prepared.msg
        if prepared.problem or msg is None:
            continue
        message_ids.add(storable_id(msg.message_id))
        message_ids.update(storable_id(answered) for answered in msg.thread_ids)
        bounce = prepared.verdict.bounce
        if bounce is not None and bounce.original_message_id:
            message_ids.add(storable_id(bounce.original_message_id))
        if msg.from_ is not None:
            addresses.add(msg.from_.address)
    # The oldest automatic reply the rate limit can count while the batch is filed.
    since = ctx.clock() - ctx.actions.auto_reply_window if ctx.actions is not None else None
    return batchreads.Wanted(frozenset(message_ids), frozenset(origins), frozenset(addresses),
                             since)


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
        known = _stored_meanwhile(session, prepared) if isinstance(exc, IntegrityError) else None
        if known is not None:
            return _duplicate(known)
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


def _ingest(
    session: Session, raw: bytes, origin: Origin, prepared: Prepared, ctx: IngestContext,
    *, guard_actions: bool = True,
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

    message_id = storable_id(msg.message_id)
    known = queries.message_by_content(session, message_id, msg.content_hash)
    if known is not None:
        return _duplicate(known)
    return file_message(session, raw, origin, msg, message_id, prepared, ctx,
                        guard_actions=guard_actions)


def _stored_meanwhile(session: Session, prepared: Prepared) -> queries.StoredRef | None:
    """After a unique violation: the copy another daemon stored while we filed the same mail.

    Two daemons raced on the same mail: the unique (message_id, content)
    constraint lets exactly one of them win, and the other reports a duplicate.
    (One savepoint per mail, not two: the mail's own is rolled back by then.)
    """
    msg = prepared.msg
    if msg is None:
        return None
    return queries.message_by_content(session, storable_id(msg.message_id), msg.content_hash)


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
