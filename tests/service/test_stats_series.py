"""The report's series: tickets per day by team, backlog per day, percentiles per week."""

from __future__ import annotations

import statistics
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.desk import series as series_service
from helpdesk.desk import stats
from helpdesk.report.data import Durations, Series, Spread, TeamDays, TeamWeeks
from helpdesk.store.db import reading_together
from helpdesk.store.models import Event, Ticket
from tests.conftest import Store
from tests.service.test_stats import DAY, NOW, Desk
from tests.workload import generate

HOUR = timedelta(hours=1)


def change(session: Session, ticket_id: int, at: datetime, before: str, after: str) -> None:
    """A status change as the services record it (the ticket's status is set by the caller)."""
    session.add(Event(ticket_id=ticket_id, actor="a@example.com", kind="status.changed",
                      detail={"from": before, "to": after}, created_at=at))


def series(store: Store, days: int = 7, **kwargs: object) -> Series:
    """The series as a session computes them; on PostgreSQL also with the queries side by
    side on two connections, beside the stats' own (`helpdesk stats`' way): the two agree."""
    since = NOW - days * DAY
    with store.sessions() as session:
        alone = series_service.compute_series(session, since=since, now=NOW,
                                              **kwargs)  # type: ignore[arg-type]
    with reading_together(store.engine, 2) as readers:
        postgres = store.backend == "postgres"
        assert len(readers) == (2 if postgres else 1)
        figures, together = stats.run_plans(readers, [
            stats.plan(postgres=postgres, now=NOW, days=days),
            series_service.series_plan(postgres=postgres, since=since, now=NOW,
                                       **kwargs),  # type: ignore[arg-type]
        ])
    assert together == alone
    assert figures.since == since
    return alone


def test_days_and_weeks_of_the_window(store: Store) -> None:
    """UTC dates from the window's first (partial) day to today; ISO weeks, Monday first."""
    result = series(store, days=7)
    assert result.days == tuple(date(2026, 3, 24) + timedelta(days=i) for i in range(8))
    assert result.weeks == (date(2026, 3, 23), date(2026, 3, 30))
    assert result.opened == ()
    assert result.opened_per_day == (0,) * 8
    assert result.backlog == (0,) * 8


def test_opened_per_day_by_team(store: Store) -> None:
    """Each ticket counts on its UTC creation day under its team; busiest team first."""
    with store.sessions.begin() as session:
        desk = Desk(session)
        desk.ticket("a@x.example", age=DAY / 2, team="networking")        # 03-31 00:00
        desk.ticket("a@x.example", age=DAY, team="networking")            # 03-30 12:00
        desk.ticket("a@x.example", age=DAY + 13 * HOUR, team="networking")  # 03-29 23:00
        desk.ticket("a@x.example", age=DAY, team="support")
        desk.ticket("a@x.example", age=6 * DAY + 18 * HOUR)               # 03-24 18:00
        desk.ticket("a@x.example", age=7 * DAY + HOUR, team="support")    # before the window
        first = desk.ticket("a@x.example", age=2 * DAY, team="support")
        desk.ticket("a@x.example", age=2 * DAY, team="support", merged_into=first)
    result = series(store)
    assert [(t.team, t.counts) for t in result.opened] == [
        ("networking", (0, 0, 0, 0, 0, 1, 1, 1)),
        ("support", (0, 0, 0, 0, 0, 1, 1, 0)),
        (None, (1, 0, 0, 0, 0, 0, 0, 0)),
    ]
    with store.sessions() as session:
        created = stats.compute(session, now=NOW, days=7).created.current
    assert sum(result.opened_per_day) == created == 6


def test_backlog_replays_the_status_changes(store: Store) -> None:
    """A ticket counts at the end of each day it was new, open or pending, merged ones never."""
    with store.sessions.begin() as session:
        desk = Desk(session)
        # Open before the window, resolved on 03-28 at 12:00.
        a = desk.ticket("a@x.example", age=10 * DAY, status="resolved", resolved=7 * DAY)
        change(session, a, NOW - 3 * DAY, "open", "resolved")
        # New on 03-29, never touched: open since.
        desk.ticket("a@x.example", age=2 * DAY)
        # Resolved long ago, reopened on 03-30, pending now.
        c = desk.ticket("a@x.example", age=20 * DAY, status="pending")
        change(session, c, NOW - 15 * DAY, "new", "resolved")
        change(session, c, NOW - DAY, "resolved", "open")
        change(session, c, NOW - DAY / 4, "open", "pending")
        # Closed without any event (an import): never open in the window.
        desk.ticket("a@x.example", age=5 * DAY, status="closed")
        # Opened and resolved within 03-26: not open at that day's end.
        e = desk.ticket("a@x.example", age=5 * DAY, status="resolved")
        change(session, e, NOW - 5 * DAY + HOUR, "new", "resolved")
        # Resolved exactly at midnight: still open at the end of the day before.
        f = desk.ticket("a@x.example", age=4 * DAY + HOUR, status="closed")  # 03-27 11:00
        change(session, f, datetime(2026, 3, 28, tzinfo=UTC), "new", "closed")
        # A merged duplicate, open as far as its status goes: never counted.
        desk.ticket("a@x.example", age=3 * DAY, merged_into=a)
        # Opened in the future of `now` (a clock skew): not yet.
        desk.ticket("a@x.example", age=-HOUR)
    result = series(store)
    #              03-24 25 26 27 28 29 30 31
    assert result.backlog == (1, 1, 1, 2, 0, 1, 2, 2)
    with store.sessions() as session:
        open_now = stats.compute(session, now=NOW).open_tickets
    # The last day is now: the same count as the open-tickets table, but for the
    # ticket created after `now` which that table (the state of today) includes.
    assert result.backlog[-1] == sum(r.total for r in open_now) - 1


