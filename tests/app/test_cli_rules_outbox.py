"""`helpdesk rules` and `helpdesk outbox` against a real store and a real aiosmtpd server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from helpdesk.cli import cli
from helpdesk.store.models import Event, Message, OutboxItem, Ticket
from tests.conftest import Store
from tests.mailfactory import make_mail
from tests.servers.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
[helpdesk]
name = "Example IT"
support_address = "support@example.com"
secret = "not-so-secret"

[database]
url = "{url}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
timeout = 5.0

[rules]
dir = "{rules}"

[templates]
dir = "{templates}"
{teams}
"""
TEAMS = "".join(
    f'\n[[team]]\nname = "{name}"\naddress = "{name}@example.com"\n'
    for name in ("support", "networking", "infrastructure", "identity-and-access", "security")
)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink()
    server.start()
    yield server
    server.stop()


def write_config(path: Path, url: str, smtp_port: int, rules: Path = ROOT / "rules",
                 templates: Path = ROOT / "templates") -> Path:
    config = path / "helpdesk.toml"
    config.write_text(CONFIG.format(url=url, smtp_port=smtp_port, rules=rules.as_posix(),
                                    templates=templates.as_posix(), teams=TEAMS))
    return config


def run(config: Path, *args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], input=stdin,
                              catch_exceptions=False, env={"HELPDESK_DATABASE_URL": None})


def test_rules_check_ok_without_a_database(tmp_path: Path) -> None:
    """`rules check` validates the shipped rules and templates even before `db upgrade`."""
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'none.db'}", 25)
    result = run(config, "rules", "check")
    assert result.exit_code == 0, result.output
    assert "rules in 9 files" in result.output
    assert result.output.rstrip().endswith("OK")


