"""`helpdesk quarantine discard|purge|release` against a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from helpdesk.cli import cli
from helpdesk.store import listing
from helpdesk.store.models import Event, Message, QuarantineItem, utcnow
from tests.conftest import Store
from tests.mailfactory import make_mail

NO_SENDER = b"Subject: printer on fire\r\nMessage-ID: <held-1@example.com>\r\n\r\nhelp\r\n"


@pytest.fixture
def config(store: Store, tmp_path: Path) -> Path:
    path = tmp_path / "helpdesk.toml"
    path.write_text(f'[helpdesk]\nsupport_address = "support@example.com"\n\n'
                    f'[database]\nurl = "{store.url}"\n')
    return path


def run(config: Path, *args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], input=stdin,
                              catch_exceptions=False, env={"HELPDESK_DATABASE_URL": None})


def hold(config: Path, raw: bytes = NO_SENDER) -> int:
    """Ingest mail that cannot become a ticket; the id of its quarantine item."""
    assert json.loads(run(config, "ingest", "--json", stdin=raw).output)["quarantined"] == 1
    return int(json.loads(run(config, "quarantine", "list", "--json").output)[0]["id"])


def item(store: Store, item_id: int) -> QuarantineItem:
    with store.sessions() as session:
        found = session.get(QuarantineItem, item_id)
        assert found is not None
        return found


def test_discard_keeps_the_item_with_who_and_when(config: Path, store: Store) -> None:
    """A discarded item stays in the store as `discarded`, with who, when and why."""
    item_id = hold(config)
    before = utcnow()
    result = run(config, "quarantine", "discard", str(item_id), "--by", "carol",
                 "--note", "spam", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["state"], data["decided_by"], data["decision_note"]) == (
        "discarded", "carol", "spam")
    kept = item(store, item_id)
    assert kept.raw == NO_SENDER
    assert kept.decided_at is not None
    assert kept.decided_at >= before - timedelta(seconds=1)
    # Held items only by default; the discarded one shows with --state or --all.
    assert json.loads(run(config, "quarantine", "list", "--json").output) == []
    listed = json.loads(run(config, "quarantine", "list", "--state", "discarded", "--json").output)
    assert [i["id"] for i in listed] == [item_id]
    shown = run(config, "quarantine", "show", str(item_id)).output
    assert "discarded by carol" in shown


def test_discard_defaults_to_the_user_and_cannot_be_repeated(config: Path, store: Store) -> None:
    """Without --by the login name is recorded; a second discard or a retry is exit 1."""
    item_id = hold(config)
    assert run(config, "quarantine", "discard", str(item_id)).exit_code == 0
    assert item(store, item_id).decided_by
    again = run(config, "quarantine", "discard", str(item_id))
    assert again.exit_code == 1
    assert "already discarded" in again.output
    retried = run(config, "quarantine", "retry", str(item_id))
    assert retried.exit_code == 1
    assert run(config, "quarantine", "discard", "999").exit_code == 1


def test_purge_deletes_only_items_discarded_long_enough_ago(
    config: Path, store: Store, tmp_path: Path
) -> None:
    """`purge --older-than 90d` deletes discarded items older than that; never held ones."""
    old = hold(config)
    recent = hold(config, NO_SENDER.replace(b"held-1", b"held-2"))
    held = hold(config, NO_SENDER.replace(b"held-1", b"held-3"))
    released = hold(config, NO_SENDER.replace(b"held-1", b"held-4"))
    fixed = tmp_path / "fixed.eml"
    fixed.write_bytes(make_mail())
    assert run(config, "quarantine", "release", str(released), "--file", str(fixed)).exit_code == 0
    for item_id in (old, recent):
        assert run(config, "quarantine", "discard", str(item_id)).exit_code == 0
    with store.sessions.begin() as session:
        for item_id in (old, released):  # decided long ago; only the discarded one goes
            stale = session.get(QuarantineItem, item_id)
            assert stale is not None
            stale.decided_at = utcnow() - timedelta(days=91)
        # Held for a year, but nobody decided: it stays.
        waiting = session.get(QuarantineItem, held)
        assert waiting is not None
        waiting.created_at = utcnow() - timedelta(days=365)
    result = run(config, "quarantine", "purge", "--older-than", "90d", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"purged": 1}
    with store.sessions() as session:
        left = sorted(session.scalars(select(QuarantineItem.id)))
    assert left == sorted([recent, held, released])
    assert run(config, "quarantine", "purge", "--older-than", "90d").output.strip() == (
        "purged 0 discarded messages")


@pytest.mark.parametrize("age", ["90", "0d", "ninety days", "3y"])
def test_purge_needs_an_age_with_a_unit(config: Path, age: str) -> None:
    """An age must read like 90d, 12h, 2w or 30m; anything else is a usage error (exit 2)."""
    result = run(config, "quarantine", "purge", "--older-than", age)
    assert result.exit_code == 2
    assert "is not an age" in result.output


def test_release_ingests_the_corrected_copy_and_links_the_two(
    config: Path, store: Store, tmp_path: Path
) -> None:
    """The fixed copy becomes a ticket; the held item points at its message and vice versa."""
    item_id = hold(config)
    fixed = tmp_path / "fixed.eml"
    fixed.write_bytes(make_mail(subject="printer on fire", message_id="<held-1@example.com>"))
    result = run(config, "quarantine", "release", str(item_id), "--file", str(fixed),
                 "--by", "dave", "--json")
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output)
    assert outcome["outcome"] == "new_ticket"
    released = item(store, item_id)
    assert released.state == "released"
    assert released.raw == NO_SENDER  # the held bytes are kept as they came
    assert released.decided_by == "dave"
    assert released.resolved_ticket_id == outcome["ticket_id"]
    assert released.released_message_row_id == outcome["message_row_id"]
    with store.sessions() as session:
        message = session.get(Message, outcome["message_row_id"])
        assert message is not None
        assert message.ticket_id == outcome["ticket_id"]
        event = session.scalars(select(Event).where(Event.kind == "quarantine.released")).one()
    assert (event.ticket_id, event.message_row_id, event.actor) == (
        outcome["ticket_id"], outcome["message_row_id"], "dave")
    assert event.detail["quarantine_id"] == item_id
    assert run(config, "quarantine", "release", str(item_id), "--file",
               str(fixed)).exit_code == 1  # already released


def test_a_release_that_fails_changes_nothing(config: Path, store: Store, tmp_path: Path) -> None:
    """A 'fixed' copy that cannot be ingested either: exit 1, item still held, no new rows."""
    item_id = hold(config)
    still_bad = tmp_path / "still-bad.eml"
    still_bad.write_bytes(NO_SENDER.replace(b"help", b"help me"))
    result = run(config, "quarantine", "release", str(item_id), "--file", str(still_bad))
    assert result.exit_code == 1
    assert "cannot be ingested either" in result.output
    assert item(store, item_id).state == "held"
    with store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(QuarantineItem)) == 1
        assert session.scalar(select(func.count()).select_from(Message)) == 0


def test_release_reads_the_copy_from_stdin(config: Path) -> None:
    """`--file -` takes the corrected copy from stdin."""
    item_id = hold(config)
    result = run(config, "quarantine", "release", str(item_id), "--file", "-",
                 stdin=make_mail(subject="from stdin"))
    assert result.exit_code == 0, result.output
    assert "released as new_ticket, ticket 1" in result.output


def test_list_shows_each_item_without_reading_its_bytes(config: Path, store: Store) -> None:
    """`quarantine list` gives every field of an item, and reads neither the stored mail nor
    its traceback (a hundred large quarantined mails would be read into memory)."""
    item_id = hold(config)
    [listed] = json.loads(run(config, "quarantine", "list", "--json").output)
    shown = json.loads(run(config, "quarantine", "show", str(item_id), "--json").output)
    assert {key: shown[key] for key in listed} == listed
    assert listed["id"] == item_id
    assert listed["size"] == len(NO_SENDER)
    with store.engine.connect() as conn:
        [row] = listing.quarantined(conn)
    assert "raw" not in row._fields
    assert "detail" not in row._fields