def test_percentiles_per_week_and_team(store: Store) -> None:
    """p50 and p90 of first response and resolution per creation week, all teams and each."""
    with store.sessions.begin() as session:
        desk = Desk(session)
        # Week of 03-23 (window from 03-17 12:00 with days=14; 03-16 is the first week).
        for minutes in (10, 20, 30, 40):
            desk.ticket("a@x.example", age=5 * DAY, team="networking",
                        responded=timedelta(minutes=minutes))
        desk.ticket("a@x.example", age=5 * DAY, team="support", responded=HOUR,
                    resolved=DAY, status="resolved")
        desk.ticket("a@x.example", age=5 * DAY, team="support")    # not answered: not measured
        # Week of 03-30.
        desk.ticket("a@x.example", age=DAY, responded=2 * HOUR)
    result = series(store, days=14)
    assert result.weeks == (date(2026, 3, 16), date(2026, 3, 23), date(2026, 3, 30))
    empty = Spread(0, None, None)
    everyone = [10, 20, 30, 40, 60]
    assert result.first_response.all == (
        empty,
        Spread(5, 30 * 60, round(60 * statistics.quantiles(everyone, n=10,
                                                           method="inclusive")[8])),
        Spread(1, 7200, 7200),
    )
    assert [(t.team, t.weeks) for t in result.first_response.teams] == [
        ("networking", (empty, Spread(4, 25 * 60, 37 * 60), empty)),
        ("support", (empty, Spread(1, 3600, 3600), empty)),
        (None, (empty, empty, Spread(1, 7200, 7200))),
    ]
    assert result.resolution.all == (empty, Spread(1, 86_400, 86_400), empty)
    assert [t.team for t in result.resolution.teams] == ["support"]


def test_filters_narrow_the_series(store: Store) -> None:
    """Extra conditions on Ticket (the list filters) apply to every series."""
    with store.sessions.begin() as session:
        desk = Desk(session)
        urgent = desk.ticket("a@x.example", age=DAY, responded=HOUR)
        desk.ticket("a@x.example", age=DAY, responded=2 * HOUR)
        ticket = session.get(Ticket, urgent)
        assert ticket is not None
        ticket.priority = "urgent"
    result = series(store, where=(Ticket.priority == "urgent",))
    assert sum(result.opened_per_day) == 1
    assert result.backlog[-1] == 1
    assert result.first_response.all[-1] == Spread(1, 3600, 3600)


def test_generated_weeks_agree_with_the_stats(store: Store) -> None:
    """Over weeks of generated tickets the series add up to the figures of `compute`."""
    with store.sessions.begin() as session:
        generate(session, now=NOW, days=60)
    with store.sessions() as session:
        overview = stats.compute(session, now=NOW, days=30, top=100)
        result = series_service.compute_series(session, since=overview.since, now=NOW)
        oracle = _backlog_by_brute_force(session, result.days)
    # As `helpdesk stats` draws them: every query of both side by side (PostgreSQL).
    with reading_together(store.engine, 2) as readers:
        postgres = store.backend == "postgres"
        assert stats.run_plans(readers, [
            stats.plan(postgres=postgres, now=NOW, days=30, top=100),
            series_service.series_plan(postgres=postgres, since=overview.since, now=NOW),
        ]) == [overview, result]
    assert len(result.opened) == 4
    assert len(result.weeks) == 6
    assert sum(result.opened_per_day) == overview.created.current > 50
    assert {t.team: t.total for t in result.opened} == {
        c.key: c.current for c in overview.teams}
    assert result.backlog == oracle
    assert result.backlog[-1] == sum(r.total for r in overview.open_tickets)
    assert sum(s.tickets for s in result.first_response.all) == overview.first_response.tickets
    assert sum(s.tickets for s in result.resolution.all) == overview.resolution.tickets
    for durations in (result.first_response, result.resolution):
        for week, spread in enumerate(durations.all):
            assert spread.tickets == sum(t.weeks[week].tickets for t in durations.teams)


