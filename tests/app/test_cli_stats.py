"""`helpdesk stats` against a real store with hand-made tickets around the real clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from helpdesk.cli import cli
from helpdesk.store.models import Contact, Team, Ticket, TicketTag
from tests.conftest import Store

CONFIG = """\
[helpdesk]
support_address = "support@example.com"

[database]
url = "{url}"

[[team]]
name = "networking"
"""


@pytest.fixture
def config(store: Store, tmp_path: Path) -> Path:
    path = tmp_path / "helpdesk.toml"
    path.write_text(CONFIG.format(url=store.url))
    return path


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False,
                              env={"HELPDESK_DATABASE_URL": None})


@pytest.fixture
def desk(store: Store) -> None:
    """Three VPN tickets this week (networking), one the week before, one printer ticket."""
    now = datetime.now(UTC)
    with store.sessions.begin() as session:
        net = Team(name="networking-extra")
        dana = Contact(address="dana@corp.example", name="Dana")
        kim = Contact(address="kim@shop.example", name="Kim")

        def ticket(who: Contact, age: timedelta, tag: str, *, status: str = "open",
                   team: Team | None = None, responded: timedelta | None = None,
                   resolved: timedelta | None = None) -> None:
            created = now - age
            session.add(Ticket(
                subject="s", status=status, priority="normal", requester=who, team=team,
                created_at=created, updated_at=created,
                first_response_at=created + responded if responded else None,
                resolved_at=created + resolved if resolved else None,
                tags=[TicketTag(tag=tag)],
            ))

        day = timedelta(days=1)
        ticket(dana, 1 * day, "vpn", team=net, responded=timedelta(hours=3, minutes=20))
        ticket(dana, 2 * day, "vpn", team=net, status="pending", responded=timedelta(hours=1))
        ticket(dana, 3 * day, "vpn", team=net, status="resolved",
               responded=timedelta(hours=5), resolved=timedelta(days=1, hours=2))
        ticket(kim, 10 * day, "vpn", team=net, status="closed")
        ticket(kim, 2 * day, "printer", status="new")


@pytest.mark.usefixtures("desk")
def test_stats_json(config: Path) -> None:
    """--json gives open tickets by team and status, medians and the top lists with trends."""
    result = run(config, "stats", "--days", "7", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["days"] == 7
    assert data["open"] == [
        {"team": "networking-extra", "new": 0, "open": 1, "pending": 1, "total": 2},
        {"team": None, "new": 1, "open": 0, "pending": 0, "total": 1},
    ]
    assert data["created"] == {"tickets": 4, "previous": 1, "trend": "+300%"}
    assert data["first_response"] == {"tickets": 3, "seconds": 12000, "human": "3h 20m"}
    assert data["resolution"] == {"tickets": 1, "seconds": 93600, "human": "1d 2h"}
    assert data["tags"] == [
        {"key": "vpn", "tickets": 3, "previous": 1, "trend": "+200%"},
        {"key": "printer", "tickets": 1, "previous": 0, "trend": "new"},
    ]
    assert [(t["key"], t["trend"]) for t in data["teams"]] == [
        ("networking-extra", "+200%"), (None, "new")]
    assert [(d["key"], d["tickets"], d["previous"], d["trend"]) for d in data["domains"]] == [
        ("corp.example", 3, 0, "new"), ("shop.example", 1, 1, "0%")]


@pytest.mark.usefixtures("desk")
def test_stats_table(config: Path) -> None:
    """Without --json: an open-tickets table, the medians in words, and the top lists."""
    result = run(config, "stats", "--days", "7")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Open tickets"
    assert lines[1].split() == ["TEAM", "NEW", "OPEN", "PENDING", "TOTAL"]
    assert lines[2].split() == ["networking-extra", "0", "1", "1", "2"]
    assert lines[3].split() == ["(no", "team)", "1", "0", "0", "1"]
    assert lines[4].split() == ["total", "1", "1", "1", "3"]
    assert lines[6].startswith("Last 7 days (")
    assert lines[7].split() == ["tickets", "created", "4", "(before:", "1,", "+300%)"]
    assert lines[8].split() == ["median", "first", "response", "3h", "20m", "(3", "tickets)"]
    assert lines[9].split() == ["median", "resolution", "1d", "2h", "(1", "ticket)"]
    tags = lines.index("Top tags")
    assert lines[tags + 1].split() == ["TAG", "TICKETS", "BEFORE", "TREND"]
    assert lines[tags + 2].split() == ["vpn", "3", "1", "+200%"]
    assert lines[tags + 3].split() == ["printer", "1", "0", "new"]
    domains = lines.index("Top sender domains")
    assert lines[domains + 2].split() == ["corp.example", "3", "0", "new"]


def test_stats_on_an_empty_desk(config: Path) -> None:
    """With no tickets every section says so, and the exit code is 0."""
    result = run(config, "stats")
    assert result.exit_code == 0, result.output
    assert result.output.count("None.") == 4
    assert "median first response  - (no tickets)" in result.output


def test_stats_bad_window_is_usage_error(config: Path) -> None:
    """A window of zero days is a usage error (exit 2)."""
    assert run(config, "stats", "--days", "0").exit_code == 2
