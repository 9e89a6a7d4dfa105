"""Quarantine: mail that could not be ingested is kept, with its error, for a retry.

Nothing is ever dropped. The same bytes quarantined twice (a redelivery of a
poison message) make one row whose `retries` counts the attempts.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.errors import InvalidInput, NotFound
from helpdesk.store import queries
from helpdesk.store.models import QuarantineItem, utcnow
from helpdesk.values import Origin, ParsedMessage


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


def list_items(session: Session, *, state: str | None = "held", limit: int = 100) -> list[
    QuarantineItem
]:
    """Quarantined items, newest first; `state=None` lists resolved ones too."""
    query = select(QuarantineItem).order_by(QuarantineItem.id.desc()).limit(limit)
    if state:
        query = query.where(QuarantineItem.state == state)
    return list(session.scalars(query))


def retry_origin(item: QuarantineItem) -> Origin:
    """The origin a retried item is ingested under: its own, so dedupe still works."""
    if item.state != "held":
        raise InvalidInput(f"quarantined message {item.id} is already {item.state}")
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
