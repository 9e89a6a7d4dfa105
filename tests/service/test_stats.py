"""Stats: open tickets, medians and what causes the most work, with a controllable `now`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.desk import stats
from helpdesk.store.db import reading_together
from helpdesk.store.listing import TicketFilter
from helpdesk.store.models import Agent, AgentAddress, Contact, Team, Ticket, TicketTag
from tests.conftest import Store

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


class Desk:
    """Hand-made tickets with chosen timestamps, inserted through the ORM."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.teams: dict[str, Team] = {}
        self.agent: Agent | None = None

    def ticket(
        self,
        requester: str,
        *,
        age: timedelta,
        status: str = "new",
        team: str | None = None,
        tags: tuple[str, ...] = (),
        responded: timedelta | None = None,
        resolved: timedelta | None = None,
        merged_into: int | None = None,
        priority: str = "normal",
        subject: str = "s",
        assigned: bool = False,
    ) -> int:
        created = NOW - age
        contact = self.session.scalars(
            select(Contact).where(Contact.address == requester)).first()
        if team is not None and team not in self.teams:
            self.teams[team] = Team(name=team)
        if assigned and self.agent is None:
            self.agent = Agent(name="Alice", addresses=[AgentAddress(address="alice@x.example")])
        ticket = Ticket(
            subject=subject, status=status, priority=priority,
            assignee=self.agent if assigned else None,
            requester=contact or Contact(address=requester, name=""),
            team=self.teams[team] if team else None,
            created_at=created, updated_at=created,
            first_response_at=created + responded if responded is not None else None,
            resolved_at=created + resolved if resolved is not None else None,
            merged_into_id=merged_into,
        )
        ticket.tags = [TicketTag(tag=t) for t in tags]
        self.session.add(ticket)
        self.session.flush()
        return ticket.id


def compute(store: Store, flt: TicketFilter | None = None, *, days: int = 30,
            top: int = 10) -> stats.Stats:
    """The stats as a session computes them; on PostgreSQL also with the queries side by
    side on two connections (`helpdesk stats`' way), which must agree to the last figure."""
    with store.sessions() as session:
        alone = stats.compute(session, now=NOW, flt=flt, days=days, top=top)
    with reading_together(store.engine, 2) as (conn, *beside):
        assert len(beside) == (1 if store.backend == "postgres" else 0)
        together = stats.compute(conn, now=NOW, flt=flt, days=days, top=top, beside=beside)
    assert together == alone
    return together


def test_open_tickets_by_team_and_status(store: Store) -> None:
    """New, open and pending tickets are counted per team (None: no team), busiest first."""
    with store.sessions.begin() as session:
        desk = Desk(session)
        desk.ticket("a@x.example", age=100 * DAY, status="open", team="networking")
        desk.ticket("a@x.example", age=DAY, status="new", team="networking")
        desk.ticket("a@x.example", age=DAY, status="pending", team="networking")
        desk.ticket("a@x.example", age=DAY, status="resolved", team="networking")
        desk.ticket("a@x.example", age=DAY, status="new")
        desk.ticket("a@x.example", age=DAY, status="closed", team="support")
    result = compute(store)
    assert [(r.team, dict(r.by_status), r.total) for r in result.open_tickets] == [
        ("networking", {"new": 1, "open": 1, "pending": 1}, 3),
        (None, {"new": 1}, 1),
    ]


def test_medians_over_tickets_created_in_the_window(store: Store) -> None:
    """First-response and resolution medians count only tickets created in the window."""
    with store.sessions.begin() as session:
        desk = Desk(session)
        hour = timedelta(hours=1)
        desk.ticket("a@x.example", age=2 * DAY, responded=hour, resolved=DAY, status="resolved")
        desk.ticket("a@x.example", age=3 * DAY, responded=2 * hour, resolved=3 * DAY,
                    status="closed")
        desk.ticket("a@x.example", age=4 * DAY, responded=timedelta(hours=3, minutes=20))
        desk.ticket("a@x.example", age=5 * DAY)  # no answer yet: not in the medians
        # Created before the window: ignored however slow.
        desk.ticket("a@x.example", age=40 * DAY, responded=30 * DAY, resolved=31 * DAY)
    result = compute(store, days=30)
    assert result.first_response == stats.Median(3, 2 * hour)
    assert result.resolution == stats.Median(2, 2 * DAY)
    assert (result.created.current, result.created.previous) == (4, 1)
    assert stats.format_duration(result.first_response.median) == "2h"


def test_no_tickets_no_medians(store: Store) -> None:
    """An empty help desk has no medians and nothing on top."""
    result = compute(store)
    assert result.first_response == stats.Median(0, None)
    assert result.resolution == stats.Median(0, None)
    assert (result.open_tickets, result.tags, result.teams, result.domains) == ((), (), (), ())
    assert (result.created.current, result.created.previous, result.created.trend) == (0, 0, "-")


