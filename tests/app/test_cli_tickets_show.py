"""`helpdesk tickets show`: a mailed reply once, marked relayed; outgoing mail with its state."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select, update

from helpdesk.cli.ticket_json import delivery_words
from helpdesk.store import detail, schema
from helpdesk.store.detail import Delivery, RecipientState
from tests.app.test_cli_tickets_reply import conversation, run, write_config
from tests.conftest import Store
from tests.mailfactory import make_mail
from tests.servers.smtp_sink import SmtpSink

ANSWER = "Please reinstall the VPN client from the portal."


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def config(store: Store, tmp_path: Path, sink: SmtpSink) -> Path:
    """Shipped rules and templates, mail out to a real SMTP sink."""
    return write_config(tmp_path, store, sink.port)


def show(config: Path, *args: str) -> dict[str, object]:
    result = run(config, "tickets", "show", "1", "--json", *args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert isinstance(data, dict)
    return data


def alice_answers_by_mail(config: Path) -> None:
    reply = make_mail(sender="Alice Admin <alice@example.com>",
                      subject="Re: [#1] VPN drops every hour", message_id="<alice-1@example.com>",
                      body=f"{ANSWER}\n\nAlice\n\n> the VPN drops every hour.\n")
    assert run(config, "ingest", stdin=reply).exit_code == 0


def test_a_mailed_reply_is_shown_once_with_its_delivery(config: Path, sink: SmtpSink) -> None:
    """The agent's mail and its relayed copy are one entry, marked relayed, with the relay's
    delivery state as it changes: pending, retrying with the server's error, sent."""
    conversation(config)
    assert run(config, "outbox", "send").exit_code == 0  # the acknowledgement and notification
    alice_answers_by_mail(config)
    sink.handler.refuse_next.append("451 4.3.0 Mailbox busy, try later")
    assert run(config, "outbox", "send").exit_code == 0

    data = show(config)
    answers = [m for m in data["messages"] if ANSWER in m["text"]]  # type: ignore[union-attr]
    assert len(answers) == 1
    (answer,) = answers
    assert (answer["from"], answer["direction"], answer["relayed"]) == (
        "alice@example.com", "in", True)
    delivery = answer["delivery"]
    assert (delivery["kind"], delivery["state"], delivery["attempts"]) == ("agent_reply",
                                                                           "pending", 1)
    assert "451 4.3.0 Mailbox busy" in delivery["last_error"]
    assert delivery["recipients"] == [{"address": "dana.reyes@example.com", "state": "pending"},
                                      {"address": "carl@example.com", "state": "pending"}]
    outgoing = data["outgoing"]
    assert [d["kind"] for d in outgoing] == ["auto_reply", "system", "agent_reply"]
    assert [d["state"] for d in outgoing] == ["sent", "sent", "pending"]
    assert outgoing[-1] == delivery

    text = run(config, "tickets", "show", "1").output
    assert text.count(ANSWER) == 1
    (head,) = [line for line in text.splitlines() if "from Alice Admin" in line]
    assert "relayed · pending, 1 attempt, next " in head
    assert head.endswith("451 4.3.0 Mailbox busy, try later")
    assert "Outgoing mail" in text

    assert run(config, "outbox", "retry", str(delivery["outbox_id"])).exit_code == 0
    assert run(config, "outbox", "send").exit_code == 0
    (answer,) = [m for m in show(config)["messages"]  # type: ignore[union-attr]
                 if ANSWER in m["text"]]
    assert (answer["delivery"]["state"], answer["delivery"]["attempts"]) == ("sent", 2)
    text = run(config, "tickets", "show", "1").output
    (head,) = [line for line in text.splitlines() if "from Alice Admin" in line]
    assert "· relayed · sent " in head


