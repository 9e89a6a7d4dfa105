"""Mail queued by a commit wakes the sender at once (issue 14): in the same process through
the commit hooks, from other processes through NOTIFY (PostgreSQL) or data_version (SQLite).

The senders here poll only every 30 s, so a mail that arrives within a few seconds was
brought by the wake-up, not by polling.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from helpdesk.delivery.wakeup import CHANNEL, install_commit_hooks
from helpdesk.smtp.watch import start_watcher
from helpdesk.store.db import make_engine, make_session_factory
from tests.conftest import Store
from tests.faults.helpers import async_wait_until, make_sender, queue, running
from tests.faults.relay import ScriptedRelay

POLL = 30.0
POSTGRES = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


@pytest.fixture
def relay() -> Iterator[ScriptedRelay]:
    server = ScriptedRelay().start()
    yield server
    server.stop()


class Calls:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_the_callback_runs_once_per_committed_transaction_that_queued_mail(
    store: Store,
) -> None:
    """Once per commit (two mails, or a mail in a savepoint, count once); never for a
    rollback or for a transaction that queued nothing."""
    calls = Calls()
    install_commit_hooks(store.sessions, calls)
    queue(store, 2)
    assert calls.count == 1
    with store.sessions.begin() as session:
        session.info["unrelated"] = True
    assert calls.count == 1, "nothing queued, nothing to wake"
    with pytest.raises(RuntimeError):
        queue_and_roll_back(store)
    assert calls.count == 1, "a rolled-back transaction queued nothing"
    with store.sessions.begin() as session:
        with session.begin_nested():
            queue(store, 1, sessions=_same(session))
        assert calls.count == 1, "a savepoint's release is not the commit"
    assert calls.count == 2


def queue_and_roll_back(store: Store) -> None:
    with store.sessions.begin() as session:
        queue(store, 1, sessions=_same(session))
        raise RuntimeError("rolled back")


class _same:
    """Lets `queue` work inside an open transaction (its `.begin()` yields that session)."""

    def __init__(self, session: object) -> None:
        self.session = session

    def begin(self) -> _same:
        return self

    def __enter__(self) -> object:
        return self.session

    def __exit__(self, *exc: object) -> None:
        return None


@POSTGRES
def test_postgres_gets_one_notify_per_committed_transaction(store: Store) -> None:
    """NOTIFY goes out with the commit, once per transaction; a rollback sends nothing."""
    listener = psycopg.connect(store.url.replace("postgresql+psycopg://", "postgresql://"),
                               autocommit=True)
    try:
        listener.execute(f"LISTEN {CHANNEL}")
        install_commit_hooks(store.sessions)
        queue(store, 3)
        with pytest.raises(RuntimeError):
            queue_and_roll_back(store)
        heard = list(listener.notifies(timeout=1.0))
        assert [n.channel for n in heard] == [CHANNEL]
    finally:
        listener.close()


def test_a_commit_in_the_daemon_wakes_its_sender(store: Store, relay: ScriptedRelay) -> None:
    """The in-process path: ingest (here: a thread) commits, the hook calls `wake`."""
    s = make_sender(store, relay, interval=POLL, watch=False)
    install_commit_hooks(store.sessions, s.wake)

    async def scenario() -> None:
        async with running(s):
            await asyncio.sleep(0.3)  # the first pass found nothing; now it idles
            worker = threading.Thread(target=queue, args=(store, 1))
            worker.start()
            worker.join()
            assert await async_wait_until(lambda: len(relay.accepted) == 1, timeout=5)

    asyncio.run(scenario())


def test_another_process_queueing_mail_wakes_the_sender(store: Store, relay: ScriptedRelay) -> None:
    """Another process (here: its own engine, as the CLI has) queues mail: the sender hears
    it through LISTEN/NOTIFY on PostgreSQL, through data_version on SQLite."""
    s = make_sender(store, relay, interval=POLL, watch=True)
    other = make_engine(store.url)
    other_sessions = make_session_factory(other)
    install_commit_hooks(other_sessions)  # what the CLI does: NOTIFY only, no callback

    async def scenario() -> None:
        async with running(s):
            await asyncio.sleep(0.5)  # first pass done, LISTEN established
            queue(store, 1, sessions=other_sessions)
            assert await async_wait_until(lambda: len(relay.accepted) == 1, timeout=5)
            queue(store, 2, sessions=other_sessions)
            assert await async_wait_until(lambda: len(relay.accepted) == 3, timeout=5)

    try:
        asyncio.run(scenario())
    finally:
        other.dispose()


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_mail_queued_as_the_sqlite_watcher_starts_still_wakes_the_sender(store: Store) -> None:
    """Mail committed before the watcher's first look (a sender process starting while the
    daemon commits): the watcher wakes the sender once it has looked, as the PostgreSQL
    listener does once it listens; compared with nothing, it would wait for the poll."""
    calls = Calls()
    other = make_engine(store.url)
    watcher = start_watcher(store.engine, calls)
    assert watcher is not None
    try:
        queue(store, 1, sessions=make_session_factory(other))  # before its first look
        deadline = time.monotonic() + 3
        while not calls.count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert calls.count >= 1
    finally:
        watcher.stop()
        other.dispose()
