"""Day by day and week by week: the series of `helpdesk stats` at a terminal, `--json`
and `--html` (tickets opened per day by team, the backlog per day, duration
percentiles per week).

The window is the one `stats.compute` used (`Stats.since` to `Stats.now`), cut
into UTC calendar days (the first and last are partial) and ISO weeks (Monday
first). Tickets count under their team of today. `where` takes further
conditions on tickets (the filters of `tickets list`), as `compute` does.

The database counts and, on PostgreSQL, takes the percentiles (percentile_cont,
the same interpolation as `percentile`): at a million tickets a window holds
tens of thousands, which cost half a second to fetch and sort here (issue 13).
SQLite has no percentile function; there the durations are fetched.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Date, Integer, cast, func, literal, select, tuple_
from sqlalchemy.sql.expression import type_coerce

from helpdesk.desk.stats import (
    OPEN_STATUS_NAMES,
    Plan,
    finish_each,
    run_plan,
    seconds_between,
    seconds_taken,
)
from helpdesk.report.data import Durations, Series, Spread, TeamDays, TeamWeeks
from helpdesk.store import schema
from helpdesk.store.schema import connection_of

if TYPE_CHECKING:
    from helpdesk.desk.stats import Reader

_tickets, _teams, _events = schema.tickets, schema.teams, schema.events

BACKLOG_EVENT = "status.changed"


def compute_series(
    session: Reader, *, since: datetime, now: datetime,
    where: Sequence[ColumnElement[bool]] = (),
) -> Series:
    """Tickets opened per day by team, the backlog per day, duration percentiles per week."""
    postgres = connection_of(session).dialect.name == "postgresql"
    return run_plan([session], series_plan(postgres=postgres, since=since, now=now,
                                           where=where))


def series_plan(*, postgres: bool, since: datetime, now: datetime,
                where: Sequence[ColumnElement[bool]] = ()) -> Plan[Series]:
    """`compute_series`' queries, to run beside others (`stats.run_plans`), and their fold."""
    if since >= now:
        raise ValueError("since must be before now")
    days = _days(since, now)
    weeks = _weeks(days)
    in_window = (_tickets.c.created_at >= since, _tickets.c.created_at <= now,
                 _tickets.c.merged_into_id.is_(None), *where)
    day = _day_number(_tickets.c.created_at, days[0], postgres)
    opened = (
        select(_teams.c.name, day, func.count())
        .select_from(_tickets)
        .outerjoin(_teams, _teams.c.id == _tickets.c.team_id)
        .where(*in_window)
        .group_by(_teams.c.name, day)
    )
    durations = _durations_in_database if postgres else _durations_here
    first_response = durations(_tickets.c.first_response_at, in_window, weeks)
    resolution = durations(_tickets.c.resolved_at, in_window, weeks)
    backlog = _backlog(days, now, where, postgres)

    def finish(rows: Sequence[list[Any]]) -> Series:
        opened_rows, *rest = rows
        first_by_teams, resolution_by_teams, backlog_days = finish_each(
            rest, [first_response, resolution, backlog])
        by_team: dict[str | None, list[int]] = {}
        for team, number, count in opened_rows:
            by_team.setdefault(team, [0] * len(days))[number] += count
        order = sorted(by_team, key=lambda t: (-sum(by_team[t]), t is None, t or ""))
        return Series(
            days=days,
            opened=tuple(TeamDays(team, tuple(by_team[team])) for team in order),
            backlog=backlog_days,
            weeks=weeks,
            first_response=first_by_teams(order),
            resolution=resolution_by_teams(order),
        )

    return Plan((opened, *first_response.queries, *resolution.queries, *backlog.queries),
                finish)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th quantile (0..1) of sorted values, interpolating between the closest ranks.

    The same definition as `statistics.quantiles(method="inclusive")` and
    PostgreSQL's percentile_cont, so the 50th percentile is the median
    `compute` reports.
    """
    if not values:
        raise ValueError("no values")
    rank = (len(values) - 1) * q
    low = int(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def series_to_json(series: Series) -> dict[str, Any]:
    """The series as plain data: ISO dates, counts, durations in whole seconds."""

    def spreads(rows: Iterable[Spread]) -> list[dict[str, Any]]:
        return [{"tickets": s.tickets, "p50_seconds": s.p50, "p90_seconds": s.p90}
                for s in rows]

    def durations(d: Durations) -> dict[str, Any]:
        return {"all": spreads(d.all),
                "teams": [{"team": t.team, "weeks": spreads(t.weeks)} for t in d.teams]}

    return {
        "per_day": {
            "dates": [d.isoformat() for d in series.days],
            "opened": [{"team": t.team, "counts": list(t.counts), "total": t.total}
                       for t in series.opened],
            "opened_total": list(series.opened_per_day),
            "backlog": list(series.backlog),
        },
        "per_week": {
            "weeks": [w.isoformat() for w in series.weeks],
            "first_response": durations(series.first_response),
            "resolution": durations(series.resolution),
        },
    }


def _days(since: datetime, now: datetime) -> tuple[date, ...]:
    first, last = since.astimezone(UTC).date(), now.astimezone(UTC).date()
    return tuple(first + timedelta(days=i) for i in range((last - first).days + 1))


def _weeks(days: Sequence[date]) -> tuple[date, ...]:
    first = days[0] - timedelta(days=days[0].weekday())
    return tuple(first + timedelta(weeks=i)
                 for i in range((days[-1] - first).days // 7 + 1))


def _day_number(column: ColumnElement[datetime], first: date,
                postgres: bool) -> ColumnElement[int]:
    """Days from `first` to the UTC date of `column`, in SQL (negative before it)."""
    if postgres:
        utc_date = cast(func.timezone("UTC", column), Date)
        return type_coerce(utc_date - literal(first, Date), Integer)
    # SQLite keeps UTC timestamps as text; julianday of two dates differs by whole days.
    return cast(func.julianday(func.date(column)) - func.julianday(first.isoformat()), Integer)


_EMPTY = Spread(0, None, None)


# A week's durations, once the teams' order (busiest first) is known.
_ByTeams = Callable[[Sequence[str | None]], Durations]


def _durations_in_database(done: ColumnElement[datetime | None],
                           in_window: Sequence[ColumnElement[bool]],
                           weeks: Sequence[date]) -> Plan[_ByTeams]:
    """p50 and p90 per creation week of (done - created), all teams and each: GROUPING SETS
    give both in one pass, GROUPING() tells the all-teams rows from the no-team ones."""
    week = _day_number(_tickets.c.created_at, weeks[0], True) // 7
    seconds = seconds_taken(done)
    query = (
        select(func.grouping(_teams.c.name), _teams.c.name, week, func.count(),
               func.percentile_cont(0.5).within_group(seconds),
               func.percentile_cont(0.9).within_group(seconds))
        .select_from(_tickets)
        .outerjoin(_teams, _teams.c.id == _tickets.c.team_id)
        .where(*in_window, done.is_not(None))
        .group_by(func.grouping_sets(tuple_(_teams.c.name, week), tuple_(week)))
    )

    def finish(rows: Sequence[list[Any]]) -> _ByTeams:
        everyone = [_EMPTY] * len(weeks)
        per_team: dict[str | None, list[Spread]] = {}
        for all_teams, team, number, count, p50, p90 in rows[0]:
            spread = Spread(count, round(p50), round(p90))
            if all_teams:
                everyone[number] = spread
            else:
                per_team.setdefault(team, [_EMPTY] * len(weeks))[number] = spread
        return lambda teams: Durations(
            all=tuple(everyone),
            teams=tuple(TeamWeeks(t, tuple(per_team[t])) for t in teams if t in per_team),
        )

    return Plan((query,), finish)


def _durations_here(done: ColumnElement[datetime | None],
                    in_window: Sequence[ColumnElement[bool]],
                    weeks: Sequence[date]) -> Plan[_ByTeams]:
    """The same figures from the durations fetched (SQLite has no percentile function)."""
    query = (
        select(_tickets.c.created_at, _teams.c.name, done)
        .select_from(_tickets)
        .outerjoin(_teams, _teams.c.id == _tickets.c.team_id)
        .where(*in_window, done.is_not(None))
    )

    def finish(rows: Sequence[list[Any]]) -> _ByTeams:
        everyone: list[list[float]] = [[] for _ in weeks]
        per_team: dict[str | None, list[list[float]]] = {}
        for created, team, finished in rows[0]:
            week = (created.date() - weeks[0]).days // 7
            seconds = seconds_between(created, finished)
            everyone[week].append(seconds)
            per_team.setdefault(team, [[] for _ in weeks])[week].append(seconds)
        return lambda teams: Durations(
            all=tuple(_spread(v) for v in everyone),
            teams=tuple(TeamWeeks(t, tuple(_spread(v) for v in per_team[t]))
                        for t in teams if t in per_team),
        )

    return Plan((query,), finish)


def _spread(values: list[float]) -> Spread:
    if not values:
        return _EMPTY
    values.sort()
    return Spread(len(values), round(percentile(values, 0.5)), round(percentile(values, 0.9)))


def _backlog(days: Sequence[date], now: datetime, where: Sequence[ColumnElement[bool]],
             postgres: bool) -> Plan[tuple[int, ...]]:
    """Open tickets at the end of each day (the last: at `now`), from the status events.

    A ticket's status at an instant is the `to` of its last status change
    before it, else the `from` of its first change, else its status today.
    Only tickets open now or changed since the first day can be open on one,
    and only their changes since then are read: the `from` of the first one
    is the status the ticket had when the window began. A ticket open now and
    not changed since has been open since it was created: those, most of the
    backlog, are counted by creation day in the database; only the changed
    ones are replayed here.
    """
    # Day k ends when day k+1 begins; what happened before a cutoff counts.
    cutoffs = [datetime.combine(d + timedelta(days=1), time(), UTC) for d in days[:-1]]
    cutoffs.append(now + timedelta(microseconds=1))
    start = datetime.combine(days[0], time(), UTC)
    alive = (_tickets.c.created_at <= now, _tickets.c.merged_into_id.is_(None), *where)
    # By the partial index of status changes (migration 0012).
    changed = select(_events.c.ticket_id).where(_events.c.kind == BACKLOG_EVENT,
                                                _events.c.created_at >= start)
    day = _day_number(_tickets.c.created_at, days[0], postgres)
    unchanged_by_day = (
        select(day, func.count())
        .where(_tickets.c.status.in_(OPEN_STATUS_NAMES), *alive,
               _tickets.c.id.not_in(changed))
        .group_by(day)
    )
    changed_tickets = select(_tickets.c.id, _tickets.c.created_at, _tickets.c.status).where(
        _tickets.c.id.in_(changed.distinct()), *alive)
    their_changes = (
        select(_events.c.ticket_id, _events.c.created_at, _events.c.detail)
        .where(_events.c.kind == BACKLOG_EVENT, _events.c.created_at >= start)
        .order_by(_events.c.ticket_id, _events.c.created_at, _events.c.id)
    )

    def finish(rows: Sequence[list[Any]]) -> tuple[int, ...]:
        unchanged_rows, ticket_rows, change_rows = rows
        delta = [0] * (len(cutoffs) + 1)
        for number, count in unchanged_rows:
            # Opened when created, never closed: bisect_right(cutoffs, created_at).
            delta[min(max(number, 0), len(cutoffs) - 1)] += count
            delta[len(cutoffs)] -= count
        tickets = {ticket_id: (created, status) for ticket_id, created, status in ticket_rows}
        changes: dict[int, list[tuple[datetime, dict[str, Any]]]] = {}
        for ticket_id, when, detail in change_rows:
            if ticket_id in tickets:  # not merged, not filtered out
                changes.setdefault(ticket_id, []).append((when, detail))
        for ticket_id, (created, status) in tickets.items():
            for opened, closed in _open_spans(created, status, changes.get(ticket_id, [])):
                delta[bisect_right(cutoffs, opened)] += 1
                delta[bisect_right(cutoffs, closed) if closed else len(cutoffs)] -= 1
        backlog, running = [], 0
        for step in delta[:-1]:
            running += step
            backlog.append(running)
        return tuple(backlog)

    return Plan((unchanged_by_day, changed_tickets, their_changes), finish)


def _open_spans(created: datetime, status: str,
                changes: Sequence[tuple[datetime, dict[str, Any]]],
                ) -> list[tuple[datetime, datetime | None]]:
    """When a ticket was open: [opened, closed) spans, the last one perhaps unended."""
    current = str(changes[0][1].get("from") or status) if changes else status
    opened = created if current in OPEN_STATUS_NAMES else None
    spans: list[tuple[datetime, datetime | None]] = []
    for when, detail in changes:
        target = detail.get("to")
        if target is None:
            continue
        at = max(when, created)
        if target in OPEN_STATUS_NAMES and opened is None:
            opened = at
        elif target not in OPEN_STATUS_NAMES and opened is not None:
            spans.append((opened, at))
            opened = None
    if opened is not None:
        spans.append((opened, None))
    return spans
