"""The `helpdesk` command line, driven through Click's runner against a real store."""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from helpdesk.cli import EX_TEMPFAIL, cli
from tests.conftest import Store
from tests.mailfactory import make_mail
from tests.servers import free_port

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


def run(config: Path, *args: str, stdin: bytes | None = None) -> Result:
    runner = CliRunner()
    return runner.invoke(cli, ["--config", str(config), *args], input=stdin,
                         catch_exceptions=False, env={"HELPDESK_DATABASE_URL": None})


def write_mails(tmp_path: Path) -> list[Path]:
    first = make_mail()
    reply = make_mail(subject="Re: Printer on 3rd floor is jammed",
                      message_id="<req-2@mail.example.com>",
                      in_reply_to="<req-1@mail.example.com>")
    other = make_mail(subject="VPN drops every hour", sender="sam@example.org",
                      message_id="<vpn-1@example.org>")
    paths = []
    for i, raw in enumerate([first, reply, other]):
        path = tmp_path / f"{i}.eml"
        path.write_bytes(raw)
        paths.append(path)
    return paths


def test_ingest_files_prints_counts(config: Path, tmp_path: Path) -> None:
    """Files become tickets and replies; --json gives the four counts."""
    paths = write_mails(tmp_path)
    bad = tmp_path / "bad.eml"
    bad.write_bytes(b"\x00garbage")
    result = run(config, "ingest", "--json", *map(str, paths), str(bad), str(paths[0]))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "new_tickets": 2, "replies": 1, "duplicates": 1, "quarantined": 1, "refused": 0,
    }


def test_ingest_stdin_like_an_mta_pipe(config: Path) -> None:
    """With no file, one message is read from stdin."""
    result = run(config, "ingest", stdin=make_mail())
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 new tickets, 0 replies, 0 duplicates, 0 quarantined"


