"""Stats: the help desk's workload, for `helpdesk stats`.

What IT needs to see which systems cause the most work: open tickets by team
and status; median first-response and resolution times of the tickets created
in a window; and the tags, teams and requester domains with the most new
tickets, each against the previous window of the same length.

Counts are SQL aggregates (portable between SQLite and PostgreSQL); medians
are computed in Python from the selected timestamps, which is cheap at
help-desk sizes and avoids percentile functions SQLite lacks. A ticket merged
into another is a duplicate and counts nowhere. Time is a parameter.

The filters of `tickets list` (`queries.TicketFilter`: tags, priority,
unassigned, subject, ...) narrow every figure; their `since` sets the start of
the window instead of `days`.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from helpdesk.store.models import Contact, Team, Ticket, TicketTag
from helpdesk.store.queries import TicketFilter, ticket_conditions
from helpdesk.tickets import OPEN_STATUSES

OPEN_STATUS_NAMES: tuple[str, ...] = tuple(s.value for s in OPEN_STATUSES)


@dataclass(frozen=True)
class OpenRow:
    """Open tickets of one team (None: no team yet), by status."""

    team: str | None
    by_status: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


@dataclass(frozen=True)
class Count:
    """How many tickets something caused in the window and in the one before."""

    key: str | None
    current: int
    previous: int

    @property
    def trend(self) -> str:
        return trend(self.current, self.previous)


@dataclass(frozen=True)
class Median:
    """A median duration and how many tickets it was taken over (None when none)."""

    tickets: int
    median: timedelta | None


@dataclass(frozen=True)
class Stats:
    """Everything `helpdesk stats` shows."""

    now: datetime
    days: int
    since: datetime
    previous_since: datetime
    open_tickets: tuple[OpenRow, ...]
    created: Count
    first_response: Median
    resolution: Median
    tags: tuple[Count, ...]
    teams: tuple[Count, ...]
    domains: tuple[Count, ...]
    # The filters in force, as `key=value` words (empty: every ticket).
    filters: tuple[str, ...] = ()


def compute(session: Session, *, now: datetime, days: int = 30, top: int = 10,
            flt: TicketFilter | None = None) -> Stats:
    """The stats for the `days` up to `now` (or since `flt.since`) against as long before.

    `flt` narrows every figure to the tickets it matches.
    """
    if days < 1 or top < 1:
        raise ValueError("days and top must be positive")
    flt = flt or TicketFilter()
    since = now - timedelta(days=days)
    if flt.since is not None:
        if flt.since >= now:
            raise ValueError("since must be before now")
        since = flt.since
        days = max(1, round((now - since) / timedelta(days=1)))
    previous_since = since - (now - since)
    terms = tuple(ticket_conditions(flt))
    window = _Window(since, previous_since, now, terms)
    return Stats(
        now=now,
        days=days,
        since=since,
        previous_since=previous_since,
        open_tickets=_open_tickets(session, terms),
        created=_created(session, window),
        first_response=_median(session, Ticket.first_response_at, window),
        resolution=_median(session, Ticket.resolved_at, window),
        tags=_top(session, window, TicketTag.tag,
                  lambda q: q.join(TicketTag, TicketTag.ticket_id == Ticket.id), top),
        teams=_top(session, window, Team.name,
                   lambda q: q.outerjoin(Team, Team.id == Ticket.team_id), top),
        domains=_top_domains(session, window, top),
        filters=flt.describe(),
    )


def trend(current: int, previous: int) -> str:
    """`+40%`, `-10%`, `0%`; `new` when the previous window had none, `-` when neither had."""
    if previous == 0:
        return "new" if current else "-"
    change = round((current - previous) * 100 / previous)
    return f"{change:+d}%" if change else "0%"


def format_duration(value: timedelta | None) -> str:
    """A duration for people: `45s`, `12m`, `3h 20m`, `2d 4h`; `-` for none."""
    if value is None:
        return "-"
    seconds = max(0, round(value.total_seconds()))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def to_json(stats: Stats) -> dict[str, Any]:
    """The stats as plain data: durations in seconds and in words, counts with trends."""

    def median(m: Median) -> dict[str, Any]:
        return {
            "tickets": m.tickets,
            "seconds": round(m.median.total_seconds()) if m.median is not None else None,
            "human": format_duration(m.median),
        }

    def counts(rows: Iterable[Count]) -> list[dict[str, Any]]:
        return [{"key": c.key, "tickets": c.current, "previous": c.previous, "trend": c.trend}
                for c in rows]

    return {
        "now": stats.now,
        "days": stats.days,
        "filters": list(stats.filters),
        "since": stats.since,
        "previous_since": stats.previous_since,
        "open": [{"team": r.team, **{s: r.by_status.get(s, 0) for s in OPEN_STATUS_NAMES},
                  "total": r.total} for r in stats.open_tickets],
        "created": {"tickets": stats.created.current, "previous": stats.created.previous,
                    "trend": stats.created.trend},
        "first_response": median(stats.first_response),
        "resolution": median(stats.resolution),
        "tags": counts(stats.tags),
        "teams": counts(stats.teams),
        "domains": counts(stats.domains),
    }


# A key and the ticket counts in the window and the one before.
_Grouped = Select[str, int, int]


@dataclass(frozen=True)
class _Window:
    since: datetime
    previous_since: datetime
    now: datetime
    terms: tuple[ColumnElement[bool], ...] = ()

    def current(self) -> ColumnElement[int]:
        """1 for a ticket created in the window, else 0 (summed per group)."""
        return case((Ticket.created_at >= self.since, 1), else_=0)

    def previous(self) -> ColumnElement[int]:
        return case((Ticket.created_at < self.since, 1), else_=0)

    def both(self) -> ColumnElement[bool]:
        return and_(
            Ticket.created_at >= self.previous_since,
            Ticket.created_at <= self.now,
            Ticket.merged_into_id.is_(None),
            *self.terms,
        )


def _open_tickets(session: Session, terms: tuple[ColumnElement[bool], ...]
                  ) -> tuple[OpenRow, ...]:
    rows = session.execute(
        select(Team.name, Ticket.status, func.count(Ticket.id))
        .select_from(Ticket)
        .outerjoin(Team, Team.id == Ticket.team_id)
        .where(Ticket.status.in_(OPEN_STATUS_NAMES), Ticket.merged_into_id.is_(None), *terms)
        .group_by(Team.name, Ticket.status)
    )
    by_team: dict[str | None, dict[str, int]] = {}
    for team, status, count in rows:
        by_team.setdefault(team, {})[status] = count
    ordered = sorted(by_team.items(), key=lambda item: (-sum(item[1].values()),
                                                        item[0] is None, item[0] or ""))
    return tuple(OpenRow(team, counts) for team, counts in ordered)


def _created(session: Session, window: _Window) -> Count:
    current, previous = session.execute(
        select(func.coalesce(func.sum(window.current()), 0),
               func.coalesce(func.sum(window.previous()), 0))
        .where(window.both())
    ).one()
    return Count("tickets", int(current), int(previous))


def _median(
    session: Session, column: InstrumentedAttribute[datetime | None], window: _Window,
) -> Median:
    rows = session.execute(
        select(Ticket.created_at, column).where(
            Ticket.created_at >= window.since,
            Ticket.created_at <= window.now,
            Ticket.merged_into_id.is_(None),
            column.is_not(None),
            *window.terms,
        )
    ).all()
    durations = [max(0.0, (done - created).total_seconds())
                 for created, done in rows if done is not None]
    if not durations:
        return Median(0, None)
    return Median(len(durations), timedelta(seconds=statistics.median(durations)))


def _top(
    session: Session,
    window: _Window,
    key: InstrumentedAttribute[str],
    join: Callable[[_Grouped], _Grouped],
    top: int,
) -> tuple[Count, ...]:
    query = select(
        key, func.sum(window.current()), func.sum(window.previous())
    ).select_from(Ticket)
    query = join(query).where(window.both()).group_by(key)
    counts = [Count(k, int(c), int(p)) for k, c, p in session.execute(query)]
    return _rank(counts, top)


def _top_domains(session: Session, window: _Window, top: int) -> tuple[Count, ...]:
    # Grouped by address in SQL (portable); addresses fold into domains here,
    # because SQLite and PostgreSQL split strings with different functions.
    rows = session.execute(
        select(Contact.address, func.sum(window.current()), func.sum(window.previous()))
        .select_from(Ticket)
        .join(Contact, Contact.id == Ticket.requester_id)
        .where(window.both())
        .group_by(Contact.address)
    )
    current: Counter[str] = Counter()
    previous: Counter[str] = Counter()
    for address, c, p in rows:
        domain = address.rpartition("@")[2] or address
        current[domain] += int(c)
        previous[domain] += int(p)
    return _rank([Count(d, current[d], previous[d]) for d in current], top)


def _rank(counts: list[Count], top: int) -> tuple[Count, ...]:
    """The `top` with most tickets in the window (ties by name); none with zero."""
    busy = [c for c in counts if c.current > 0]
    busy.sort(key=lambda c: (-c.current, c.key is None, c.key or ""))
    return tuple(busy[:top])
