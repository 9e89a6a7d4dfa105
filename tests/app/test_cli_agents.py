"""`helpdesk agents` and `helpdesk teams` against a real store, beside the config's directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from helpdesk.cli import cli
from helpdesk.store.models import Contact, Team, Ticket
from tests.conftest import Store

CONFIG = """\
[helpdesk]
support_address = "support@example.com"

[database]
url = "{url}"

[[team]]
name = "networking"
address = "net@example.com"

[[agent]]
name = "Alice Admin"
addresses = ["alice@example.com"]
teams = ["networking"]
"""


@pytest.fixture
def config(store: Store, tmp_path: Path) -> Path:
    path = tmp_path / "helpdesk.toml"
    path.write_text(CONFIG.format(url=store.url))
    return path


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False,
                              env={"HELPDESK_DATABASE_URL": None})


def agents(config: Path) -> list[dict[str, object]]:
    result = run(config, "agents", "list", "--json")
    assert result.exit_code == 0, result.output
    rows: list[dict[str, object]] = json.loads(result.output)
    return rows


def test_agents_list_shows_the_config_agents(config: Path) -> None:
    """The config's agents are in the store and listed with every documented key."""
    assert agents(config) == [{
        "name": "Alice Admin", "address": "alice@example.com",
        "addresses": ["alice@example.com"], "teams": ["networking"],
        "active": True, "notify": True,
    }]


def test_agents_add_lives_beside_the_config(config: Path) -> None:
    """An added agent is listed next to the config's and survives the next command's sync."""
    result = run(config, "agents", "add", "Bob@Example.com", "--name", "Bob Builder",
                 "--team", "networking", "--address", "bob@home.example", "--no-notify")
    assert result.exit_code == 0, result.output
    assert result.output == "agent Bob Builder <bob@example.com> added in networking\n"
    assert [(a["name"], a["addresses"], a["teams"], a["active"], a["notify"])
            for a in agents(config)] == [
        ("Alice Admin", ["alice@example.com"], ["networking"], True, True),
        ("Bob Builder", ["bob@example.com", "bob@home.example"], ["networking"], True, False),
    ]


def test_agents_list_table(config: Path) -> None:
    """Without --json the agents are a table with a header row."""
    lines = run(config, "agents", "list").output.splitlines()
    assert lines[0].split() == ["NAME", "ACTIVE", "NOTIFY", "TEAMS", "ADDRESSES"]
    assert lines[1].split() == ["Alice", "Admin", "yes", "yes", "networking",
                                "alice@example.com"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("alice@example.com", "--name", "Imposter"),
         "alice@example.com already belongs to agent Alice Admin (alice@example.com)"),
        (("carl@example.com", "--name", "Carl", "--address", "ALICE@example.com"),
         "alice@example.com already belongs to agent Alice Admin"),
        (("carl@example.com", "--name", "Carl", "--team", "printers"), "no team printers"),
        (("support@example.com", "--name", "Desk"), "one of the help desk's own addresses"),
        (("carl", "--name", "Carl"), "not an e-mail address: 'carl'"),
    ],
)
def test_agents_add_refusals_exit_1(config: Path, args: tuple[str, ...], message: str) -> None:
    """Another agent's address, an unknown team or our own address is exit 1; nothing added."""
    result = run(config, "agents", "add", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert len(agents(config)) == 1


def test_agents_add_needs_a_name(config: Path) -> None:
    """--name is required: a usage error, exit 2."""
    assert run(config, "agents", "add", "carl@example.com").exit_code == 2


def test_agents_disable_enable_and_notify(config: Path) -> None:
    """Disable, enable and notification opt-out persist, also for a config agent."""
    result = run(config, "agents", "disable", "ALICE@example.com")
    assert (result.exit_code, result.output) == (
        0, "agent Alice Admin <alice@example.com> is disabled\n")
    assert agents(config)[0]["active"] is False
    assert run(config, "agents", "notify", "alice@example.com", "off").output == (
        "notifications for Alice Admin <alice@example.com> are off\n")
    assert run(config, "agents", "enable", "alice@example.com").exit_code == 0
    assert (agents(config)[0]["active"], agents(config)[0]["notify"]) == (True, False)
    data = json.loads(run(config, "agents", "notify", "alice@example.com", "on", "--json").output)
    assert data["notify"] is True


def test_agents_unknown_is_exit_1_and_bad_setting_exit_2(config: Path) -> None:
    """An unknown agent is exit 1; a notify setting other than on/off is exit 2."""
    result = run(config, "agents", "disable", "nobody@example.com")
    assert (result.exit_code, "no agent nobody@example.com" in result.output) == (1, True)
    assert run(config, "agents", "notify", "alice@example.com", "maybe").exit_code == 2


def test_disabled_agent_cannot_be_assigned(config: Path, store: Store) -> None:
    """A disabled agent is refused by `tickets assign` (exit 1)."""
    with store.sessions.begin() as session:
        session.add(Ticket(subject="x", status="new", priority="normal",
                           requester=Contact(address="dana@example.com", name="")))
    run(config, "agents", "disable", "alice@example.com")
    result = run(config, "tickets", "assign", "1", "--to", "alice@example.com")
    assert result.exit_code == 1
    assert "agent alice@example.com is disabled" in result.output


def test_teams_add_and_list(config: Path, store: Store) -> None:
    """Teams list their address, members and open tickets; an added team is listed too."""
    result = run(config, "teams", "add", "printers", "--address", "Printers@Example.com",
                 "--lead", "head.of.print@example.com")
    assert (result.exit_code, result.output) == (
        0, "team printers added (printers@example.com)\n")
    run(config, "agents", "add", "bob@example.com", "--name", "Bob", "--team", "printers",
        "--team", "networking")
    with store.sessions.begin() as session:
        net = session.scalars(select(Team).where(Team.name == "networking")).one()
        dana = Contact(address="dana@example.com", name="")
        for status in ("new", "pending", "resolved"):
            session.add(Ticket(subject="x", status=status, priority="normal", requester=dana,
                               team=net))
    data = json.loads(run(config, "teams", "list", "--json").output)
    assert data == [
        {"name": "networking", "address": "net@example.com", "lead": None,
         "members": ["alice@example.com", "bob@example.com"], "open_tickets": 2},
        {"name": "printers", "address": "printers@example.com",
         "lead": "head.of.print@example.com", "members": ["bob@example.com"],
         "open_tickets": 0},
    ]
    lines = run(config, "teams", "list").output.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "OPEN", "MEMBERS"]
    assert lines[1].split() == ["networking", "net@example.com", "2", "alice@example.com,",
                                "bob@example.com"]


def test_teams_add_existing_is_exit_1(config: Path) -> None:
    """A team name that exists (here from the config) is refused with exit 1."""
    result = run(config, "teams", "add", "networking")
    assert result.exit_code == 1
    assert "team networking exists already" in result.output
