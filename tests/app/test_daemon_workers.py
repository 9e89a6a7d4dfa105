"""Supervised worker threads: a dead worker is logged, reported and restarted; a stuck one
stops the watchdog pings (issue 9 §13)."""

from __future__ import annotations

import threading
import time
from typing import Any

from structlog.testing import capture_logs

from helpdesk.daemon.service import Daemon
from helpdesk.daemon.workers import Worker
from helpdesk.settings import Settings
from helpdesk.sources.base import Backoff, SourceStats


class Flaky:
    """A source whose run() raises the first `failures` times it is started."""

    starts = 0

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.stats = SourceStats()
        self.last_beat = time.monotonic()

    def run(self, stop: threading.Event) -> None:
        Flaky.starts += 1
        if Flaky.starts <= self.failures:
            raise RuntimeError(f"boom {Flaky.starts}")
        while not stop.wait(0.01):
            self.last_beat = time.monotonic()


class Silent:
    """A source that hangs without a sign of life."""

    def __init__(self) -> None:
        self.stats = SourceStats()
        self.last_beat = time.monotonic() - 3600

    def run(self, stop: threading.Event) -> None:
        stop.wait()


def test_a_worker_that_dies_is_logged_reported_and_restarted() -> None:
    """Two crashes: two worker.died errors, the problem reported each time, then it runs."""
    Flaky.starts = 0
    problems: list[tuple[str, str]] = []
    with capture_logs() as logs:
        worker = Worker("imap:support", lambda: Flaky(failures=2), stuck_after=60,
                        on_problem=lambda name, text: problems.append((name, text)),
                        backoff=Backoff(base=0.01, cap=0.02)).start()
        deadline = time.monotonic() + 5
        while Flaky.starts < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.alive
        worker.request_stop()
        assert worker.join(5)
    died = [e for e in logs if e["event"] == "worker.died"]
    assert [e["log_level"] for e in died] == ["error", "error"]
    assert [e["restarts"] for e in died] == [1, 2]
    assert problems == [("imap:support", "worker died: RuntimeError: boom 1"),
                        ("imap:support", "worker died: RuntimeError: boom 2")]
    assert worker.restarts == 2
    assert len([e for e in logs if e["event"] == "worker.restarted"]) == 2


def test_a_stuck_worker_stops_the_watchdog() -> None:
    """A worker silent past its limit makes the daemon unhealthy (no WATCHDOG=1), once logged."""
    daemon = Daemon(Settings(), environ={})
    stuck = Worker("imap:stuck", Silent, stuck_after=10).start()
    fine = Worker("imap:fine", lambda: Flaky(failures=0), stuck_after=10).start()
    daemon.workers = {w.name: w for w in (stuck, fine)}
    try:
        with capture_logs() as logs:
            assert daemon.healthy() is False
            assert daemon.healthy() is False
        assert [e["worker"] for e in logs if e["event"] == "worker.stuck"] == ["imap:stuck"]
        stuck.source.last_beat = time.monotonic()
        assert daemon.healthy() is True
    finally:
        for worker in (stuck, fine):
            worker.request_stop()
            worker.join(5)


def test_status_reports_restarts() -> None:
    """The STATUS line names a worker's restarts and last error."""
    Flaky.starts = 0
    daemon = Daemon(Settings(), environ={})
    worker: Any = Worker("maildir:local", lambda: Flaky(failures=1), stuck_after=60,
                         backoff=Backoff(base=0.01, cap=0.02)).start()
    daemon.workers = {worker.name: worker}
    try:
        deadline = time.monotonic() + 5
        while worker.restarts < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "maildir:local" in daemon.status()
        assert "restarted 1x (RuntimeError: boom 1)" in daemon.status()
    finally:
        worker.request_stop()
        worker.join(5)
