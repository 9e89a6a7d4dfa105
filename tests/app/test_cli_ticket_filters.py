"""`tickets list` and `stats` filters through the CLI, and what a command costs in statements."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, event

from helpdesk.cli import cli
from helpdesk.cli.filters import parse_since
from helpdesk.store.models import Agent, AgentAddress, Contact, Ticket, TicketTag
from tests.conftest import Store

BASE = """\
[helpdesk]
support_address = "support@example.com"

[database]
url = "{url}"
"""
TEAMS = ("support", "networking", "infrastructure", "identity-and-access", "security")


def directory_config(agents: int) -> str:
    """Five teams and `agents` agents, each with two addresses and two teams."""
    text = "".join(f'\n[[team]]\nname = "{t}"\naddress = "{t}@example.com"\n' for t in TEAMS)
    for i in range(agents):
        text += (f'\n[[agent]]\nname = "Agent {i}"\n'
                 f'addresses = ["agent{i}@example.com", "a{i}@corp.example.com"]\n'
                 f'teams = ["{TEAMS[i % 5]}", "{TEAMS[(i + 1) % 5]}"]\n')
    return text


def write_config(store: Store, tmp_path: Path, agents: int = 0) -> Path:
    path = tmp_path / "helpdesk.toml"
    path.write_text(BASE.format(url=store.url) + directory_config(agents))
    return path


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False,
                              env={"HELPDESK_DATABASE_URL": None})


@pytest.fixture
def desk(store: Store) -> None:
    now = datetime.now(UTC)
    with store.sessions.begin() as session:
        alice = Agent(name="Alice", addresses=[AgentAddress(address="alice@example.com")])
        dana = Contact(address="dana@example.com", name="Dana")
        for subject, priority, agent, tags, age in [
            ("VPN drops", "high", None, ("vpn",), timedelta(days=10)),
            ("vpn slow", "normal", alice, ("vpn", "remote"), timedelta(hours=5)),
            ("Printer", "high", None, ("printer",), timedelta(hours=1)),
        ]:
            session.add(Ticket(subject=subject, status="open", priority=priority, assignee=agent,
                               requester=dana, created_at=now - age, updated_at=now - age,
                               tags=[TicketTag(tag=t) for t in tags]))


def subjects(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [row["subject"] for row in json.loads(result.output)]


def test_list_filters_on_the_command_line(store: Store, tmp_path: Path, desk: None) -> None:
    """Each new option narrows `tickets list`, alone and combined."""
    config = write_config(store, tmp_path)
    assert subjects(run(config, "tickets", "list", "--json", "--tag", "vpn")) == [
        "vpn slow", "VPN drops"]
    assert subjects(run(config, "tickets", "list", "--json", "--tag", "vpn",
                        "--tag", "remote")) == ["vpn slow"]
    assert subjects(run(config, "tickets", "list", "--json", "--priority", "high")) == [
        "Printer", "VPN drops"]
    assert subjects(run(config, "tickets", "list", "--json", "--since", "1d")) == [
        "Printer", "vpn slow"]
    assert subjects(run(config, "tickets", "list", "--json", "--unassigned")) == [
        "Printer", "VPN drops"]
    assert subjects(run(config, "tickets", "list", "--json", "--subject", "VpN",
                        "--unassigned")) == ["VPN drops"]
    since = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
    assert subjects(run(config, "tickets", "list", "--json", "--since", since)) == [
        "Printer", "vpn slow"]
    table = run(config, "tickets", "list", "--tag", "printer")
    assert table.exit_code == 0
    assert "Printer" in table.output
    assert "vpn" not in table.output


def test_bad_filter_values_are_usage_errors(store: Store, tmp_path: Path) -> None:
    """A --since that is neither a date nor a duration, and --unassigned with --assignee, exit 2
    with the reason."""
    config = write_config(store, tmp_path)
    bad = run(config, "tickets", "list", "--since", "last tuesday")
    assert bad.exit_code == 2
    assert "neither a date" in bad.output
    both = run(config, "tickets", "list", "--unassigned", "--assignee", "alice@example.com")
    assert both.exit_code == 2
    assert "exclude each other" in both.output
    future = run(config, "stats", "--since", "2999-01-01")
    assert future.exit_code == 2


def test_stats_takes_the_same_filters(store: Store, tmp_path: Path, desk: None) -> None:
    """`stats --tag vpn --since 7d`: the window starts 7 days back, vpn tickets only."""
    config = write_config(store, tmp_path)
    result = run(config, "stats", "--json", "--tag", "vpn", "--since", "7d")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["created"]["tickets"] == 1
    assert data["created"]["previous"] == 1
    assert data["tags"] == [{"key": "remote", "tickets": 1, "previous": 0, "trend": "new"},
                            {"key": "vpn", "tickets": 1, "previous": 1, "trend": "0%"}]
    assert data["filters"][0] == "tag=vpn"
    text = run(config, "stats", "--since", "12h", "--priority", "high")
    assert text.exit_code == 0, text.output
    assert "Tickets matching priority=high" in text.output
    assert "Last 12h (" in text.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7d", timedelta(days=7)), ("12h", timedelta(hours=12)), ("2w", timedelta(weeks=2)),
     ("1d12h", timedelta(days=1, hours=12)), ("90m", timedelta(minutes=90)),
     ("3D", timedelta(days=3))],
)
def test_since_durations(text: str, expected: timedelta) -> None:
    """A duration means that long before now."""
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    assert parse_since(text, now) == now - expected


def test_since_dates() -> None:
    """A date is midnight UTC; a date and time is UTC unless it names its offset."""
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("2026-11-01T08:30", now) == datetime(2026, 11, 1, 8, 30, tzinfo=UTC)
    assert parse_since("2026-11-01T08:30+02:00", now) == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
    for bad in ("", "7", "d7", "yesterday", "2026-13-01"):
        with pytest.raises(ValueError, match="neither a date"):
            parse_since(bad, now)


class Statements:
    """Counts the SQL statements sent to any database while active."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    @property
    def count(self) -> int:
        return len(self.texts)

    def directory(self) -> list[str]:
        """The statements that read or write agents or teams themselves (the ticket list
        only joins team names and agent addresses)."""
        words = ("FROM teams", "FROM agents", "INTO teams", "INTO agents", "INTO agent_addresses",
                 "INTO team_members", "UPDATE teams", "UPDATE agents", "DELETE FROM team_members")
        return [t for t in self.texts if any(w in " ".join(t.split()) for w in words)]

    def __enter__(self) -> Statements:
        event.listen(Engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: object, cursor: object, statement: str, *rest: object) -> None:
        self.texts.append(statement)


def statements_for_list(config: Path) -> Statements:
    with Statements() as seen:
        result = run(config, "tickets", "list")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "No tickets."
    return seen


def test_a_command_on_an_unchanged_directory_runs_a_handful_of_statements(
    store: Store, tmp_path: Path
) -> None:
    """`tickets list` on a fresh store mirrors the directory once (a fixed number of reads,
    however many agents); after that a command runs a handful of statements, not a few per
    agent (it was 4 + 3 per agent: ~110 for a desk of 35 agents)."""
    config = write_config(store, tmp_path, agents=30)
    first = statements_for_list(config)
    assert first.directory()
    again = statements_for_list(config)
    assert again.directory() == []
    assert again.count <= 8
    assert first.count <= again.count + 6 + 5 * 30  # reads, then at most one insert per row
    config.write_text(BASE.format(url=store.url) + directory_config(31))
    changed = statements_for_list(config)  # one more agent: the same reads, a few writes
    # The new agent's rows, and the file paired with what the store now mirrors.
    assert again.count < changed.count <= again.count + 18
    assert statements_for_list(config).count == again.count