def _backlog_by_brute_force(session: Session, days: tuple[date, ...]) -> tuple[int, ...]:
    """Each day's end, each ticket: the last change before it, else the ticket was new."""
    tickets = session.execute(
        select(Ticket.id, Ticket.created_at).where(Ticket.merged_into_id.is_(None))).all()
    events = session.execute(
        select(Event.ticket_id, Event.created_at, Event.detail)
        .where(Event.kind == "status.changed").order_by(Event.id)).all()
    counts = []
    for day in days:
        end = min(datetime(day.year, day.month, day.day, tzinfo=UTC) + DAY,
                  NOW + timedelta(microseconds=1))
        count = 0
        for ticket_id, created in tickets:
            if created >= end:
                continue
            status = "new"
            for owner, at, detail in events:
                if owner == ticket_id and at < end:
                    status = detail["to"]
            count += status in ("new", "open", "pending")
        counts.append(count)
    return tuple(counts)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([5.0], 0.9, 5.0), ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5), ([1.0, 2.0, 3.0, 4.0], 0.9, 3.7),
     ([0.0, 10.0], 0.0, 0.0), ([0.0, 10.0], 1.0, 10.0)],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    """Linear between the closest ranks, as `statistics.quantiles(method='inclusive')`."""
    assert series_service.percentile(values, q) == pytest.approx(expected)
    if len(values) > 1 and 0 < q < 1:
        cut = statistics.quantiles(values, n=10, method="inclusive")[round(q * 10) - 1]
        assert series_service.percentile(values, q) == pytest.approx(cut)


def test_series_json_shape() -> None:
    """ISO dates, counts with totals, and percentiles in whole seconds."""
    result = Series(
        days=(date(2026, 3, 30), date(2026, 3, 31)),
        opened=(TeamDays("net", (1, 2)), TeamDays(None, (0, 1))),
        backlog=(3, 4), weeks=(date(2026, 3, 30),),
        first_response=Durations(all=(Spread(2, 60, 90),),
                                       teams=(TeamWeeks("net", (Spread(2, 60, 90),)),)),
        resolution=Durations(all=(Spread(0, None, None),), teams=()),
    )
    assert series_service.series_to_json(result) == {
        "per_day": {"dates": ["2026-03-30", "2026-03-31"],
                    "opened": [{"team": "net", "counts": [1, 2], "total": 3},
                               {"team": None, "counts": [0, 1], "total": 1}],
                    "opened_total": [1, 3], "backlog": [3, 4]},
        "per_week": {
            "weeks": ["2026-03-30"],
            "first_response": {
                "all": [{"tickets": 2, "p50_seconds": 60, "p90_seconds": 90}],
                "teams": [{"team": "net", "weeks": [
                    {"tickets": 2, "p50_seconds": 60, "p90_seconds": 90}]}]},
            "resolution": {"all": [{"tickets": 0, "p50_seconds": None, "p90_seconds": None}],
                           "teams": []},
        },
    }


def test_the_window_must_not_be_empty(store: Store) -> None:
    """`since` after `now` is a programming error."""
    with store.sessions() as session, pytest.raises(ValueError, match="before now"):
        series_service.compute_series(session, since=NOW, now=NOW)


def test_days_are_utc_whatever_the_servers_time_zone(store: Store) -> None:
    """A PostgreSQL session in another time zone (the server's default, or a DBA's choice)
    cuts the same UTC days: tickets near midnight count on their UTC date."""
    with store.sessions.begin() as session:
        generate(session, now=NOW, days=20)
        desk = Desk(session)
        desk.ticket("a@x.example", age=DAY / 2 + timedelta(minutes=1), team="night")  # 23:59
        desk.ticket("a@x.example", age=DAY / 2 - timedelta(minutes=1), team="night")  # 00:01
    with store.sessions() as session:
        in_utc = series_service.compute_series(session, since=NOW - 14 * DAY, now=NOW)
    with store.engine.connect() as conn:
        if store.backend == "postgres":
            conn.exec_driver_sql("SET TIME ZONE 'Pacific/Kiritimati'")  # UTC+14
        elsewhere = series_service.compute_series(conn, since=NOW - 14 * DAY, now=NOW)
    assert elsewhere == in_utc
    night = next(t for t in in_utc.opened if t.team == "night")
    assert night.counts[-3:] == (0, 1, 1)


def test_a_response_stamped_before_its_ticket_counts_as_no_time(store: Store) -> None:
    """Two writers' clocks a little apart can stamp the first response before the ticket's
    creation: it counts as 0 s, in the medians and in the weekly percentiles alike."""
    with store.sessions.begin() as session:
        desk = Desk(session)
        desk.ticket("a@x.example", age=DAY, responded=-timedelta(minutes=5), team="support")
        desk.ticket("a@x.example", age=DAY, responded=HOUR, team="support")
    with store.sessions() as session:
        overview = stats.compute(session, now=NOW, days=7)
    assert overview.first_response == stats.Median(2, HOUR / 2)
    assert series(store).first_response.all[-1] == Spread(2, 1800, 3240)
