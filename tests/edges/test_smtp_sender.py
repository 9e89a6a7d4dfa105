"""The sender against a real aiosmtpd server: sent once, retried on 4xx, failed on 5xx."""

from __future__ import annotations

import asyncio
import email
import random
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from helpdesk import outbox
from helpdesk.settings import SmtpSettings
from helpdesk.smtp import Sender
from helpdesk.store.models import OutboxItem
from helpdesk.values import Address, MessageKind, OutgoingMail
from tests.conftest import Clock, Store
from tests.servers import free_port
from tests.servers.smtp_sink import SmtpSink

SIGNER = outbox.Signer(domain="example.com", key=b"k" * 32, loop_id="support@example.com")
POLICY = outbox.OutboxPolicy(max_permanent_failures=2)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink()
    server.start()
    yield server
    server.stop()


def queue(store: Store, clock: Clock, n: int = 1) -> list[int]:
    ids = []
    with store.sessions.begin() as session:
        for i in range(n):
            mail = OutgoingMail(
                kind=MessageKind.AUTO_REPLY,
                ticket_id=None,
                from_=Address("support@example.com", "IT Help Desk"),
                to=(Address(f"user{i}@example.org", "Jörg Ünlü"),),
                subject=f"[#{i}] Ihre Anfrage",
                body="Wir haben Ihre Anfrage erhalten.\n",
                automated=True,
            )
            ids.append(outbox.enqueue(session, mail, SIGNER, now=clock.now).id)
    return ids


def sender(store: Store, port: int, clock: Clock, holder: str = "test") -> Sender:
    settings = SmtpSettings(host="127.0.0.1", port=port, timeout=5.0)
    return Sender(store.sessions, settings, POLICY, holder=holder, clock=clock,
                  rng=random.Random(1))


def states(store: Store) -> list[tuple[str, int]]:
    with store.sessions() as session:
        return [(i.state, i.attempts) for i in session.scalars(select(OutboxItem).order_by(
            OutboxItem.id))]


def test_sent_once_and_marked(store: Store, sink: SmtpSink, clock: Clock) -> None:
    """Queued mail is delivered once, marked sent, and a second pass sends nothing."""
    queue(store, clock, 3)
    s = sender(store, sink.port, clock)
    assert asyncio.run(s.run_once()) == 3
    assert asyncio.run(s.run_once()) == 0
    assert len(sink.messages) == 3
    assert states(store) == [("sent", 1)] * 3
    first = email.message_from_bytes(sink.messages[0].data)
    assert first["Auto-Submitted"] == "auto-replied"
    assert sink.messages[0].recipients == ["user0@example.org"]


def test_server_down_then_up(store: Store, clock: Clock) -> None:
    """While the SMTP server is down rows wait with backoff; once it is up they go out once."""
    port = free_port()
    queue(store, clock, 2)
    s = sender(store, port, clock)
    assert asyncio.run(s.run_once()) == 0
    with store.sessions() as session:
        first = session.scalars(select(OutboxItem).order_by(OutboxItem.id)).first()
        assert first is not None
        assert first.state == "pending"
        assert first.next_attempt_at > clock.now
        assert first.last_error
    server = SmtpSink(port)
    server.start()
    try:
        clock.advance(hours=2)
        assert asyncio.run(s.run_once()) == 2
        assert len(server.messages) == 2
    finally:
        server.stop()


def test_temporary_refusal_is_retried(store: Store, sink: SmtpSink, clock: Clock) -> None:
    """A 451 is retried after the backoff and then delivered."""
    queue(store, clock)
    sink.handler.refuse_next.append("451 4.3.0 try again later")
    s = sender(store, sink.port, clock)
    assert asyncio.run(s.run_once()) == 0
    assert asyncio.run(s.run_once()) == 0  # not due yet
    clock.advance(minutes=10)
    assert asyncio.run(s.run_once()) == 1
    assert states(store) == [("sent", 2)]


def test_permanent_refusal_fails_after_the_configured_count(
    store: Store, sink: SmtpSink, clock: Clock
) -> None:
    """5xx twice (max_permanent_failures = 2) marks the row failed with the error kept."""
    [item_id] = queue(store, clock)
    sink.handler.refuse_next.extend(["554 5.7.1 rejected", "554 5.7.1 rejected"])
    s = sender(store, sink.port, clock)
    asyncio.run(s.run_once())
    clock.advance(hours=1)
    asyncio.run(s.run_once())
    with store.sessions() as session:
        item = session.get_one(OutboxItem, item_id)
        assert (item.state, item.permanent_failures) == ("failed", 2)
        assert "554" in (item.last_error or "")
    with store.sessions.begin() as session:
        outbox.retry(session, item_id, now=clock.now)
    assert asyncio.run(s.run_once()) == 1
    assert len(sink.messages) == 1


def test_two_senders_never_send_the_same_row(store: Store, sink: SmtpSink, clock: Clock) -> None:
    """Claims are exclusive: two senders in parallel deliver 40 rows exactly once each."""
    queue(store, clock, 40)

    async def both() -> None:
        a = sender(store, sink.port, clock, holder="a")
        b = sender(store, sink.port, clock, holder="b")
        a.batch = b.batch = 5
        for _ in range(10):
            await asyncio.gather(a.run_once(), b.run_once())

    asyncio.run(both())
    ids = [email.message_from_bytes(m.data)["Message-ID"] for m in sink.messages]
    assert len(ids) == 40
    assert len(set(ids)) == 40


def test_expired_claim_is_taken_over(store: Store, sink: SmtpSink, clock: Clock) -> None:
    """A sender that died holding a claim does not block the row past the lease."""
    queue(store, clock)
    with store.sessions.begin() as session:
        claimed = outbox.claim_due(session, holder="dead", limit=10, now=clock.now,
                                   lease=timedelta(minutes=5))
        assert len(claimed) == 1
    s = sender(store, sink.port, clock, holder="alive")
    assert asyncio.run(s.run_once()) == 0
    clock.advance(minutes=6)
    assert asyncio.run(s.run_once()) == 1
