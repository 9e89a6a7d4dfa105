"""Issue 9's relay scenarios against real aiosmtpd relays, on SQLite and PostgreSQL.

Each ends with every mail delivered exactly once to every recipient (counted
at the relay) or queued with the problem shown.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, select
from structlog.testing import capture_logs

from helpdesk.delivery import outbox, views
from helpdesk.store import db
from helpdesk.store.models import Event
from tests.conftest import Clock, Store
from tests.faults.helpers import (
    FAST,
    assert_exactly_once,
    async_wait_until,
    counter,
    items,
    lease,
    make_sender,
    make_ticket,
    queue,
    running,
)
from tests.faults.relay import Accepted, ScriptedRelay

GREYLIST = outbox.OutboxPolicy(max_permanent_failures=1, retry_base=timedelta(seconds=30))


@pytest.fixture
def relay() -> Iterator[ScriptedRelay]:
    server = ScriptedRelay().start()
    yield server
    server.stop()


# -- (a) some recipients refused ----------------------------------------------------------


def test_a_greylisted_cc_is_retried_and_the_others_get_the_mail_once(
    store: Store, relay: ScriptedRelay, clock: Clock
) -> None:
    """450 to the Cc: the To gets the mail now, the Cc after the backoff, nobody twice;
    meanwhile the row says it is partly delivered."""
    [item_id] = queue(store, cc=("carl@example.org",), now=clock.now)
    relay.greylist("carl@example.org")
    s = make_sender(store, relay, clock=clock, policy=GREYLIST)
    assert asyncio.run(s.run_once()) == 1
    [item] = items(store)
    assert item.state == "pending"
    assert {r.address: r.state for r in item.recipients} == {
        "user0@example.org": "sent", "carl@example.org": "pending"}
    assert views.delivery_summary(item) == "partly delivered: 1 of 2 sent, 1 retrying"
    assert "carl@example.org: 450 4.2.0 greylisted" in (item.last_error or "")
    assert item.next_attempt_at > clock.now

    assert asyncio.run(s.run_once()) == 0, "not due yet"
    clock.advance(minutes=2)
    assert asyncio.run(s.run_once()) == 1
    [item] = items(store)
    assert (item.state, views.delivery_summary(item)) == ("sent", "sent")
    assert relay.accepted[1].recipients == ["carl@example.org"], "the To was not sent again"
    assert sorted(relay.deliveries().values()) == [1, 1]
    assert_exactly_once(store, relay)
    with store.sessions() as session:
        assert [a.outcome for a in outbox.attempts(session, item_id)] == ["partial", "sent"]


def test_a_refused_recipient_is_dead_lettered_and_noted_on_the_ticket(
    store: Store, relay: ScriptedRelay, clock: Clock
) -> None:
    """550 to one recipient: dead-lettered with an event on the ticket, the others get the
    mail once, and nothing is sent again."""
    ticket_id = make_ticket(store)
    queue(store, cc=("gone@example.org", "carl@example.org"), now=clock.now, ticket_id=ticket_id)
    relay.script.rcpt["gone@example.org"] = collections.deque(["550 5.1.1 no such user"])
    s = make_sender(store, relay, clock=clock, policy=GREYLIST)
    assert asyncio.run(s.run_once()) == 1
    [item] = items(store)
    assert item.state == "sent"
    assert views.delivery_summary(item) == "partly delivered: 2 of 3 sent, 1 failed"
    clock.advance(hours=2)
    assert asyncio.run(s.run_once()) == 0
    assert len(relay.accepted) == 1
    assert relay.accepted[0].recipients == ["user0@example.org", "carl@example.org"]
    assert_exactly_once(store, relay)
    with store.sessions() as session:
        events = list(session.scalars(select(Event).where(Event.ticket_id == ticket_id)))
    assert [(e.kind, e.detail["address"]) for e in events] == [
        ("outbox.recipient_failed", "gone@example.org")]
    assert "550 5.1.1" in events[0].detail["error"]


# -- (b) a relay slower than the claim ------------------------------------------------------


def test_a_relay_slower_than_the_claim_gets_each_mail_once_with_two_senders(
    store: Store, relay: ScriptedRelay
) -> None:
    """Each DATA takes 1.2 s, the claim lasts 0.6 s, two senders poll every 0.1 s: the claims
    are renewed while sending, so the second sender never takes a row being sent."""
    relay.script.data_delay = 1.2
    queue(store, 3)
    a = make_sender(store, relay, holder="a", lease=lease(0.6), interval=0.1)
    b = make_sender(store, relay, holder="b", lease=lease(0.6), interval=0.1)

    async def scenario() -> None:
        async with running(a, b):
            assert await async_wait_until(
                lambda: all(i.state == "sent" for i in items(store)), timeout=20)
            await asyncio.sleep(1.5)  # room for a duplicate to arrive, if any were under way

    asyncio.run(scenario())
    assert len(relay.accepted) == 3
    assert_exactly_once(store, relay)


def test_at_most_one_accepted_mail_is_unrecorded_at_any_moment(
    store: Store, relay: ScriptedRelay
) -> None:
    """Whenever the relay accepts a mail, every mail it accepted before is already recorded
    as sent: a crash at any moment sends at most one mail twice."""
    unrecorded: list[int] = []

    def check(accepted: Accepted) -> None:
        before = {a.message_id for a in relay.accepted} - {accepted.message_id}
        sent = {i.message_id for i in items(store) if i.state == "sent"}
        unrecorded.append(len(before - sent))

    relay.script.on_accept = check
    queue(store, 20)
    s = make_sender(store, relay, interval=0.05)

    async def scenario() -> None:
        async with running(s):
            assert await async_wait_until(
                lambda: all(i.state == "sent" for i in items(store)), timeout=20)

    asyncio.run(scenario())
    assert len(unrecorded) == 20
    assert max(unrecorded) == 0, unrecorded
    assert_exactly_once(store, relay)


# -- (c) accepted, then the store refuses the record ------------------------------------------


class StoreLock:
    """Takes a real write lock on the store from another connection for `seconds`,
    once, from the relay's thread right after it accepted a mail (before its 250)."""

    def __init__(self, store: Store, seconds: float) -> None:
        self.store = store
        self.seconds = seconds
        self.taken = threading.Event()
        self.released = threading.Event()

    def __call__(self, accepted: Accepted) -> None:
        if self.taken.is_set():
            return
        self.taken.set()
        release: Callable[[], None]
        if self.store.backend == "sqlite":
            path = self.store.url.removeprefix("sqlite:///")
            conn: Any = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("BEGIN EXCLUSIVE")

            def release() -> None:
                conn.execute("ROLLBACK")
                conn.close()
        else:
            url = self.store.url.replace("postgresql+psycopg://", "postgresql://")
            pg = psycopg.connect(url)
            pg.execute("LOCK TABLE outbox IN EXCLUSIVE MODE")

            def release() -> None:
                pg.rollback()
                pg.close()

        def later() -> None:
            release()
            self.released.set()

        threading.Timer(self.seconds, later).start()