def test_top_tags_teams_and_domains_with_trends(store: Store) -> None:
    """Each top list is ranked by tickets in the window and compared with the window before."""
    with store.sessions.begin() as session:
        desk = Desk(session)
        now_ = 2 * DAY   # in the current 7-day window
        then = 9 * DAY   # in the previous one
        for _ in range(3):
            desk.ticket("dana@corp.example", age=now_, tags=("vpn",), team="networking")
        desk.ticket("sam@corp.example", age=then, tags=("vpn",), team="networking")
        desk.ticket("kim@shop.example", age=now_, tags=("printer",))
        desk.ticket("kim@shop.example", age=now_, tags=("email", "vpn"), team="support")
        desk.ticket("kim@shop.example", age=then, tags=("email",), team="support")
        desk.ticket("kim@shop.example", age=then, tags=("email",), team="support")
        # Too old for either window, and a merged duplicate: neither counts.
        desk.ticket("old@corp.example", age=30 * DAY, tags=("vpn",))
        desk.ticket("dup@corp.example", age=now_, tags=("vpn",), merged_into=1)
    result = compute(store, days=7)

    def rows(counts: tuple[stats.Count, ...]) -> list[tuple[str | None, int, int, str]]:
        return [(c.key, c.current, c.previous, c.trend) for c in counts]

    assert rows(result.tags) == [
        ("vpn", 4, 1, "+300%"), ("email", 1, 2, "-50%"), ("printer", 1, 0, "new")]
    assert rows(result.teams) == [
        ("networking", 3, 1, "+200%"), ("support", 1, 2, "-50%"), (None, 1, 0, "new")]
    assert rows(result.domains) == [
        ("corp.example", 3, 1, "+200%"), ("shop.example", 2, 2, "0%")]
    assert rows((result.created,)) == [("tickets", 5, 3, "+67%")]
    assert rows(compute(store, days=7, top=1).tags) == [("vpn", 4, 1, "+300%")]


def test_json_has_seconds_and_words(store: Store) -> None:
    """`to_json` gives durations in seconds and words, and the trend with each count."""
    with store.sessions.begin() as session:
        Desk(session).ticket("a@x.example", age=DAY, tags=("vpn",),
                             responded=timedelta(minutes=90))
    data = stats.to_json(compute(store))
    assert data["first_response"] == {"tickets": 1, "seconds": 5400, "human": "1h 30m"}
    assert data["resolution"] == {"tickets": 0, "seconds": None, "human": "-"}
    assert data["tags"] == [{"key": "vpn", "tickets": 1, "previous": 0, "trend": "new"}]
    assert data["open"] == [{"team": None, "new": 1, "open": 0, "pending": 0, "total": 1}]
    assert (data["since"], data["previous_since"]) == (NOW - 30 * DAY, NOW - 60 * DAY)


@pytest.mark.parametrize(
    ("current", "previous", "expected"),
    [(7, 5, "+40%"), (9, 10, "-10%"), (3, 3, "0%"), (2, 0, "new"), (0, 0, "-"), (0, 4, "-100%")],
)
def test_trend(current: int, previous: int, expected: str) -> None:
    """The trend is the change against the previous window, rounded to a percent."""
    assert stats.trend(current, previous) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(seconds=45), "45s"),
        (timedelta(minutes=12, seconds=40), "12m"),
        (timedelta(hours=3, minutes=20), "3h 20m"),
        (timedelta(hours=5), "5h"),
        (timedelta(days=2, hours=4, minutes=59), "2d 4h"),
        (timedelta(days=1), "1d"),
        (timedelta(seconds=-5), "0s"),
        (None, "-"),
    ],
)
def test_format_duration(value: timedelta | None, expected: str) -> None:
    """Durations read like `3h 20m`: the two largest units, truncated; seconds under a minute."""
    assert stats.format_duration(value) == expected


@pytest.fixture
def mixed(store: Store) -> None:
    """Open and recent tickets that differ in tag, priority, assignee and subject."""
    with store.sessions.begin() as session:
        desk = Desk(session)
        hour = timedelta(hours=1)
        desk.ticket("a@corp.example", age=DAY, tags=("vpn",), priority="high", subject="VPN down",
                    responded=hour, status="open", team="networking")
        desk.ticket("b@corp.example", age=2 * DAY, tags=("vpn",), subject="vpn slow",
                    responded=3 * hour, assigned=True, status="open", team="networking")
        desk.ticket("c@shop.example", age=3 * DAY, tags=("printer",), priority="high",
                    subject="Printer", responded=5 * hour)
        desk.ticket("d@shop.example", age=12 * DAY, tags=("vpn",), priority="high",
                    subject="VPN again", status="open")


def test_filters_narrow_every_figure(store: Store, mixed: None) -> None:
    """--tag, --priority, --unassigned and --subject narrow the open tickets, the counts, the
    medians and the top lists alike."""
    by_tag = compute(store, TicketFilter(tags=("vpn",)), days=7)
    assert (by_tag.created.current, by_tag.created.previous) == (2, 1)
    assert by_tag.first_response == stats.Median(2, timedelta(hours=2))
    assert [(c.key, c.current) for c in by_tag.tags] == [("vpn", 2)]
    assert [(r.team, r.total) for r in by_tag.open_tickets] == [("networking", 2), (None, 1)]
    high = compute(store, TicketFilter(priority="high"), days=7)
    assert [(c.key, c.current) for c in high.domains] == [("corp.example", 1),
                                                           ("shop.example", 1)]
    assert high.first_response == stats.Median(2, timedelta(hours=3))
    unassigned = compute(store, TicketFilter(unassigned=True, tags=("vpn",)), days=7)
    assert (unassigned.created.current, unassigned.created.previous) == (1, 1)
    by_subject = compute(store, TicketFilter(subject="vpn"), days=7)
    assert [(c.key, c.current, c.previous) for c in by_subject.tags] == [("vpn", 2, 1)]
    assert by_subject.filters == ("subject=vpn",)
    assert stats.to_json(by_subject)["filters"] == ["subject=vpn"]


def test_since_sets_the_window(store: Store, mixed: None) -> None:
    """--since starts the window there (instead of --days) and the previous window is as
    long."""
    result = compute(store, TicketFilter(since=NOW - timedelta(hours=60)))
    assert result.since == NOW - timedelta(hours=60)
    assert result.previous_since == NOW - timedelta(hours=120)
    assert (result.created.current, result.created.previous) == (2, 1)
    assert result.first_response == stats.Median(2, timedelta(hours=2))
