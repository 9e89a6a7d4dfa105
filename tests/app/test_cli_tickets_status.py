"""`helpdesk tickets status N resolved [--quiet]`: the resolution notice from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from helpdesk.store.models import OutboxItem
from tests.app.test_cli_tickets_reply import run, write_config
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
