"""`helpdesk outbox list|show|send` show what the faults did: partly delivered mail,
each recipient's state and attempts, and a relay that refuses us."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import event, select

from helpdesk.cli import cli
from helpdesk.cli import outbox as outbox_cli
from helpdesk.delivery import views
from helpdesk.store.models import OutboxItem
from tests.conftest import Store
from tests.faults.helpers import items, make_sender, make_ticket, queue
from tests.faults.relay import ScriptedRelay

CONFIG = """\
[helpdesk]
name = "Example IT"
support_address = "support@example.com"
secret = "not-so-secret"

[database]
url = "{url}"

[smtp]
host = "127.0.0.1"
port = {port}
timeout = 5.0
{login}
"""


@pytest.fixture
def relay() -> Iterator[ScriptedRelay]:
    server = ScriptedRelay(auth=True).start()
    yield server
    server.stop()


def config(tmp_path: Path, store: Store, relay: ScriptedRelay, password: str = "s3cret") -> Path:
    path = tmp_path / "helpdesk.toml"
    login = f'username = "helpdesk"\npassword = "{password}"'
    path.write_text(CONFIG.format(url=store.url, port=relay.port, login=login))
    return path


def run(path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(path), *args], catch_exceptions=False,
                              env={"HELPDESK_DATABASE_URL": None, "COLUMNS": "250"})


def send_once(store: Store, relay: ScriptedRelay, password: str = "s3cret") -> None:
    sender = make_sender(store, relay, smtp={"username": "helpdesk", "password": password})
    asyncio.run(sender.run_once())


def test_list_shows_partly_delivered_mail_its_subject_and_filters_by_ticket(
    store: Store, relay: ScriptedRelay, tmp_path: Path
) -> None:
    """A greylisted Cc: `outbox list` says partly delivered, with the subject; --ticket
    lists one ticket's mail; --json has each recipient's state."""
    ticket_id = make_ticket(store)
    [mine] = queue(store, cc=("carl@example.org",), ticket_id=ticket_id)
    [other] = queue(store)
    relay.greylist("carl@example.org")
    send_once(store, relay)
    path = config(tmp_path, store, relay)

    result = run(path, "outbox", "list")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith(f"{mine} "))
    assert "partly delivered: 1 of 2 sent, 1 retrying" in line
    assert "[#0] Ihre Anfrage" in line
    assert "SUBJECT" in result.output

    data = json.loads(run(path, "outbox", "list", "--ticket", str(ticket_id), "--json").stdout)
    assert [d["id"] for d in data] == [mine]
    assert {r["address"]: r["state"] for r in data[0]["recipients"]} == {
        "user0@example.org": "sent", "carl@example.org": "pending"}
    assert data[0]["delivery"] == "partly delivered: 1 of 2 sent, 1 retrying"
    assert other != mine


def test_show_prints_envelope_recipients_attempts_headers_and_body(
    store: Store, relay: ScriptedRelay, tmp_path: Path
) -> None:
    """`outbox show ID`: state per recipient, each attempt with its error and next try, the
    headers and the decoded body; --raw is the mail byte for byte; --json has it all."""
    [item_id] = queue(store, cc=("carl@example.org",))
    relay.greylist("carl@example.org")
    send_once(store, relay)
    path = config(tmp_path, store, relay)

    result = run(path, "outbox", "show", str(item_id))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "partly delivered: 1 of 2 sent, 1 retrying" in out
    assert "MAIL FROM:<support@example.com>" in out
    assert "RCPT TO:<user0@example.org>  sent" in out
    assert "RCPT TO:<carl@example.org>  pending, 1 attempt(s)  (450 4.2.0 greylisted" in out
    assert "partial  user0@example.org: 250" in out
    assert "next try" in out
    assert "Subject: [#0] Ihre Anfrage" in out
    assert "Auto-Submitted: auto-replied" in out
    assert "Wir haben Ihre Anfrage erhalten." in out

    raw = CliRunner().invoke(cli, ["--config", str(path), "outbox", "show", str(item_id),
                                   "--raw"], env={"HELPDESK_DATABASE_URL": None})
    assert raw.stdout_bytes == items(store)[0].raw

    data = json.loads(run(path, "outbox", "show", str(item_id), "--json").stdout)
    assert [a["outcome"] for a in data["attempt_log"]] == ["partial"]
    assert data["attempt_log"][0]["next_attempt_at"] is not None
    assert ["Subject", "[#0] Ihre Anfrage"] in data["headers"]
    assert data["body"].startswith("Wir haben Ihre Anfrage erhalten.")
    assert run(path, "outbox", "show", "999").exit_code == 1


def test_a_refusing_relay_is_shown_and_outbox_send_exits_75(
    store: Store, relay: ScriptedRelay, tmp_path: Path
) -> None:
    """AUTH refused: `outbox list` names the relay's problem above the list and on each
    pending mail (--json); `outbox send` keeps the mail and exits 75 (try again later)."""
    queue(store, 2)
    path = config(tmp_path, store, relay, password="wrong")
    result = run(path, "outbox", "send")
    assert result.exit_code == 75
    assert "0 sent, 2 waiting, 0 failed" in result.stdout
    assert "auth: 535" in result.stderr

    listing = run(path, "outbox", "list")
    first = listing.stdout.splitlines()[0]
    assert first.startswith(f"relay 127.0.0.1:{relay.port} failing since")
    assert "auth: 535" in first
    assert "mail stays queued" in first
    data = json.loads(run(path, "outbox", "list", "--json").stdout)
    assert all(d["relay_problem"].startswith("auth: 535") for d in data)
    assert all(d["attempts"] == 0 for d in data)

    good = config(tmp_path, store, relay)
    assert json.loads(run(good, "outbox", "send", "--json").stdout) == {
        "sent": 2, "pending": 0, "failed": 0}
    assert not run(good, "outbox", "list").stdout.startswith("relay")
    assert len(relay.accepted) == 2


def test_the_list_reads_no_mail_bytes_unless_a_row_has_no_stored_subject(store: Store) -> None:
    """`outbox list` reads rows without their raw mail; a row queued before subjects were
    stored still shows the subject, read from its bytes (those of that row alone)."""
    queue(store, 2)
    with store.sessions() as session:
        old = session.scalars(select(OutboxItem).order_by(OutboxItem.id)).first()
        assert old is not None
        old.subject = None  # as rows queued before revision 0005
        old_id = old.id
        session.commit()
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        with store.engine.connect() as conn:
            listed = views.list_outbox(conn)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert [item.raw is not None for item in listed] == [False, True]  # newest first
    subjects = [outbox_cli.subject_of(item) for item in listed]
    assert all(subjects), subjects
    reading_raw = [(sql, params) for sql, params in statements if "outbox.raw" in sql]
    assert len(reading_raw) == 1, statements
    params = reading_raw[0][1]
    assert list(params.values() if isinstance(params, dict) else params) == [old_id]
    # The same fields as through the ORM's row, recipients included.
    with store.sessions() as session:
        for item in listed:
            orm = session.get(OutboxItem, item.id)
            assert orm is not None
            assert outbox_cli.item_json(item) == outbox_cli.item_json(orm)
