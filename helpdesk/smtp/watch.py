"""Hearing about mail queued by other processes (issue 14 item 2).

In the daemon, a commit that queued mail calls `Sender.wake` directly
(`helpdesk.delivery.wakeup`). Mail queued elsewhere needs a signal across processes:

* PostgreSQL: every commit that queued mail sends `NOTIFY helpdesk_outbox`
  (the CLI's too); each daemon's sender LISTENs on a connection of its own,
  taken out of the pool, in a thread. After a lost connection it reconnects with
  backoff and wakes once, since notifications sent meanwhile are gone.
* SQLite has no notifications. The watcher polls `PRAGMA data_version`
  every 0.2 s on a connection of its own: SQLite changes that number
  whenever another connection commits, and reading it costs a few
  microseconds and takes no lock (unlike a query in a write transaction,
  which is what a sender pass opens). Only when it changed does the watcher
  look at the outbox (its highest id, the number of pending rows) and wake
  the sender if mail was added or put back in the queue. inotify on the WAL
  file would fire on every write and is Linux-only; a 0.2 s poll keeps
  `helpdesk tickets reply` to the relay well under a second for a cost
  nobody can measure.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from sqlalchemy import Engine

from helpdesk.delivery.wakeup import CHANNEL
from helpdesk.smtp.recorder import Backoff

log = structlog.get_logger()

SQLITE_POLL = 0.2
# How long one wait for notifications lasts before the stop flag is checked again.
LISTEN_TICK = 0.5


class Watcher(Protocol):
    def stop(self) -> None: ...


def start_watcher(engine: Engine, wake: Callable[[], None]) -> Watcher | None:
    """A thread that calls `wake` when another process queues mail; None where not needed."""
    watcher: _Thread
    if engine.dialect.name == "postgresql":
        watcher = PgListener(engine, wake)
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        watcher = SqliteWatcher(str(engine.url.database), wake)
    else:
        return None
    watcher.start()
    return watcher


class _Thread:
    """A daemon thread with a stop flag and state-change logging."""

    name = "outbox-watch"

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._problem: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(LISTEN_TICK * 4)

    def _run(self) -> None:
        raise NotImplementedError

    def _failed(self, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}".strip()
        if self._problem is None:
            log.warning("outbox.watch_failed", watcher=self.name, error=text,
                        note="polling still finds queued mail")
        self._problem = text

    def _ok(self) -> None:
        if self._problem is not None:
            log.info("outbox.watch_recovered", watcher=self.name)
            self._problem = None


class PgListener(_Thread):
    """LISTEN helpdesk_outbox on a connection of its own; each notification wakes the sender."""

    name = "outbox-listen"

    def __init__(self, engine: Engine, wake: Callable[[], None]) -> None:
        super().__init__(wake)
        self.engine = engine

    def _connect(self) -> Any:
        # Made by the engine (so with whatever credentials and options it uses),
        # then taken out of its pool for good: a LISTENing connection must not
        # be handed to anyone else.
        pooled = self.engine.raw_connection()
        conn: Any = pooled.driver_connection
        pooled.detach()
        conn.rollback()  # the pool's ping may have opened a transaction
        conn.autocommit = True
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _run(self) -> None:
        backoff, failures = Backoff(base=0.5, cap=30.0), 0
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:  # noqa: BLE001 - any failure: log once, retry
                failures += 1
                self._failed(exc)
                self._stop.wait(backoff.delay(failures))
                continue
            failures = 0
            self._ok()
            self.wake()  # whatever was queued while nobody listened
            try:
                self._listen(conn)
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

    def _listen(self, conn: Any) -> None:
        while not self._stop.is_set():
            heard = False
            for _ in conn.notifies(timeout=LISTEN_TICK):
                heard = True
                break
            if heard:
                self.wake()


class SqliteWatcher(_Thread):
    """Polls `PRAGMA data_version`; see the module docstring for why."""

    name = "outbox-sqlite-watch"

    def __init__(self, path: str, wake: Callable[[], None]) -> None:
        super().__init__(wake)
        self.path = path

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        version, seen = -1, (0, 0)
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None,
                                           check_same_thread=False)
                    version, seen = self._version(conn), self._outbox(conn)
                    # Whatever was queued before this first look (or while the file could
                    # not be read): compared with nothing, it would wait for the interval.
                    self.wake()
                else:
                    current = self._version(conn)
                    if current != version:
                        version = current
                        now = self._outbox(conn)
                        if now[0] > seen[0] or now[1] > seen[1]:
                            self.wake()
                        seen = now
                self._ok()
            except sqlite3.Error as exc:
                self._failed(exc)
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                conn = None
            self._stop.wait(SQLITE_POLL)
        if conn is not None:
            conn.close()

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    @staticmethod
    def _outbox(conn: sqlite3.Connection) -> tuple[int, int]:
        row = conn.execute(
            "SELECT coalesce(max(id), 0), "
            "(SELECT count(*) FROM outbox WHERE state = 'pending') FROM outbox"
        ).fetchone()
        return int(row[0]), int(row[1])
