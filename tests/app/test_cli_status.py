"""`helpdesk status` and `helpdesk mailbox list`: the desk's health from the store."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from helpdesk.cli import cli
from helpdesk.flow import mailboxes
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.store.models import QuarantineItem, utcnow
from helpdesk.values import Origin
from tests.conftest import Store
from tests.mailfactory import make_mail

CONFIG = """\
[helpdesk]
support_address = "support@example.com"

[database]
url = "{url}"

[security]
trusted_authserv_id = "mx.example.com"

[[mailbox]]
name = "it"
host = "imap.example.com"
username = "support@example.com"
password = "secret"
poll_interval = 60.0
"""


@pytest.fixture
def config(store: Store, tmp_path: Path) -> Path:
    path = tmp_path / "helpdesk.toml"
    path.write_text(CONFIG.format(url=store.url))
    return path


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False,
                              env={"HELPDESK_DATABASE_URL": None})


def healthy(store: Store) -> None:
    """What a running daemon records: a poll, health ok, a heartbeat."""
    now = utcnow()
    with store.sessions.begin() as session:
        mailboxes.record_poll(session, "it", now)
        mailboxes.record_health(session, "it", "ok", None, now)
        mailboxes.heartbeat(session, "host:1:abc", timedelta(seconds=60), now, pool=["it"])


def test_a_fresh_desk_without_a_daemon_needs_an_admin(config: Path) -> None:
    """Never polled, no daemon: exit 1 naming both."""
    result = run(config, "status")
    assert result.exit_code == 1, result.output
    assert "mailbox it: never polled" in result.output
    assert "no daemon is running" in result.output


def test_a_working_desk_is_well_and_exits_0(config: Path, store: Store) -> None:
    """A polled mailbox and a live daemon: all is well, exit 0; --json says so too."""
    healthy(store)
    result = run(config, "status")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("All is well.")
    data = json.loads(run(config, "status", "--json").output)
    assert data["ok"] is True
    assert data["problems"] == []
    assert data["daemons"] == ["host:1:abc"]
    assert [s["state"] for s in data["sources"]] == ["ok"]


def test_a_failing_mailbox_is_named_with_its_error_and_since_when(
    config: Path, store: Store
) -> None:
    """login failed: status exits 1; mailbox list shows the state, since when and the error."""
    healthy(store)
    with store.sessions.begin() as session:
        mailboxes.record_health(session, "it", "login failed",
                                "LoginError: [AUTHENTICATIONFAILED] Authentication failed.",
                                utcnow())
    result = run(config, "status")
    assert result.exit_code == 1
    assert "mailbox it: login failed, retrying since" in result.output
    assert "AUTHENTICATIONFAILED" in result.output
    (row,) = json.loads(run(config, "mailbox", "list", "--json").output)
    assert row["state"].startswith("login failed, retrying since ")
    assert "AUTHENTICATIONFAILED" in row["last_error"]
    listed = run(config, "mailbox", "list").output
    assert "login failed" in listed
    assert "AUTHENTICATIONFAILED" in listed

    with store.sessions.begin() as session:
        mailboxes.record_health(session, "it", "ok", None, utcnow())
    assert run(config, "status").exit_code == 0


def test_quarantine_failed_mail_and_a_waiting_ticket_are_reported(
    config: Path, store: Store
) -> None:
    """Held quarantine and the oldest unanswered ticket appear; quarantine makes it exit 1."""
    healthy(store)
    with store.sessions.begin() as session:
        ingest(session, make_mail(), Origin("file"), IngestContext())
        ingest(session, b"\x00 not mail", Origin("file"), IngestContext())
        assert session.query(QuarantineItem).count() == 1
    data = json.loads(run(config, "status", "--json").output)
    assert data["quarantine_held"] == 1
    assert data["oldest_unanswered"]["ticket_id"] == 1
    assert any("1 mails held in quarantine" in p for p in data["problems"])
    text = run(config, "status").output
    assert "oldest unanswered  #1, waiting since" in text


def test_an_insecure_setting_needs_an_admin(store: Store, tmp_path: Path) -> None:
    """No trust configured for agent mail: status names the [security] warning."""
    path = tmp_path / "helpdesk.toml"
    path.write_text(CONFIG.format(url=store.url).replace(
        '[security]\ntrusted_authserv_id = "mx.example.com"\n', ""))
    healthy(store)
    result = run(path, "status")
    assert result.exit_code == 1
    assert "security" in result.output