@pytest.fixture
def impatient_store(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The same database, through an engine that gives up on a lock after 100 ms
    (SQLite's busy timeout, PostgreSQL's lock_timeout), so a held lock is a failure."""
    if store.backend == "sqlite":
        monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 100)
        engine = db.make_engine(store.url)
    else:
        engine = create_engine(store.url, pool_pre_ping=True,
                               connect_args={"options": "-c lock_timeout=100"})
    yield Store(store.backend, store.url, engine, db.make_session_factory(engine))
    engine.dispose()


def test_a_result_the_store_cannot_record_is_kept_and_written_once_it_can(
    impatient_store: Store, relay: ScriptedRelay
) -> None:
    """The relay accepts, then the store is locked for 2 s (longer than the claim): the
    result waits in memory, its record is retried until it commits, and no mail goes twice."""
    store = impatient_store
    lock = StoreLock(store, 2.0)
    relay.script.on_accept = lock
    queue(store, 3)
    s = make_sender(store, relay, lease=lease(0.5), interval=0.05)

    async def scenario() -> list[dict[str, Any]]:
        with capture_logs() as logs:
            async with running(s):
                assert await async_wait_until(lock.released.is_set, timeout=10)
                assert await async_wait_until(
                    lambda: all(i.state == "sent" for i in items(store)), timeout=10)
                await asyncio.sleep(1.0)  # a second sending would arrive by now
        return logs

    logs = asyncio.run(scenario())
    assert lock.taken.is_set()
    assert len(relay.accepted) == 3
    assert_exactly_once(store, relay)
    events = counter(logs)
    assert events["outbox.record_failed"] == 1, "logged once, not once per retry"
    assert events["outbox.sent"] == 3


def test_a_database_outage_is_logged_once_per_change(
    impatient_store: Store, relay: ScriptedRelay
) -> None:
    """The sender's passes fail for 1.5 s (store locked): one warning, one recovery line,
    no traceback per pass; then the mail goes."""
    store = impatient_store
    lock = StoreLock(store, 1.5)
    s = make_sender(store, relay, interval=0.05)

    async def scenario() -> list[dict[str, Any]]:
        with capture_logs() as logs:
            async with running(s):
                await asyncio.sleep(0.2)
                lock(Accepted("", [], b""))
                assert await async_wait_until(lock.released.is_set, timeout=10)
                queue(store, 1)
                assert await async_wait_until(
                    lambda: all(i.state == "sent" for i in items(store)), timeout=10)
        return logs

    logs = asyncio.run(scenario())
    events = counter(logs)
    assert events["outbox.store_unavailable"] == 1
    assert events["outbox.store_recovered"] == 1
    assert events["outbox.pass_failed"] == 0
    assert_exactly_once(store, relay)


# -- (e) the relay refuses AUTH ----------------------------------------------------------


def test_auth_refused_keeps_mail_queued_shows_the_problem_and_logs_once(store: Store) -> None:
    """535 from the relay: the mail stays queued untouched, the sender backs off and retries,
    logs the problem once and records it; once the relay takes our password, all of it goes
    out once."""
    relay = ScriptedRelay(auth=True).start()
    try:
        queue(store, 3, cc=("carl@example.org",))
        s = make_sender(store, relay, interval=0.05,
                        smtp={"username": "helpdesk", "password": "n3w-pa55"})

        async def scenario() -> list[dict[str, Any]]:
            with capture_logs() as logs:
                async with running(s):
                    assert await async_wait_until(lambda: relay.handler.auth_failures >= 4)
                    for item in items(store):
                        assert (item.state, item.attempts, item.last_error) == (
                            "pending", 0, None)
                    with store.sessions() as session:
                        [status] = views.relay_status(session)
                    assert (status.state, status.problem) == ("failing", "auth")
                    assert "535" in (status.error or "")
                    assert "mail stays queued" in status.describe()
                    relay.script.password = b"n3w-pa55"  # the admin fixed the relay
                    assert await async_wait_until(
                        lambda: all(i.state == "sent" for i in items(store)), timeout=10)
            return logs

        logs = asyncio.run(scenario())
        events = counter(logs)
        assert events["smtp.relay_failed"] == 1
        assert events["smtp.relay_recovered"] == 1
        assert len(relay.accepted) == 3
        assert_exactly_once(store, relay)
        with store.sessions() as session:
            [status] = views.relay_status(session)
        assert status.ok
    finally:
        relay.stop()


def test_relay_backoff_grows(store: Store) -> None:
    """A relay that stays down is tried less and less often, not every pass."""
    relay = ScriptedRelay(auth=True).start()
    try:
        queue(store, 1)
        s = make_sender(store, relay, interval=0.01, smtp={"username": "helpdesk",
                                                          "password": "wrong"})

        async def scenario() -> None:
            async with running(s):
                await asyncio.sleep(1.5)

        asyncio.run(scenario())
        # With a fixed 0.01 s pass there would be ~150 tries; capped backoff (0.05 .. 0.2 s)
        # allows at most 1.5 / 0.025 = 60 and in practice about a dozen.
        assert 3 <= relay.handler.auth_failures <= 2 + 1.5 / (FAST.base / 2)
    finally:
        relay.stop()
