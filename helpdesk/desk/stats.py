"""Stats: the help desk's workload, for `helpdesk stats`.

What IT needs to see which systems cause the most work: open tickets by team
and status; median first-response and resolution times of the tickets created
in a window; and the tags, teams and requester domains with the most new
tickets, each against the previous window of the same length.

Counts are SQL aggregates. On PostgreSQL the medians (percentile_cont) and the
requester domains are computed in the database as well; SQLite lacks both
functions, so there they are computed here from the selected rows, which is
cheap at the sizes SQLite serves. A ticket merged into another is a duplicate
and counts nowhere. Time is a parameter.

The filters of `tickets list` (`listing.TicketFilter`: tags, priority,
unassigned, subject, ...) narrow every figure; their `since` sets the start of
the window instead of `days`.
"""

from __future__ import annotations

import statistics
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Executable,
    Select,
    and_,
    case,
    func,
    select,
)

from helpdesk.names import OPEN_STATUSES
from helpdesk.report.data import (
    MedianSeconds,
    Ranked,
    Report,
    Series,
)
from helpdesk.report.fmt import format_duration as format_duration  # re-exported
from helpdesk.store import schema
from helpdesk.store.listing import TicketFilter, ticket_conditions
from helpdesk.store.schema import connection_of

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    # Core queries only: `helpdesk stats` runs them on a read-only connection without
    # importing the ORM; a session works as well.
    Reader = Connection | Session

_tickets, _teams, _contacts = schema.tickets, schema.teams, schema.contacts
_tags, _events = schema.ticket_tags, schema.events
OPEN_STATUS_NAMES: tuple[str, ...] = tuple(s.value for s in OPEN_STATUSES)
T = TypeVar("T")


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


@dataclass(frozen=True)
class Plan(Generic[T]):
    """Queries that answer one question, and what makes the answer of their rows.

    The queries are independent: `run_plans` runs those of several plans side by
    side, on connections that share one snapshot, longest first as listed.
    """

    queries: tuple[Executable, ...]
    finish: Callable[[Sequence[list[Any]]], T]


def run_plans(readers: Sequence[Reader], plans: Sequence[Plan[Any]]) -> list[Any]:
    """The answer of each plan, in order; every plan's queries run side by side."""
    return finish_each(_run_all(readers, [query for plan in plans for query in plan.queries]),
                       plans)


def finish_each(rows: Sequence[list[Any]], plans: Sequence[Plan[Any]]) -> list[Any]:
    """Each plan's answer from the rows of all their queries, listed in the plans' order."""
    answers, start = [], 0
    for plan in plans:
        answers.append(plan.finish(rows[start:start + len(plan.queries)]))
        start += len(plan.queries)
    return answers


def run_plan(readers: Sequence[Reader], one: Plan[T]) -> T:
    """The answer of one plan, its queries side by side on `readers`."""
    (answer,) = run_plans(readers, [one])
    return cast(T, answer)


def window_start(now: datetime, days: int, flt: TicketFilter | None = None) -> datetime:
    """Where the stats' window starts: `flt.since`, else `days` before `now`."""
    if flt is not None and flt.since is not None:
        if flt.since >= now:
            raise ValueError("since must be before now")
        return flt.since
    return now - timedelta(days=days)


def compute(session: Reader, *, now: datetime, days: int = 30, top: int = 10,
            flt: TicketFilter | None = None, beside: Sequence[Connection] = ()) -> Stats:
    """The stats for the `days` up to `now` (or since `flt.since`) against as long before.

    `flt` narrows every figure to the tickets it matches. `beside`: more connections
    on the same snapshot (`db.reading_together`); the queries then run side by side.
    """
    postgres = connection_of(session).dialect.name == "postgresql"
    return run_plan([session, *beside],
                    plan(postgres=postgres, now=now, days=days, top=top, flt=flt))


