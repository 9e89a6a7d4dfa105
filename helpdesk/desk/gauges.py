"""What the store says about the whole desk right now, for the daemon's metrics (issue 11).

These figures are the same whichever daemon reads them: the outbox by state
and how long its oldest due mail has waited, the open tickets by team and
status, the quarantine held for a person. `read` takes them in one short
read-only transaction of a few aggregate queries (each answered by an index:
`ix_outbox_due`, `ix_tickets_status_updated`, `ix_quarantine_state_decided_at`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from helpdesk.delivery.outbox import queue_counts
from helpdesk.delivery.views import PENDING, SENT
from helpdesk.flow.quarantine import HELD
from helpdesk.store.models import OutboxItem, QuarantineItem, Team, Ticket
from helpdesk.values import OPEN_STATUSES

__all__ = ["StoreGauges", "read"]

OPEN_STATUS_NAMES: tuple[str, ...] = tuple(s.value for s in OPEN_STATUSES)


@dataclass(frozen=True)
class StoreGauges:
    """A snapshot of the store-wide figures; `open_tickets` maps (team, status) to a count,
    team None for tickets no team has yet."""

    outbox_queued: int
    outbox_retrying: int
    outbox_sent: int
    outbox_failed: int
    # Seconds the longest-waiting due mail has waited since it became due; 0 when none.
    outbox_oldest_due_seconds: float
    open_tickets: dict[tuple[str | None, str], int]
    quarantine_held: int


def read(session: Session, now: datetime) -> StoreGauges:
    """The store-wide figures at `now` (the sender's clock, as `next_attempt_at` is)."""
    counts = queue_counts(session, now=now)
    sent = session.scalar(
        select(func.count()).select_from(OutboxItem).where(OutboxItem.state == SENT)) or 0
    oldest = session.scalar(
        select(func.min(OutboxItem.next_attempt_at))
        .where(OutboxItem.state == PENDING, OutboxItem.next_attempt_at <= now))
    held = session.scalar(
        select(func.count()).select_from(QuarantineItem).where(QuarantineItem.state == HELD)) or 0
    return StoreGauges(
        outbox_queued=counts.due,
        outbox_retrying=counts.retrying,
        outbox_sent=sent,
        outbox_failed=counts.failed,
        outbox_oldest_due_seconds=_waited(oldest, now),
        open_tickets=_open_tickets(session),
        quarantine_held=held,
    )


def _waited(since: datetime | None, now: datetime) -> float:
    if since is None:
        return 0.0
    if since.tzinfo is None:  # an aggregate may lose the column's type on some backends
        since = since.replace(tzinfo=UTC)
    return max(0.0, (now - since).total_seconds())


def _open_tickets(session: Session) -> dict[tuple[str | None, str], int]:
    rows = session.execute(
        select(Team.name, Ticket.status, func.count(Ticket.id))
        .select_from(Ticket)
        .outerjoin(Team, Team.id == Ticket.team_id)
        .where(Ticket.status.in_(OPEN_STATUS_NAMES), Ticket.merged_into_id.is_(None))
        .group_by(Team.name, Ticket.status)
    )
    return {(team, status): int(count) for team, status, count in rows}