def test_ingest_mbox_and_maildir(config: Path, tmp_path: Path) -> None:
    """An mbox and a Maildir are read message by message."""
    box = mailbox.mbox(str(tmp_path / "in.mbox"))
    box.add(make_mail())
    box.add(make_mail(subject="Second", message_id="<two@example.com>"))
    box.close()
    md = mailbox.Maildir(str(tmp_path / "md"))
    md.add(make_mail(subject="Third", message_id="<three@example.com>"))
    result = run(config, "ingest", "--json", "--mbox", str(tmp_path / "in.mbox"),
                 "--maildir", str(tmp_path / "md"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["new_tickets"] == 3


def test_tickets_list_json_has_the_documented_keys(config: Path, tmp_path: Path) -> None:
    """`tickets list --json` is an array of objects with the documented keys."""
    run(config, "ingest", *map(str, write_mails(tmp_path)))
    result = run(config, "tickets", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 2
    expected = {"id", "reference", "subject", "status", "priority", "team", "assignee",
                "requester", "created_at", "updated_at", "message_count"}
    assert expected <= set(rows[0])
    printer = next(r for r in rows if r["subject"].startswith("Printer"))
    assert (printer["reference"], printer["message_count"]) == ("[#1]", 2)
    filtered = json.loads(run(config, "tickets", "list", "--json",
                              "--requester", "SAM@example.org").output)
    assert [r["subject"] for r in filtered] == ["VPN drops every hour"]


def test_tickets_list_table(config: Path, tmp_path: Path) -> None:
    """Without --json the list is a table with a header row."""
    run(config, "ingest", *map(str, write_mails(tmp_path)))
    result = run(config, "tickets", "list")
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["REF", "STATUS", "PRIO"]
    assert any("[#2]" in line and "VPN drops every hour" in line for line in lines)


def test_tickets_show_json(config: Path, tmp_path: Path) -> None:
    """`tickets show --json` holds the messages oldest first and the events."""
    run(config, "ingest", *map(str, write_mails(tmp_path)))
    data = json.loads(run(config, "tickets", "show", "1", "--json").output)
    assert data["id"] == 1
    assert [m["message_id"] for m in data["messages"]] == [
        "req-1@mail.example.com", "req-2@mail.example.com"]
    first = data["messages"][0]
    assert {"id", "kind", "direction", "from", "date", "subject", "message_id", "text",
            "new_text", "attachments"} <= set(first)
    assert (first["kind"], first["direction"]) == ("customer", "in")
    assert [e["kind"] for e in data["events"]] == ["ticket.created", "message.added"]


def test_show_unknown_ticket_exits_1(config: Path) -> None:
    """Asking for a ticket that does not exist is exit 1 with a plain message."""
    result = run(config, "tickets", "show", "999")
    assert result.exit_code == 1
    assert "no ticket 999" in result.output


def test_assign_and_status(config: Path, tmp_path: Path) -> None:
    """An agent from the config and a team can be assigned; status changes are events."""
    run(config, "ingest", *map(str, write_mails(tmp_path)))
    result = run(config, "tickets", "assign", "2", "--to", "alice@example.com",
                 "--team", "networking", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["assignee"], data["team"]) == ("alice@example.com", "networking")
    assert run(config, "tickets", "status", "2", "pending").exit_code == 0
    shown = json.loads(run(config, "tickets", "show", "2", "--json").output)
    assert shown["status"] == "pending"
    assert [e["kind"] for e in shown["events"]][-3:] == [
        "team.changed", "assignee.changed", "status.changed"]
    mine = json.loads(run(config, "tickets", "list", "--json", "--assignee",
                          "alice@example.com").output)
    assert [r["id"] for r in mine] == [2]


def test_assign_to_unknown_agent_exits_1(config: Path, tmp_path: Path) -> None:
    """An unknown agent is invalid input (exit 1), not a crash."""
    run(config, "ingest", *map(str, write_mails(tmp_path)))
    result = run(config, "tickets", "assign", "1", "--to", "nobody@example.com")
    assert result.exit_code == 1
    assert "no agent nobody@example.com" in result.output


def test_bad_status_is_usage_error(config: Path) -> None:
    """A status that does not exist is a usage error (exit 2)."""
    assert run(config, "tickets", "status", "1", "done").exit_code == 2


def test_quarantine_list_show_retry(config: Path, tmp_path: Path) -> None:
    """Quarantined mail is listed, shown with its error, and a retry that fails exits 1."""
    bad = tmp_path / "bad.eml"
    bad.write_bytes(b"Subject: lost sender\r\n\r\nhello\r\n")
    run(config, "ingest", str(bad))
    items = json.loads(run(config, "quarantine", "list", "--json").output)
    assert len(items) == 1
    assert "sender" in items[0]["error"]
    shown = run(config, "quarantine", "show", str(items[0]["id"]))
    assert "lost sender" in shown.output
    raw = run(config, "quarantine", "show", str(items[0]["id"]), "--raw")
    assert raw.stdout_bytes == bad.read_bytes()
    retried = run(config, "quarantine", "retry", str(items[0]["id"]))
    assert retried.exit_code == 1
    assert "still fails" in retried.output


def test_outdated_schema_says_how_to_upgrade(tmp_path: Path) -> None:
    """A database without our schema is refused with the command that fixes it."""
    config = tmp_path / "helpdesk.toml"
    config.write_text(CONFIG.format(url=f"sqlite:///{tmp_path / 'empty.db'}"))
    result = run(config, "tickets", "list")
    assert result.exit_code == 1
    assert "helpdesk db upgrade" in result.output
    upgraded = run(config, "db", "upgrade")
    assert upgraded.exit_code == 0
    assert "upgraded from empty" in upgraded.output
    assert run(config, "tickets", "list").exit_code == 0


def test_store_unavailable_exits_tempfail(tmp_path: Path) -> None:
    """When the database cannot be reached, ingest exits 75 so the MTA retries."""
    config = tmp_path / "helpdesk.toml"
    config.write_text(CONFIG.format(
        url=f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"))
    result = run(config, "ingest", stdin=make_mail())
    assert result.exit_code == EX_TEMPFAIL
    assert "unavailable" in result.output


def test_invalid_config_lists_every_problem(tmp_path: Path) -> None:
    """A broken config file names the file and every bad key; exit 1."""
    config = tmp_path / "helpdesk.toml"
    config.write_text('[threading]\nforeign_tag = "allow"\nclosed_ticket = "never"\n')
    result = run(config, "tickets", "list")
    assert result.exit_code == 1
    assert str(config) in result.output
    assert "foreign_tag" in result.output
    assert "closed_ticket" in result.output


def test_pipe_into_unupgraded_database_is_tempfail(tmp_path: Path) -> None:
    """An MTA pipe into a database that needs `db upgrade` defers the mail (75), never bounces."""
    config = tmp_path / "helpdesk.toml"
    config.write_text(CONFIG.format(url=f"sqlite:///{tmp_path / 'empty.db'}"))
    result = run(config, "ingest", stdin=make_mail())
    assert result.exit_code == EX_TEMPFAIL
    assert "helpdesk db upgrade" in result.output
