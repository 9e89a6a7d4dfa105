"""Worker threads the daemon supervises: restarted with backoff when they die, watched for hangs.

Issue 9 §13: a mailbox or Maildir worker that dies must not go unnoticed. A
`Worker` runs its source's blocking `run(stop)` in a daemon thread of its own
(sources never return until stopped, so they must not take threads from a
shared pool). If `run` raises, the worker logs it at error level, reports it
(`on_problem`, which the daemon turns into the mailbox's health in the store),
waits with capped exponential backoff and starts a fresh source. A worker
whose source shows no sign of life (`last_beat`) for longer than `stuck_after`
counts as stuck: the daemon then stops feeding systemd's watchdog, and systemd
restarts the whole process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from helpdesk.sources.base import Backoff

log = structlog.get_logger()


class Runnable(Protocol):
    """What the daemon runs in a worker thread: a source (IMAP, Maildir)."""

    @property
    def stats(self) -> Any: ...

    def run(self, stop: threading.Event) -> None: ...


class Worker:
    """One supervised source thread (see the module docstring)."""

    def __init__(
        self,
        name: str,
        make: Callable[[], Runnable],
        *,
        stuck_after: float,
        on_problem: Callable[[str, str], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self.make = make
        self.source = make()
        self.stuck_after = stuck_after
        self.stop = threading.Event()
        self.restarts = 0
        self.last_error: str | None = None
        # True from a death until a fresh source is built (/healthz reports it).
        self.crashed = False
        self.ended = threading.Event()
        self._on_problem = on_problem
        self._backoff = backoff or Backoff(base=1.0, cap=300.0)
        self._thread = threading.Thread(target=self._target, name=name, daemon=True)

    def start(self) -> Worker:
        self._thread.start()
        return self

    def request_stop(self) -> None:
        self.stop.set()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end; True when it did."""
        return self.ended.wait(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def silent_for(self, now: float) -> float:
        """Seconds since the source's last sign of life (0 when it does not tell)."""
        beat = getattr(self.source, "last_beat", None)
        return max(0.0, now - beat) if isinstance(beat, float) else 0.0

    def stuck(self, now: float) -> bool:
        return self.alive and not self.stop.is_set() and self.silent_for(now) > self.stuck_after

    def _target(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    self.source.run(self.stop)
                    return  # a source returns only when told to stop
                except BaseException as exc:  # noqa: BLE001 - supervised: logged, restarted
                    self._died(exc)
                if self.stop.wait(self._backoff.next_delay()):
                    return
                try:
                    self.source = self.make()
                except Exception as exc:  # noqa: BLE001 - building it again failed: retry later
                    self._died(exc)
                    continue
                self.crashed = False
                log.info("worker.restarted", worker=self.name, restarts=self.restarts)
        finally:
            self.ended.set()

    def _died(self, exc: BaseException) -> None:
        self.crashed = True
        self.restarts += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.error("worker.died", worker=self.name, error=self.last_error,
                  restarts=self.restarts, exc_info=exc)
        if self._on_problem is not None:
            try:
                self._on_problem(self.name, f"worker died: {self.last_error}")
            except Exception:  # noqa: BLE001 - reporting must not kill the supervisor
                log.warning("worker.report_failed", worker=self.name)


def join_all(workers: list[Worker], timeout: float) -> None:
    """Join every worker, all within one `timeout`."""
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))


class PollingSource(Protocol):
    """A source whose `run` takes its poll interval (the Maildir source)."""

    stats: Any
    last_beat: float

    def run(self, stop: threading.Event, interval: float) -> None:
        """Poll until `stop` is set."""


class Polling:
    """Adapts a source whose `run` takes a poll interval to the worker signature."""

    def __init__(self, source: PollingSource, interval: float) -> None:
        self.source = source
        self.interval = interval

    @property
    def stats(self) -> Any:
        return self.source.stats

    @property
    def last_beat(self) -> float:
        return self.source.last_beat

    def run(self, stop: threading.Event) -> None:
        self.source.run(stop, self.interval)