def test_a_reply_from_the_command_line_is_shown_once(config: Path) -> None:
    """A `tickets reply` has no incoming copy: its outgoing mail is the entry, relayed."""
    conversation(config)
    assert run(config, "tickets", "reply", "1", "--as", "alice@example.com",
               "-m", ANSWER).exit_code == 0
    answers = [m for m in show(config)["messages"]  # type: ignore[union-attr]
               if ANSWER in m["text"]]
    assert [(m["direction"], m["relayed"], m["delivery"]["state"]) for m in answers] == [
        ("out", True, "pending")]


def test_our_own_mail_shows_its_state_too(config: Path) -> None:
    """The acknowledgement is in the thread with its delivery; customers' mail has none."""
    conversation(config)
    data = show(config)
    kinds = {(m["kind"], m["direction"]): m for m in data["messages"]}  # type: ignore[union-attr]
    ack = kinds[("auto_reply", "out")]
    assert (ack["relayed"], ack["delivery"]["state"]) == (False, "pending")
    assert kinds[("customer", "in")]["delivery"] is None


def delivery(state: str, attempts: int, error: str | None) -> Delivery:
    when = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    return Delivery(outbox_id=7, message_id="m@x", kind="agent_reply", subject="s", state=state,
                    attempts=attempts, last_error=error, next_attempt_at=when, created_at=when,
                    sent_at=when if state == "sent" else None,
                    recipients=(RecipientState("dana@example.com", state),))


@pytest.mark.parametrize(("state", "attempts", "error", "words"), [
    ("pending", 0, None, "pending"),
    ("pending", 2, "451 busy", "pending, 2 attempts, next 2026-03-02 09:00: 451 busy"),
    ("sent", 1, None, "sent 2026-03-02 09:00"),
    ("failed", 3, "550 no such user", "failed after 3 attempts: 550 no such user"),
])
def test_delivery_state_in_words(state: str, attempts: int, error: str | None,
                                 words: str) -> None:
    """Each state reads as a few words, with the error the server gave."""
    assert delivery_words(delivery(state, attempts, error)) == words


def test_each_recipient_shows_its_own_delivery_state(config: Path, store: Store) -> None:
    """A mail that reached one recipient and was refused for another shows each one's state,
    in the JSON and in words, not the row's state for both."""
    conversation(config)
    outbox, recipients = schema.outbox, schema.outbox_recipients
    with store.engine.begin() as conn:
        item_id, to = conn.execute(select(outbox.c.id, outbox.c.envelope_to)
                                   .order_by(outbox.c.id)).first() or (None, None)
        assert item_id is not None
        conn.execute(update(recipients).where(recipients.c.outbox_id == item_id)
                     .values(state="sent"))
        conn.execute(insert(recipients).values(outbox_id=item_id, address="boss@example.com",
                                               state="failed", attempts=1,
                                               permanent_failures=1))
        conn.execute(update(outbox).where(outbox.c.id == item_id).values(state="sent"))
    first = next(d for d in show(config)["outgoing"] if d["outbox_id"] == item_id)
    assert first["recipients"] == [{"address": to[0], "state": "sent"},
                                   {"address": "boss@example.com", "state": "failed"}]
    text = run(config, "tickets", "show", "1").output
    line = next(line for line in text.splitlines() if "boss@example.com" in line)
    assert f"{to[0]}, boss@example.com (failed)" in line


def test_show_reads_no_mail_bytes(config: Path, store: Store) -> None:
    """The thread, its attachments and its outgoing mail are shown from their stored fields:
    no statement reads a raw mail or an attachment's content."""
    conversation(config)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        with store.engine.connect() as conn:
            view = detail.conversation(conn, 1)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert view is not None
    assert len(view.entries) >= 2
    assert view.deliveries
    assert statements
    bytes_read = re.compile(r"\b(messages\.raw|outbox\.raw|attachments\.content)\b")
    assert [s for s in statements if bytes_read.search(s)] == []
    with store.engine.connect() as conn:
        assert detail.conversation(conn, 999) is None
