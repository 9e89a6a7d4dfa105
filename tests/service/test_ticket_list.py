"""`tickets list` and its filters (listing.list_tickets) on a real store, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from helpdesk.store import listing
from helpdesk.store.listing import TicketFilter
from helpdesk.store.models import Agent, AgentAddress, Contact, Message, Team, Ticket, TicketTag
from tests.conftest import Store

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def desk(store: Store) -> dict[str, int]:
    """Six tickets, updated an hour apart (t1 oldest), with what each filter looks at."""
    ids: dict[str, int] = {}
    with store.sessions.begin() as session:
        net = Team(name="networking")
        alice = Agent(name="Alice", addresses=[AgentAddress(address="alice@example.com"),
                                               AgentAddress(address="a.admin@example.com")])
        dana = Contact(address="dana@example.com", name="Dana")
        kim = Contact(address="kim@example.org", name="Kim")
        rows = [
            ("t1", "VPN drops every hour", "open", "high", net, alice, dana, ("vpn", "remote")),
            ("t2", "Printer jammed", "new", "normal", None, None, kim, ()),
            ("t3", "vpn: no route to host", "pending", "urgent", net, None, kim, ("vpn",)),
            ("t4", "New laptop for Jo", "resolved", "low", None, alice, dana, ("hardware",)),
            ("t5", "Ärger mit dem VPN-Client", "open", "normal", net, None, dana, ("vpn",)),
            ("t6", "100% disk on fs_01", "new", "high", None, None, kim, ("remote",)),
        ]
        for hour, (key, subject, status, priority, team, agent, who, tags) in enumerate(rows):
            at = NOW - timedelta(hours=len(rows) - hour)
            ticket = Ticket(subject=subject, status=status, priority=priority, team=team,
                            assignee=agent, requester=who, created_at=at, updated_at=at,
                            tags=[TicketTag(tag=t) for t in tags])
            session.add(ticket)
            session.flush()
            ids[key] = ticket.id
        _messages(session, ids["t1"], 3)
        _messages(session, ids["t5"], 1)
    return ids


def _messages(session: Session, ticket_id: int, n: int) -> None:
    for i in range(n):
        session.add(Message(ticket_id=ticket_id, direction="in", kind="customer",
                            message_id=f"<{ticket_id}-{i}@x>", content_hash=f"{ticket_id}-{i}"))


def listed(store: Store, desk: dict[str, int], **filters: object) -> list[str]:
    """The keys of the listed tickets, newest first."""
    names = {v: k for k, v in desk.items()}
    with store.sessions() as session:
        rows = listing.list_tickets(session, TicketFilter(**filters))  # type: ignore[arg-type]
    return [names[r.id] for r in rows]


def test_newest_first_with_names_and_message_counts(store: Store, desk: dict[str, int]) -> None:
    """Every ticket, most recently updated first; names joined, messages counted per ticket."""
    with store.sessions() as session:
        rows = listing.list_tickets(session, TicketFilter())
    assert [r.id for r in rows] == [desk[k] for k in ("t6", "t5", "t4", "t3", "t2", "t1")]
    by_id = {r.id: r for r in rows}
    first = by_id[desk["t1"]]
    assert (first.team, first.assignee, first.requester, first.message_count) == (
        "networking", "alice@example.com", "dana@example.com", 3)
    assert (by_id[desk["t5"]].message_count, by_id[desk["t2"]].message_count) == (1, 0)
    assert by_id[desk["t2"]].team is None
    assert by_id[desk["t2"]].assignee is None


def test_limit_keeps_the_newest(store: Store, desk: dict[str, int]) -> None:
    """The limit applies after ordering."""
    assert listed(store, desk, limit=2) == ["t6", "t5"]


def test_one_tag(store: Store, desk: dict[str, int]) -> None:
    """--tag vpn: the tickets tagged vpn."""
    assert listed(store, desk, tags=["vpn"]) == ["t5", "t3", "t1"]


def test_several_tags_mean_every_one(store: Store, desk: dict[str, int]) -> None:
    """--tag vpn --tag remote: only tickets carrying both."""
    assert listed(store, desk, tags=["vpn", "remote"]) == ["t1"]
    assert listed(store, desk, tags=["vpn", "nosuchtag"]) == []


def test_priority(store: Store, desk: dict[str, int]) -> None:
    """--priority high."""
    assert listed(store, desk, priority="high") == ["t6", "t1"]


def test_since_means_updated_since(store: Store, desk: dict[str, int]) -> None:
    """--since: tickets with activity since then (the newest three here)."""
    assert listed(store, desk, since=NOW - timedelta(hours=3)) == ["t6", "t5", "t4"]
    assert listed(store, desk, since=NOW) == []


def test_unassigned(store: Store, desk: dict[str, int]) -> None:
    """--unassigned: no agent, whatever the team."""
    assert listed(store, desk, unassigned=True) == ["t6", "t5", "t3", "t2"]


def test_subject_contains_any_case(store: Store, desk: dict[str, int]) -> None:
    """--subject: a substring in any case; LIKE's wildcards in it are plain characters."""
    assert listed(store, desk, subject="VPN") == ["t5", "t3", "t1"]
    assert listed(store, desk, subject="Ärger") == ["t5"]
    assert listed(store, desk, subject="100%") == ["t6"]
    assert listed(store, desk, subject="fs_0") == ["t6"]
    assert listed(store, desk, subject="%") == ["t6"]
    assert listed(store, desk, subject="_") == ["t6"]


def test_assignee_by_any_of_the_agents_addresses(store: Store, desk: dict[str, int]) -> None:
    """--assignee matches the agent behind any of their addresses, in any case."""
    assert listed(store, desk, assignee="A.Admin@example.com") == ["t4", "t1"]
    assert listed(store, desk, assignee="nobody@example.com") == []


def test_team_requester_and_status(store: Store, desk: dict[str, int]) -> None:
    """The older filters still narrow, alone and together with the new ones."""
    assert listed(store, desk, team="networking") == ["t5", "t3", "t1"]
    assert listed(store, desk, team="nosuchteam") == []
    assert listed(store, desk, requester="KIM@example.org") == ["t6", "t3", "t2"]
    assert listed(store, desk, status=["new", "open"]) == ["t6", "t5", "t2", "t1"]
    assert listed(store, desk, status=["new", "open"], tags=["vpn"], unassigned=True,
                  priority="normal", subject="client") == ["t5"]


def test_describe_names_the_filters() -> None:
    """The words `stats` prints for the filters in force."""
    flt = TicketFilter(tags=("vpn", "remote"), priority="high", unassigned=True,
                       since=datetime(2026, 11, 1, tzinfo=UTC), subject="disk")
    assert flt.describe() == ("priority=high", "subject=disk", "tag=vpn", "tag=remote",
                              "unassigned", "since=2026-11-01T00:00+00:00")


def test_since_counts_activity_not_creation(store: Store, desk: dict[str, int]) -> None:
    """An old ticket with fresh activity is listed under --since; its age does not matter."""
    with store.sessions.begin() as session:
        session.get_one(Ticket, desk["t1"]).updated_at = NOW - timedelta(minutes=10)
    assert listed(store, desk, since=NOW - timedelta(minutes=30)) == ["t1"]
