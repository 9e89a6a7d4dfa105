"""The daemon's outbox sender, in a process of its own beside the ingest writer.

Why (issue 13): in the daemon's process the sender's Python (claims, the SMTP
conversation, recording each answer) took the interpreter lock from the group
commit, whose single writer bounds a mailbox's backlog: on PostgreSQL with the
shipped rules, sending cost ingest about a quarter of its rate (117 against
158 msg/s with the relay unreachable). In a process of its own it runs on the
other core: 137 against 114 msg/s, medians of four alternating runs, for about
50 MB more memory (another interpreter with SQLAlchemy and the SMTP client).

What stays as it was:

* Exactly once: the outbox's claims in the database (`delivery.claims`: SKIP
  LOCKED and leases) already keep two daemons' senders apart; a sender process
  is one more of them. It finishes the mail in hand and records its answer
  before it stops, as the sender task did.
* Wake-ups: a commit that queued mail wakes the process as it wakes every other
  process's sender (`smtp.watch`: NOTIFY on PostgreSQL, SQLite's data_version);
  the interval stays the safety net.
* What the daemon shows: the process reports each relay answer (metrics) and
  its count of mails sent (status) back over the pipe.
* The stop: `run` asks the process to stop and waits for it; cancelled (the
  daemon's grace is over), it kills it, and its claims expire as a dead
  daemon's would. If the daemon dies, even by SIGKILL, the kernel kills the
  process too (PR_SET_PDEATHSIG), as it kills the parsing workers.
* A reload with other `[smtp]` or `[outbox]` settings restarts the process with
  them; a process that dies is started again after `RESTART_PAUSE` seconds, and
  the daemon goes on ingesting meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

import structlog

from helpdesk.delivery.outbox import OutboxPolicy
from helpdesk.observe import NULL_OBSERVER, Observer
from helpdesk.settings import SmtpSettings

__all__ = ["RESTART_PAUSE", "SenderProcess", "SenderSpec"]

log = structlog.get_logger()

# Seconds before a sender process that died is started again.
RESTART_PAUSE = 5.0
# How often the process reports its count of mails sent, when it changed.
_REPORT_EVERY = 1.0
_STOP = b"s"


@dataclass(frozen=True)
class SenderSpec:
    """Everything the sender process is built from (it is pickled to the process)."""

    database_url: str
    database_password: str | None
    smtp: SmtpSettings
    policy: OutboxPolicy
    holder: str
    interval: float
    lease: timedelta
    batch: int
    # Sets up logging in the process as the daemon's is (picklable: a module's function
    # with its arguments: `logs.again_to_stdout`); None: left as it is.
    log_setup: Callable[[], None] | None = None


class SenderProcess:
    """The sender process and what the daemon keeps of it: see the module docstring."""

    def __init__(self, spec: SenderSpec, *, observer: Observer = NULL_OBSERVER,
                 start_method: str = "forkserver") -> None:
        self.spec = spec
        self.observer = observer
        self.sent = 0  # mails accepted for at least one recipient, by every process so far
        self._context: Any = multiprocessing.get_context(start_method)
        self._base = 0  # `sent` when the running process started
        self._started = 0  # processes started so far
        # Why no sender process runs (between its death and its restart), for /healthz.
        self.down: str | None = None
        self._restart: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- called by the daemon --------------------------------------------------------------

    def update(self, smtp: SmtpSettings, policy: OutboxPolicy) -> None:
        """New `[smtp]`/`[outbox]` settings (a reload): the process restarts with them."""
        spec = replace(self.spec, smtp=smtp, policy=policy)
        if spec == self.spec:
            return
        self.spec = spec
        loop, restart = self._loop, self._restart
        if loop is not None and restart is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended: nothing runs
                loop.call_soon_threadsafe(restart.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a sender process running until `stop`; then stop it and wait for it.

        Cancelled (the daemon's grace is over), it kills the process.
        """
        self._loop = asyncio.get_running_loop()
        self._restart = asyncio.Event()
        process: Any = None
        try:
            while not stop.is_set():
                self._restart.clear()
                try:
                    process, conn = self._start()
                except Exception as exc:  # noqa: BLE001 - no fork (memory, limits): try again
                    self._down(f"its process could not be started ({exc!r})")
                    log.error("sender.start_failed", error=repr(exc), retry_in_s=RESTART_PAUSE)
                    await self._pause(stop)
                    continue
                ended = await self._watch(process, conn, stop)
                if ended is None:  # asked to stop or to restart: it is still running
                    await self._stop(process, conn)
                    process = None
                    if stop.is_set():
                        return
                    log.info("sender.restarting", reason="its settings changed")
                    continue
                await self._reap(process, conn)
                exit_code, process = process.exitcode, None
                if stop.is_set():
                    return
                # /healthz knows before the log says so (a reader of the log may ask it).
                self._down(f"its process died (exit code {exit_code})")
                log.error("sender.process_died", exit_code=exit_code, detail=ended,
                          restart_in_s=RESTART_PAUSE)
                await self._pause(stop)
        except asyncio.CancelledError:
            if process is not None:
                _kill(process)
            raise

    def _down(self, why: str) -> None:
        self.down = f"{why}; started again {RESTART_PAUSE:g} s later"

    async def _pause(self, stop: asyncio.Event) -> None:
        """`RESTART_PAUSE` seconds (or until `stop`) with no process, then healthy again."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RESTART_PAUSE)
        self.down = None

    # -- the process -------------------------------------------------------------------------

    def _start(self) -> tuple[Any, Connection]:
        ours, theirs = self._context.Pipe(duplex=True)
        self._started += 1
        # Its own claims' holder: a process started after one that died must not take the
        # dead one's claims (or its answers) for its own; they expire.
        spec = replace(self.spec, holder=f"{self.spec.holder}:sender{self._started}")
        process = self._context.Process(target=serve, args=(theirs, spec), daemon=True,
                                        name="helpdesk-sender")
        process.start()
        theirs.close()
        self._base = self.sent
        return process, ours

    async def _watch(self, process: Any, conn: Connection, stop: asyncio.Event) -> str | None:
        """Relay the process's reports until it ends (how: the result), or until `stop` or a
        restart is asked for (None)."""
        assert self._restart is not None
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        def readable() -> None:
            try:
                while conn.poll():
                    self._report(conn.recv())
            except (EOFError, OSError) as exc:
                loop.remove_reader(conn.fileno())
                if not ended.done():
                    ended.set_result(f"its pipe closed ({type(exc).__name__})")

        loop.add_reader(conn.fileno(), readable)
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._restart.wait()),
                 ended]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits[:2]:
                waiting.cancel()
            if not ended.done():
                loop.remove_reader(conn.fileno())
        return str(ended.result()) if ended.done() else None

    def _report(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "attempted":
            self.observer.send_attempted(message[1], message[2])
        elif kind == "sent":  # the process's own count
            self.sent = self._base + int(message[1])

    async def _stop(self, process: Any, conn: Connection) -> None:
        """Ask the process to stop after the mail in hand, and wait; killed if cancelled."""
        with contextlib.suppress(OSError):  # it is gone already: the join returns at once
            conn.send_bytes(_STOP)
        try:
            await asyncio.to_thread(process.join)
        except asyncio.CancelledError:
            log.warning("sender.killed", reason="it did not stop within the grace period")
            _kill(process)
            raise
        finally:
            self._drain(conn)
            self._close(conn)

    def _drain(self, conn: Connection) -> None:
        """The reports the process sent before it ended (its final count among them)."""
        with contextlib.suppress(EOFError, OSError):
            while conn.poll():
                self._report(conn.recv())

    async def _reap(self, process: Any, conn: Connection) -> None:
        await asyncio.to_thread(process.join, 5.0)
        self._drain(conn)
        self._close(conn)

    def _close(self, conn: Connection) -> None:
        with contextlib.suppress(OSError):
            conn.close()


def _kill(process: Any) -> None:
    with contextlib.suppress(Exception):
        process.kill()


# -- in the sender process ---------------------------------------------------------------------


def serve(conn: Connection, spec: SenderSpec) -> None:
    """The sender process's life: send the outbox until told to stop or the pipe closes."""
    # A Ctrl-C or a systemd stop reaches the whole process group: the daemon decides
    # when this process stops (after the mail in hand), not the signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from helpdesk.intake.worker import die_with_parent

    die_with_parent()
    if spec.log_setup is not None:
        spec.log_setup()
    asyncio.run(_serve(conn, spec))


