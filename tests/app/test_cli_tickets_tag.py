"""`tickets tag N TAG... [--remove]` and `tickets priority N P`: twins of `#tag`, `#priority`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result

from tests.app.test_cli import CONFIG, run
from tests.conftest import Store
from tests.mailfactory import make_mail


@pytest.fixture
def config(store: Store, tmp_path: Path) -> Path:
    path = tmp_path / "helpdesk.toml"
    path.write_text(CONFIG.format(url=store.url))
    assert run(path, "ingest", stdin=make_mail()).exit_code == 0
    return path


def shown(config: Path, ticket_id: int = 1) -> dict[str, object]:
    result = run(config, "tickets", "show", str(ticket_id), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert isinstance(data, dict)
    return data


def events(config: Path, kind: str) -> list[dict[str, object]]:
    return [e for e in shown(config)["events"] if e["kind"] == kind]  # type: ignore[union-attr]


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def test_tags_are_added_and_removed_as_events(config: Path) -> None:
    """Adding and removing tags changes the ticket and records one event each, by `cli`."""
    assert ok(run(config, "tickets", "tag", "1", "vpn", "Laptop", "vpn")) == (
        "[#1] tags: Laptop, vpn (added vpn, Laptop)\n")
    assert ok(run(config, "tickets", "tag", "1", "vpn")) == (
        "[#1] tags: Laptop, vpn (nothing added)\n")
    assert ok(run(config, "tickets", "tag", "1", "--remove", "vpn", "printer")) == (
        "[#1] tags: Laptop (removed vpn)\n")
    assert shown(config)["tags"] == ["Laptop"]
    (added,) = events(config, "tags.added")
    (removed,) = events(config, "tags.removed")
    assert (added["actor"], added["detail"]) == ("cli", {"tags": ["vpn", "Laptop"]})
    assert (removed["actor"], removed["detail"]) == ("cli", {"tags": ["vpn"]})


def test_tag_json(config: Path) -> None:
    """--json prints the ticket with its tags and what changed."""
    data = json.loads(ok(run(config, "tickets", "tag", "1", "network", "--json")))
    assert (data["tags"], data["changed"]) == (["network"], ["network"])


@pytest.mark.parametrize(("tag", "message"), [
    ("two words", "one word without commas"),
    ("a,b", "one word without commas"),
    ("x" * 101, "at most 100 characters"),
])
def test_bad_tags_are_refused(config: Path, tag: str, message: str) -> None:
    """A tag #tag could not express is refused with exit 1, and nothing changes."""
    result = run(config, "tickets", "tag", "1", "ok", tag)
    assert result.exit_code == 1
    assert message in result.output
    assert shown(config)["tags"] == []


def test_priority_is_set_as_an_event(config: Path) -> None:
    """`tickets priority` changes the priority once, with an event; the same again is a no-op."""
    assert ok(run(config, "tickets", "priority", "1", "high")) == "[#1] priority is now high\n"
    assert ok(run(config, "tickets", "priority", "1", "high")) == (
        "[#1] priority was already high\n")
    (event,) = events(config, "priority.changed")
    assert (event["actor"], event["detail"]) == ("cli", {"from": "normal", "to": "high"})
    assert json.loads(ok(run(config, "tickets", "priority", "1", "low", "--json")))[
        "priority"] == "low"


def test_priority_needs_a_known_word_and_a_live_ticket(config: Path) -> None:
    """An unknown priority is a usage error; an unknown or merged ticket is exit 1."""
    assert run(config, "tickets", "priority", "1", "critical").exit_code == 2
    missing = run(config, "tickets", "priority", "9", "high")
    assert (missing.exit_code, "no ticket 9" in missing.output) == (1, True)
    assert run(config, "ingest", stdin=make_mail(subject="Other", sender="sam@example.org",
                                                 message_id="<o@x>")).exit_code == 0
    ok(run(config, "tickets", "merge", "1", "2"))
    for args in (("priority", "1", "high"), ("tag", "1", "vpn")):
        merged = run(config, "tickets", *args)
        assert merged.exit_code == 1
        assert "merged into ticket 2" in merged.output
