"""Migration 0005 on a store with mail in its outbox: what was waiting is sent to every
recipient once, what was sent stays sent, and the list shows the subjects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import text

from helpdesk.delivery import views
from helpdesk.store.db import alembic_config, head_revision, upgrade
from tests.conftest import Store
from tests.faults.helpers import assert_exactly_once, items, make_sender
from tests.faults.relay import ScriptedRelay

RAW = (b"From: support@example.com\r\nTo: a@example.org\r\nCc: b@example.org\r\n"
       b"Subject: =?utf-8?q?Ihre_Anfrage_=C3=BCber_VPN?=\r\nMessage-ID: <old-{n}@example.com>\r\n"
       b"\r\nHello\r\n")


@pytest.fixture
def relay() -> Iterator[ScriptedRelay]:
    server = ScriptedRelay().start()
    yield server
    server.stop()


def test_rows_queued_before_0005_are_sent_once_to_each_recipient(
    store: Store, relay: ScriptedRelay
) -> None:
    command.downgrade(alembic_config(store.engine), "0004")
    # Raw SQL: the models describe the newest schema, not this one.
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO tickets (id, subject, status, priority, created_at, updated_at) "
            "VALUES (1, 'VPN', 'open', 'normal', :t, :t)"), {"t": "2026-03-01 09:00:00"})
        conn.execute(text(
            "INSERT INTO messages (ticket_id, direction, kind, message_id, message_id_synthetic,"
            " content_hash, in_reply_to, \"references\", from_address, from_name, to_addresses,"
            " cc_addresses, subject, received_at, text, new_text, raw, size, defects,"
            " mail_class, origin_source) VALUES (1, 'out', 'auto_reply', 'old-1@example.com',"
            " false, 'x', '', '', '', '', '', '', :subject, :t, '', '', :raw, 0, '', 'human',"
            " '')"),
            {"subject": "Ihre Anfrage über VPN", "raw": RAW.replace(b"{n}", b"1"),
             "t": "2026-03-01 09:00:00"})
    with store.engine.begin() as conn:
        for n, state in ((1, "pending"), (2, "sent"), (3, "failed")):
            conn.execute(text(
                "INSERT INTO outbox (ticket_id, message_id, envelope_from, envelope_to, raw,"
                " state, attempts, next_attempt_at, created_at, kind, permanent_failures) "
                "VALUES (:ticket, :mid, 'support@example.com', :to, :raw, :state, 0, :t, :t,"
                " 'auto_reply', 0)"),
                {"ticket": 1 if n == 1 else None, "mid": f"old-{n}@example.com",
                 "to": json.dumps(["a@example.org", "b@example.org"]),
                 "raw": RAW.replace(b"{n}", str(n).encode()), "state": state,
                 "t": "2026-03-01 09:00:00"})
    assert upgrade(store.engine)[1] == head_revision()

    pending, sent, failed = items(store)
    assert [(r.address, r.state) for r in pending.recipients] == [
        ("a@example.org", "pending"), ("b@example.org", "pending")]
    assert sent.recipients == []
    assert [r.state for r in failed.recipients] == ["failed", "failed"]
    assert pending.subject == "Ihre Anfrage über VPN"
    assert failed.subject is None
    assert views.delivery_summary(sent) == "sent"
    assert [v.state for v in views.recipient_views(sent)] == ["sent", "sent"]

    s = make_sender(store, relay)
    assert asyncio.run(s.run_once()) == 1
    assert relay.accepted[0].recipients == ["a@example.org", "b@example.org"]
    assert asyncio.run(s.run_once()) == 0
    assert_exactly_once(store, relay)