class _Reporter(Observer):
    """The sender's observer in its process: each relay answer goes to the daemon."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send_attempted(self, code: int | None, recipients: int = 1) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("attempted", code, recipients))


async def _serve(conn: Connection, spec: SenderSpec) -> None:
    from helpdesk.smtp import Sender
    from helpdesk.store.db import make_engine, make_session_factory

    engine = make_engine(spec.database_url, password=spec.database_password)
    sender = Sender(make_session_factory(engine), spec.smtp, spec.policy, holder=spec.holder,
                    interval=spec.interval, lease=spec.lease, batch=spec.batch,
                    observer=_Reporter(conn))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def readable() -> None:
        try:
            while conn.poll():
                if conn.recv_bytes() == _STOP:
                    stop.set()
        except (EOFError, OSError):  # the daemon is gone
            loop.remove_reader(conn.fileno())
            stop.set()

    loop.add_reader(conn.fileno(), readable)
    reporting = asyncio.create_task(_report_sent(conn, sender, stop))
    log.info("sender.started", pid=os.getpid(), holder=spec.holder)
    try:
        await sender.run(stop)
    finally:
        reporting.cancel()
        with contextlib.suppress(OSError):
            conn.send(("sent", sender.sent))
        engine.dispose()
        log.info("sender.stopped", pid=os.getpid(), sent=sender.sent)


async def _report_sent(conn: Connection, sender: Any, stop: asyncio.Event) -> None:
    reported = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _REPORT_EVERY)
        if sender.sent != reported:
            reported = sender.sent
            with contextlib.suppress(OSError):
                conn.send(("sent", reported))
