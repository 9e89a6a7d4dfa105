"""Quarantine: mail that could not be ingested is kept, with its error, for a retry.

Nothing is ever dropped by the machine. The same bytes quarantined twice (a
redelivery of a poison message) make one row whose `retries` counts the
attempts. Only a person ends a held item: a retry that ingests it
(``resolved``), a corrected copy ingested in its place (``released``, linked
to the message it became), or a decision that it is not wanted
(``discarded``, with who and when; `purge` deletes discarded items after a
while, never held ones).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from helpdesk.errors import InvalidInput, NotFound
from helpdesk.store import queries
from helpdesk.store.models import Event, QuarantineItem, utcnow
from helpdesk.values import QUARANTINE_HELD, QUARANTINE_STATES, Origin, ParsedMessage

HELD = QUARANTINE_HELD
STATES = QUARANTINE_STATES


def quarantine(
    session: Session,
    raw: bytes,
    origin: Origin,
    error: str,
    *,
    detail: str = "",
    msg: ParsedMessage | None = None,
) -> QuarantineItem:
    """Keep `raw` with the reason it could not be ingested; returns the (possibly existing) row."""
    digest = hashlib.sha256(raw).hexdigest()
    existing = queries.held_quarantine_by_hash(session, digest)
    if existing is not None:
        existing.error = error
        existing.detail = detail
        existing.retries += 1
        session.flush()
        return existing
    item = QuarantineItem(
        created_at=utcnow(),
        error=error,
        detail=detail,
        raw=raw,
        size=len(raw),
        content_sha256=digest,
        subject=(msg.subject if msg else "")[:500],
        from_address=(msg.from_.address if msg and msg.from_ else "")[:320],
        state="held",
        origin_source=origin.source,
        origin_mailbox=origin.mailbox,
        origin_uidvalidity=origin.uidvalidity,
        origin_uid=origin.uid,
        origin_path=origin.path,
    )
    session.add(item)
    session.flush()
    return item


def get(session: Session, item_id: int) -> QuarantineItem:
    """The quarantined item `item_id`, or NotFound."""
    item = session.get(QuarantineItem, item_id)
    if item is None:
        raise NotFound("quarantined message", item_id)
    return item


def retry_origin(item: QuarantineItem) -> Origin:
    """The origin a retried (or released) item is ingested under: its own, so dedupe still works.

    A released copy takes the held one's place: if the server copy it came
    from is fetched again, it is recognised as the message already stored.
    """
    _must_be_held(item)
    return Origin(
        source=item.origin_source or "retry",
        mailbox=item.origin_mailbox,
        uidvalidity=item.origin_uidvalidity,
        uid=item.origin_uid,
        path=item.origin_path,
    )


def mark_resolved(item: QuarantineItem, ticket_id: int | None) -> None:
    """Record that a retry ingested the item."""
    item.state = "resolved"
    item.resolved_ticket_id = ticket_id


def _must_be_held(item: QuarantineItem) -> None:
    if item.state != HELD:
        raise InvalidInput(f"quarantined message {item.id} is already {item.state}")


def discard(
    session: Session, item_id: int, *, by: str, note: str = "", now: datetime | None = None
) -> QuarantineItem:
    """Mark a held item as not wanted; it is kept (with who and when) until `purge`."""
    item = get(session, item_id)
    _must_be_held(item)
    item.state = "discarded"
    item.decided_by = by[:320]
    item.decided_at = now or utcnow()
    item.decision_note = note
    session.flush()
    return item


def mark_released(
    session: Session,
    item: QuarantineItem,
    *,
    ticket_id: int | None,
    message_row_id: int | None,
    by: str,
    source: str = "",
    now: datetime | None = None,
) -> None:
    """Record that a corrected copy of `item` was ingested in its place, linking the two.

    The ticket gets a `quarantine.released` event naming the held item, so the
    link reads both ways.
    """
    _must_be_held(item)
    item.state = "released"
    item.resolved_ticket_id = ticket_id
    item.released_message_row_id = message_row_id
    item.decided_by = by[:320]
    item.decided_at = now or utcnow()
    item.decision_note = f"released from {source}" if source else "released"
    if ticket_id is not None:
        session.add(Event(
            ticket_id=ticket_id,
            message_row_id=message_row_id,
            created_at=item.decided_at,
            actor=item.decided_by,
            kind="quarantine.released",
            detail={"quarantine_id": item.id, "file": source, "error": item.error},
        ))
    session.flush()


def purge(session: Session, *, older_than: timedelta, now: datetime | None = None) -> int:
    """Delete items discarded more than `older_than` ago; returns how many.

    Held items are never purged: nothing leaves the quarantine without a person's decision.
    """
    cutoff = (now or utcnow()) - older_than
    result = session.execute(
        delete(QuarantineItem).where(
            QuarantineItem.state == "discarded", QuarantineItem.decided_at < cutoff
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