def plan(*, postgres: bool, now: datetime, days: int = 30, top: int = 10,
         flt: TicketFilter | None = None) -> Plan[Stats]:
    """`compute`'s queries, to run beside others (`run_plans`), and how they become Stats."""
    if days < 1 or top < 1:
        raise ValueError("days and top must be positive")
    flt = flt or TicketFilter()
    since = window_start(now, days, flt)
    if flt.since is not None:
        days = max(1, round((now - since) / timedelta(days=1)))
    previous_since = since - (now - since)
    terms = tuple(ticket_conditions(flt))
    window = _Window(since, previous_since, now, terms)
    # The slowest first, so that side by side the others fill in around them.
    queries = (
        _domains_query(window, postgres),
        _counts_query(window, _tags.c.tag,
                      lambda q: q.join(_tags, _tags.c.ticket_id == _tickets.c.id)),
        _counts_query(window, _teams.c.name,
                      lambda q: q.outerjoin(_teams, _teams.c.id == _tickets.c.team_id)),
        _open_query(terms),
        _median_query(_tickets.c.first_response_at, window, postgres),
        _median_query(_tickets.c.resolved_at, window, postgres),
    )

    def finish(rows: Sequence[list[Any]]) -> Stats:
        domains, tags, teams, open_rows, first_response, resolution = rows
        # Every ticket of the two windows is in one team group (or the no-team group):
        # their sums are the tickets created, without a query of their own.
        team_counts = _counts(teams)
        return Stats(
            now=now,
            days=days,
            since=since,
            previous_since=previous_since,
            open_tickets=_open_tickets(open_rows),
            created=Count("tickets", sum(c.current for c in team_counts),
                          sum(c.previous for c in team_counts)),
            first_response=_median(first_response, postgres),
            resolution=_median(resolution, postgres),
            tags=_rank(_counts(tags), top),
            teams=_rank(team_counts, top),
            domains=_top_domains(domains, postgres, top),
            filters=flt.describe(),
        )

    return Plan(queries, finish)


def _run_all(readers: Sequence[Reader], queries: Sequence[Executable]) -> list[list[Any]]:
    """Each query's rows, in order; with several readers, side by side, one query each.

    The database does the work (tens of milliseconds a query at a million tickets)
    while these threads wait on their sockets, so the queries overlap on its cores.
    """
    if len(readers) < 2:
        return [list(readers[0].execute(q)) for q in queries]
    pending = iter(enumerate(queries))
    lock = threading.Lock()
    results: list[list[Any]] = [[] for _ in queries]

    def drain(reader: Reader) -> None:
        while True:
            with lock:
                index, query = next(pending, (-1, None))
            if query is None:
                return
            results[index] = list(reader.execute(query))

    with ThreadPoolExecutor(len(readers)) as pool:
        for done in [pool.submit(drain, r) for r in readers]:
            done.result()  # a failed query raises here
    return results


def trend(current: int, previous: int) -> str:
    """`+40%`, `-10%`, `0%`; `new` when the previous window had none, `-` when neither had."""
    if previous == 0:
        return "new" if current else "-"
    change = round((current - previous) * 100 / previous)
    return f"{change:+d}%" if change else "0%"


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
        return case((_tickets.c.created_at >= self.since, 1), else_=0)

    def previous(self) -> ColumnElement[int]:
        return case((_tickets.c.created_at < self.since, 1), else_=0)

    def both(self) -> ColumnElement[bool]:
        return and_(
            _tickets.c.created_at >= self.previous_since,
            _tickets.c.created_at <= self.now,
            _tickets.c.merged_into_id.is_(None),
            *self.terms,
        )


def _open_query(terms: tuple[ColumnElement[bool], ...]) -> Select[Any]:
    return (
        select(_teams.c.name, _tickets.c.status, func.count(_tickets.c.id))
        .select_from(_tickets)
        .outerjoin(_teams, _teams.c.id == _tickets.c.team_id)
        .where(_tickets.c.status.in_(OPEN_STATUS_NAMES), _tickets.c.merged_into_id.is_(None),
               *terms)
        .group_by(_teams.c.name, _tickets.c.status)
    )


def _open_tickets(rows: Iterable[Any]) -> tuple[OpenRow, ...]:
    by_team: dict[str | None, dict[str, int]] = {}
    for team, status, count in rows:
        by_team.setdefault(team, {})[status] = count
    ordered = sorted(by_team.items(), key=lambda item: (-sum(item[1].values()),
                                                        item[0] is None, item[0] or ""))
    return tuple(OpenRow(team, counts) for team, counts in ordered)