def test_rules_check_lists_every_problem(tmp_path: Path) -> None:
    """Broken rule files give exit 1 and every problem with file, rule and key."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-a.toml").write_text(
        '[[rule]]\nname = "a"\n[rule.when]\nsubject = "(unclosed"\n[rule.then]\nteam = "nope"\n')
    (rules / "20-b.toml").write_text('[[rule]]\nname = "b"\n[rule.then]\nauto_reply = "x"\n')
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'none.db'}", 25, rules=rules)
    result = run(config, "rules", "check")
    assert result.exit_code == 1
    assert '10-a.toml: rule "a": when.subject' in result.output
    assert '10-a.toml: rule "a": then.team' in result.output
    assert '20-b.toml: rule "b": then.auto_reply' in result.output


def test_rules_list_json(store: Store, tmp_path: Path) -> None:
    """`rules list --json` gives the rules in evaluation order, then the timers, as written."""
    config = write_config(tmp_path, store.url, 25)
    data = json.loads(run(config, "rules", "list", "--json").output)
    assert data[0]["file"] == "10-security.toml"
    rules = [d for d in data if d["kind"] == "rule"]
    timers = [d for d in data if d["kind"] == "timer"]
    assert data == rules + timers
    assert rules[-1]["name"] == "acknowledge"
    assert [t["name"] for t in timers] == ["resolve-stale-pending", "escalate-unanswered"]
    assert all({"kind", "name", "file", "when", "then", "stop"} <= set(d) for d in data)
    incident = rules[0]
    assert incident["then"]["team"] == "security"
    assert incident["then"]["forward"] == {"team": "security", "template": "team-forward"}
    assert incident["when"]["is_new"] is True
    assert timers[0]["when"] == {"status": "pending", "idle_days": 7}


def test_rules_test_shows_mail_and_changes_nothing(store: Store, tmp_path: Path) -> None:
    """`rules test` prints the matching rules and the full acknowledgement, and stores nothing."""
    config = write_config(tmp_path, store.url, 25)
    mail = tmp_path / "vpn.eml"
    mail.write_bytes(make_mail(subject="VPN is down", body="The VPN does not connect.\n"))
    result = run(config, "rules", "test", str(mail))
    assert result.exit_code == 0, result.output
    assert "rule:network" in result.output
    assert "Would send (auto_reply) to dana.reyes@example.com" in result.output
    assert "Auto-Submitted: auto-replied" in result.output
    assert json.loads(run(config, "tickets", "list", "--json").output) == []
    assert json.loads(run(config, "outbox", "list", "--json").output) == []


def test_rules_test_as_reply(store: Store, tmp_path: Path) -> None:
    """`--as-reply-to` treats the mail as a reply on that ticket."""
    config = write_config(tmp_path, store.url, 25)
    run(config, "ingest", stdin=make_mail(subject="VPN is down"))
    mail = tmp_path / "r.eml"
    mail.write_bytes(make_mail(subject="more info", message_id="<x9@example.com>"))
    data = json.loads(run(config, "rules", "test", str(mail), "--as-reply-to", "1",
                          "--json").output)
    assert (data["outcome"], data["ticket"]) == ("reply", "[#1]")


def test_outbox_send_list_and_retry(store: Store, tmp_path: Path, sink: SmtpSink) -> None:
    """Ingested mail queues an acknowledgement that `outbox send` delivers once."""
    config = write_config(tmp_path, store.url, sink.port)
    run(config, "ingest", stdin=make_mail(subject="Laptop screen broken"))
    pending = json.loads(run(config, "outbox", "list", "--json").output)
    assert [(p["kind"], p["state"]) for p in pending] == [("auto_reply", "pending")]
    sent = json.loads(run(config, "outbox", "send", "--json").output)
    assert sent == {"sent": 1, "pending": 0, "failed": 0}
    assert len(sink.messages) == 1
    assert sink.messages[0].recipients == ["dana.reyes@example.com"]
    assert json.loads(run(config, "outbox", "send", "--json").output)["sent"] == 0
    result = run(config, "outbox", "retry", str(pending[0]["id"]))
    assert result.exit_code == 1
    assert "was sent" in result.output


@pytest.mark.parametrize("columns", [130, 80])
def test_rules_list_in_the_tomls_words_wrapped_never_cut(
    store: Store, tmp_path: Path, columns: int
) -> None:
    """One entry per rule and timer, conditions and actions as the file writes them, wrapped."""
    config = write_config(tmp_path, store.url, 25)
    result = CliRunner().invoke(cli, ["--config", str(config), "rules", "list"],
                                catch_exceptions=False,
                                env={"HELPDESK_DATABASE_URL": None, "COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # Wide: WHEN / THEN beside the names; narrow: below them, indented.
    beside = ["WHEN", "/", "THEN"] if columns > 100 else []
    assert lines[0].split() == ["FILE", "RULE", "STOP", *beside]
    assert all(len(line) <= columns for line in lines)
    assert "…" not in result.output
    assert "SetTeam" not in result.output
    text = " ".join(line.strip() for line in lines)
    for words in ('team = "security"', 'priority = "urgent"', 'tags = ["security", "incident"]',
                  'forward = { team = "security", template = "team-forward" }',
                  "is_new = true", 'auto_reply = "acknowledge"', "escalate = true",
                  'status = "pending", idle_days = 7'):
        assert words in text, words
    starts = [line.split()[1] for line in lines[1:] if not line.startswith(" ")]
    assert starts[0] == "security-incident"
    assert starts[-2:] == ["resolve-stale-pending", "escalate-unanswered"]
    # A long regex is wrapped, not cut: every one of its words is there.
    security = next(d for d in json.loads(run(config, "rules", "list", "--json").output)
                    if d["name"] == "security-report")
    pattern = security["when"]["any"][0]["subject_or_body"]
    assert "".join(pattern.split()) in "".join(result.output.split())


def test_rules_test_uses_up_no_ids(store: Store, tmp_path: Path) -> None:
    """A dry run leaves no trace, ids included: the next real mail still gets ticket #1."""
    config = write_config(tmp_path, store.url, 25)
    mail = tmp_path / "vpn.eml"
    mail.write_bytes(make_mail(subject="VPN is down"))
    for _ in range(2):
        assert run(config, "rules", "test", str(mail)).exit_code == 0
    run(config, "ingest", stdin=make_mail(subject="VPN is down"))
    with store.sessions() as session:
        ids = {
            name: session.scalars(select(model.id)).all()
            for name, model in (("tickets", Ticket), ("messages", Message),
                                ("outbox", OutboxItem), ("events", Event))
        }
    assert ids["tickets"] == [1]
    assert ids["outbox"] == [1]
    # The acknowledgement is a message too; no table has a gap before its first real row.
    for name, found in ids.items():
        assert sorted(found) == list(range(1, len(found) + 1)), name
