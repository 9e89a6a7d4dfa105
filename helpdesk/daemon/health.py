"""What `/healthz` answers: every worker alive and the store answering, or why not.

For a load balancer or a container probe (issue 11): 200 when the daemon
serves, every worker thread runs (not dead, not waiting to be restarted after
a crash, not stuck — the same test as the systemd watchdog's, `stuck`), the
sender and the committer run, and the store answers a trivial query within a
bound; 503 otherwise, with one short line per problem.

A probe must answer even when the store does not: a frozen PostgreSQL makes
`SELECT 1` hang (the kernel accepts the connection, nobody answers), so the
query runs in a thread of its own and the probe waits at most `timeout`
(`SingleFlight`); while that query still hangs, later probes wait on the same
one instead of piling up threads. SQLite answers `SELECT 1` even after its
file was deleted (the open connections keep the unlinked inode), and goes on
writing into a file nobody will ever read again: so the file's identity is
checked too.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine, text

from helpdesk.daemon.workers import Worker

T = TypeVar("T")

# How long /healthz waits for the store's answer.
STORE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Health:
    """The verdict: healthy, or the problems that make the daemon unhealthy."""

    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        """The response body: ``ok``, or one line per problem."""
        return "ok\n" if self.ok else "".join(f"{p}\n" for p in self.problems)


def stuck(workers: Iterable[Worker], now: float, progress: float) -> list[Worker]:
    """The workers silent past their limit while the intake made no progress either
    (a mailbox waiting on a slow batch is not stuck while the writer commits)."""
    return [w for w in workers if w.stuck(now) and now - progress > w.stuck_after]


def stuck_now(workers: Iterable[Worker], intake: Any) -> list[Worker]:
    """`stuck` at this moment, against the progress of `intake` (`helpdesk.intake.Intake`,
    or None)."""
    progress = intake.last_progress if intake is not None else 0.0
    return stuck(workers, time.monotonic(), progress)


def worker_problems(workers: Iterable[Worker], now: float, progress: float) -> list[str]:
    """One line per worker that is dead, restarting after a crash, or stuck."""
    workers = list(workers)
    problems = []
    for worker in workers:
        if worker.stop.is_set():
            continue  # stopping (shutdown or reload): not a fault
        if not worker.alive:
            problems.append(f"{worker.name}: the worker thread has ended")
        elif worker.crashed:
            problems.append(f"{worker.name}: died ({worker.last_error}); restarting")
    for worker in stuck(workers, now, progress):
        problems.append(f"{worker.name}: stuck, no sign of life for "
                        f"{worker.silent_for(now):.0f} s")
    return problems


def liveness(workers: Iterable[Worker], intake: Any, sender: asyncio.Task[None] | None,
             sender_down: str | None = None) -> list[str]:
    """The problems of a serving daemon's threads and tasks: its workers, the sender's
    task and why its process does not run (`sender_down`), the intake's committer
    (`helpdesk.intake.Intake`, or None)."""
    progress = intake.last_progress if intake is not None else 0.0
    problems = worker_problems(workers, time.monotonic(), progress)
    if sender is not None and sender.done():
        problems.append("sender: stopped")
    elif sender_down is not None:
        problems.append(f"sender: {sender_down}")
    if intake is not None and not intake.committer.running:
        problems.append("committer: stopped")
    return problems


class SingleFlight(Generic[T]):
    """Call a blocking function in a thread of its own and wait at most `timeout`.

    A call that finds the previous one still running waits on it instead of
    starting another, so a hung database holds one thread, not one per probe.
    Raises TimeoutError when no answer came in time, or what the function raised.
    """

    def __init__(self, function: Callable[[], T], timeout: float, name: str = "probe") -> None:
        self.function = function
        self.timeout = timeout
        self.name = name
        self._lock = threading.Lock()
        self._running: Future[T] | None = None

    def __call__(self) -> T:
        with self._lock:
            if self._running is None or self._running.done():
                self._running = self._start()
            running = self._running
        return running.result(timeout=self.timeout)

    def _start(self) -> Future[T]:
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(self.function())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

        threading.Thread(target=run, name=self.name, daemon=True).start()
        return future


class SqliteFile:
    """The SQLite database file as it was when the daemon started: is it still there?"""

    def __init__(self, path: Path) -> None:
        self.path = path
        stat = path.stat()
        self._identity = (stat.st_dev, stat.st_ino)

    def problem(self) -> str | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return f"store: the SQLite file {self.path} is gone (deleted while in use)"
        except OSError as exc:
            return f"store: cannot look at the SQLite file {self.path}: {exc.strerror}"
        if (stat.st_dev, stat.st_ino) != self._identity:
            return f"store: the SQLite file {self.path} was replaced while in use"
        return None


class StoreProbe:
    """Does the store answer? `SELECT 1` within `timeout`, and for SQLite, the same file."""

    def __init__(self, engine: Engine, timeout: float = STORE_TIMEOUT) -> None:
        self._query = SingleFlight(lambda: _select_one(engine), timeout, name="store-probe")
        self.timeout = timeout
        self._file = _sqlite_file(engine)

    def problem(self) -> str | None:
        """None when the store answers; else why not, in one line."""
        if self._file is not None:
            gone = self._file.problem()
            if gone is not None:
                return gone
        try:
            self._query()
        except TimeoutError:
            return f"store: no answer within {self.timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure is the answer
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            return f"store: {type(exc).__name__}: {first[0] if first else ''}"
        return None


def _select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _sqlite_file(engine: Engine) -> SqliteFile | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    return SqliteFile(path.absolute()) if os.path.exists(path) else None


def check(liveness: Callable[[], list[str]], store: StoreProbe | None) -> Health:
    """The daemon's own problems (`liveness`), then the store's."""
    problems = list(liveness())
    if store is not None:
        problem = store.problem()
        if problem is not None:
            problems.append(problem)
    return Health(tuple(problems))