def _median_query(column: ColumnElement[datetime | None], window: _Window,
                  in_database: bool) -> Select[Any]:
    where = (
        _tickets.c.created_at >= window.since,
        _tickets.c.created_at <= window.now,
        _tickets.c.merged_into_id.is_(None),
        column.is_not(None),
        *window.terms,
    )
    if in_database:
        # In the database: at a million tickets, a window holds tens of thousands,
        # and fetching them all to Python took most of the command's time (issue 13).
        # percentile_cont interpolates between the two middle values, as median does.
        seconds = seconds_taken(column)
        return select(func.count(), func.percentile_cont(0.5).within_group(seconds)).where(*where)
    return select(_tickets.c.created_at, column).where(*where)


def seconds_taken(done: ColumnElement[datetime | None]) -> ColumnElement[float]:
    """Seconds from a ticket's creation to `done`, in SQL (PostgreSQL); never negative."""
    return func.greatest(func.extract("epoch", done - _tickets.c.created_at), 0)


def seconds_between(created: datetime, done: datetime) -> float:
    """`seconds_taken` in Python, for SQLite's fetched rows."""
    return max(0.0, (done - created).total_seconds())


def _median(rows: list[Any], in_database: bool) -> Median:
    if in_database:
        count, middle = rows[0]
        if not count:
            return Median(0, None)
        return Median(int(count), timedelta(seconds=float(middle)))
    durations = [seconds_between(created, done) for created, done in rows if done is not None]
    if not durations:
        return Median(0, None)
    return Median(len(durations), timedelta(seconds=statistics.median(durations)))


def _counts_query(window: _Window, key: ColumnElement[str],
                  join: Callable[[_Grouped], _Grouped]) -> _Grouped:
    query = select(
        key, func.sum(window.current()), func.sum(window.previous())
    ).select_from(_tickets)
    return join(query).where(window.both()).group_by(key)


def _counts(rows: Iterable[Any]) -> list[Count]:
    return [Count(k, int(c), int(p)) for k, c, p in rows]


def _domains_query(window: _Window, in_database: bool) -> _Grouped:
    address = _contacts.c.address

    def join(query: _Grouped) -> _Grouped:
        return query.join(_contacts, _contacts.c.id == _tickets.c.requester_id)

    if not in_database:  # SQLite: grouped by address here, folded in `_top_domains`
        return _counts_query(window, address, join)
    # Folded into domains in the database (the part after the last @, as below):
    # at a million tickets the window's tens of thousands of requesters cost more to
    # fetch and fold here than to group there (issue 13). split_part on the reversed
    # address rather than a regular expression: a fifth of the query's time.
    after_last_at = func.reverse(func.split_part(func.reverse(address), "@", 1))
    return _counts_query(window, func.coalesce(func.nullif(after_last_at, ""), address), join)


def _top_domains(rows: Iterable[Any], in_database: bool, top: int) -> tuple[Count, ...]:
    if in_database:
        return _rank(_counts(rows), top)
    current: Counter[str] = Counter()
    previous: Counter[str] = Counter()
    for count in _counts(rows):
        found = str(count.key)  # contacts.address is never NULL
        domain_of = found.rpartition("@")[2] or found
        current[domain_of] += count.current
        previous[domain_of] += count.previous
    return _rank([Count(d, current[d], previous[d]) for d in current], top)


def _rank(counts: list[Count], top: int) -> tuple[Count, ...]:
    """The `top` with most tickets in the window (ties by name); none with zero."""
    busy = [c for c in counts if c.current > 0]
    busy.sort(key=lambda c: (-c.current, c.key is None, c.key or ""))
    return tuple(busy[:top])


def report_data(stats: Stats, series: Series) -> Report:
    """What the HTML report shows, from the same values as `to_json` and
    `series.series_to_json`."""

    def ranked(c: Count) -> Ranked:
        return Ranked(c.key, c.current, c.previous, c.trend)

    def median(m: Median) -> MedianSeconds:
        seconds = round(m.median.total_seconds()) if m.median is not None else None
        return MedianSeconds(m.tickets, seconds)

    return Report(
        now=stats.now,
        since=stats.since,
        previous_since=stats.previous_since,
        created=ranked(stats.created),
        open_now=sum(r.total for r in stats.open_tickets),
        first_response=median(stats.first_response),
        resolution=median(stats.resolution),
        tags=tuple(ranked(c) for c in stats.tags),
        domains=tuple(ranked(c) for c in stats.domains),
        series=series,
    )
