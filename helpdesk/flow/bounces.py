"""Bounces: what a delivery failure means for the ticket and for the address.

Every bounced recipient shows on the ticket. A permanent failure (5.x.x)
suppresses automatic mail to that address for `[bounces] suppress_days`, so
that an auto-reply to a dead address cannot start a bounce loop; a
transient one (4.x.x, delayed) suppresses nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from helpdesk.store import batchreads
from helpdesk.store.models import Suppression
from helpdesk.values import BounceReport


def record(
    session: Session,
    report: BounceReport,
    *,
    ticket_id: int,
    message_row_id: int | None,
    now: datetime,
    suppress_for: timedelta,
) -> list[dict[str, object]]:
    """Suppress permanently failed addresses; return the ticket events (as insert rows)."""
    events: list[dict[str, object]] = []
    for recipient in report.recipients:
        detail: dict[str, object] = {
            "recipient": recipient.address,
            "action": recipient.action,
            "status": recipient.status,
            "permanent": recipient.permanent,
            "diagnostic": recipient.diagnostic[:500],
            "original_message_id": report.original_message_id,
        }
        if recipient.permanent and recipient.address:
            until = now + suppress_for
            _suppress(session, recipient.address, until, recipient.diagnostic or recipient.status,
                      ticket_id, now)
            detail["suppressed_until"] = until.isoformat()
        events.append({
            "ticket_id": ticket_id,
            "message_row_id": message_row_id,
            "actor": "system",
            "kind": "bounce.received",
            "detail": detail,
            "created_at": now,
        })
    return events


def _suppress(
    session: Session, address: str, until: datetime, reason: str, ticket_id: int, now: datetime
) -> None:
    row = session.get(Suppression, address)
    if row is None:
        session.add(Suppression(address=address, until=until, reason=reason[:1000],
                                ticket_id=ticket_id, created_at=now))
    elif row.until < until:
        row.until = until
        row.reason = reason[:1000]
        row.ticket_id = ticket_id
    session.flush()
    batchreads.suppressed(session, address, until)
