"""`helpdesk tickets status N resolved [--quiet]`: the resolution notice from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from helpdesk.store.models import OutboxItem
from tests.app.test_cli_tickets_reply import ROOT, run, write_config
from tests.conftest import Store
from tests.mailfactory import make_mail


@pytest.fixture
def config(store: Store, tmp_path: Path) -> Path:
    """A configuration with the shipped rules and templates."""
    return write_config(tmp_path, store)


def notices(store: Store) -> list[OutboxItem]:
    with store.sessions() as session:
        return list(session.scalars(select(OutboxItem).where(OutboxItem.kind == "system")))


def test_resolving_queues_the_notice_and_says_so(config: Path, store: Store) -> None:
    """The notice is queued to the requester; the command says to whom."""
    assert run(config, "ingest", stdin=make_mail(subject="Printer jammed")).exit_code == 0
    result = run(config, "tickets", "status", "1", "resolved")
    assert result.exit_code == 0, result.output
    assert result.output == ("[#1] is now resolved; resolution notice queued to "
                             "dana.reyes@example.com\n")
    (item,) = notices(store)
    assert item.envelope_to == ["dana.reyes@example.com"]
    assert b"Resolved: Printer jammed" in item.raw
    again = run(config, "tickets", "status", "1", "resolved")
    assert again.output == "[#1] is now resolved\n"
    assert len(notices(store)) == 1


def test_quiet_resolves_without_the_notice(config: Path, store: Store) -> None:
    """--quiet resolves and sends nothing; --json names the skipped notice."""
    assert run(config, "ingest", stdin=make_mail(subject="Printer jammed")).exit_code == 0
    result = run(config, "tickets", "status", "1", "resolved", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["status"] == "resolved"
    assert (data["notice"]["kind"], data["notice"]["detail"]["reason"]) == (
        "notice.skipped", "--quiet")
    assert notices(store) == []


def test_other_statuses_send_nothing(config: Path, store: Store) -> None:
    """Pending, open and closed are changed silently."""
    assert run(config, "ingest", stdin=make_mail(subject="Printer jammed")).exit_code == 0
    for status in ("pending", "open", "closed"):
        result = run(config, "tickets", "status", "1", status)
        assert result.output == f"[#1] is now {status}\n"
    assert notices(store) == []


def test_a_broken_rule_file_does_not_stop_a_resolution(config: Path, store: Store,
                                                       tmp_path: Path) -> None:
    """The notice needs the templates, not the rules: a rule file being edited is no reason
    to refuse; a broken template is, before anything changes."""
    assert run(config, "ingest", stdin=make_mail(subject="Printer jammed")).exit_code == 0
    rules, templates = tmp_path / "rules", tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    rules.mkdir()
    (rules / "10-broken.toml").write_text("[[rule]\nname = ")
    text = config.read_text().replace(f'{ROOT.as_posix()}/rules', rules.as_posix())
    config.write_text(text.replace(f'{ROOT.as_posix()}/templates', templates.as_posix()))
    assert run(config, "rules", "check").exit_code == 1
    result = run(config, "tickets", "status", "1", "resolved")
    assert result.exit_code == 0, result.output
    assert len(notices(store)) == 1
    assert run(config, "tickets", "status", "1", "open").exit_code == 0
    (templates / "resolved.txt").write_text("Subject: {{ ticket.reference }\n\nbroken\n")
    refused = run(config, "tickets", "status", "1", "resolved")
    assert refused.exit_code == 1
    assert "invalid templates" in refused.output
    assert "[#1] is now" not in refused.output
    assert json.loads(run(config, "tickets", "show", "1", "--json").output)["status"] == "open"
    assert len(notices(store)) == 1
