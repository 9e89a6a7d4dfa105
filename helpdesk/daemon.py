"""`helpdesk run`: the long-running service, shaped like uvicorn's server lifecycle.

start-up (settings are given; store checked; directory synced; rules and
templates loaded; sources built) -> supervise (one worker thread per IMAP
mailbox and Maildir, the LMTP listener, the outbox sender, a status ticker)
-> shutdown (stop fetching, let the message in hand finish, release leases
and claims, exit 0 within the grace period).

Signals only set flags: SIGTERM and SIGINT stop, SIGHUP reloads what the
configuration drives (rules, templates, teams and agents, auto-reply limits)
and keeps the previous set when the new one is broken. Changes to mailboxes,
the database or SMTP need a restart.

systemd: READY=1 once everything runs, STATUS= with the counters, WATCHDOG=1
at half the watchdog interval, STOPPING=1 on the way out. Without
$NOTIFY_SOCKET all of that is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from helpdesk import context, directory, mailboxes, timers
from helpdesk.errors import ConfigError, HelpdeskError
from helpdesk.ingest import IngestContext
from helpdesk.mail.parse import parse
from helpdesk.rules import RuleError
from helpdesk.settings import Settings, load_settings
from helpdesk.smtp import Sender
from helpdesk.sources.base import ingest_sink
from helpdesk.sources.imap import ImapSource
from helpdesk.sources.lmtp import LmtpHandler, start_lmtp
from helpdesk.sources.maildir import MaildirSource
from helpdesk.store.db import check_schema, make_engine, make_session_factory
from helpdesk.store.models import utcnow
from helpdesk.templates import TemplateError
from helpdesk.values import IngestOutcome, Origin, ParsedMessage

log = structlog.get_logger()

STARTUP_FAILURE = 3
# SIGTERM must end the process within systemd's TimeoutStopSec; leave headroom.
GRACE_SECONDS = 8.0
# If even the grace period is not enough (a thread stuck on a frozen server or
# database keeps the interpreter from exiting), `run()` ends the process here.
EXIT_DEADLINE_SECONDS = 9.0
STATUS_INTERVAL = 10.0
TIMER_INTERVAL = 60.0
# The lease row (in mailbox_state) that lets one daemon at a time run the timers.
TIMERS_LEASE = "@timers"


class StartupError(HelpdeskError):
    """The daemon cannot start (no source configured, a broken rule file, ...)."""


class ParseTimeout(Exception):
    """Parsing a message took longer than `[daemon] message_time_limit`."""


def time_limited(parser: Callable[[bytes], ParsedMessage], seconds: float
                 ) -> Callable[[bytes], ParsedMessage]:
    """`parser` with a time limit: a message that takes longer raises ParseTimeout.

    Parsing is pure, so abandoning a runaway parse is safe: its thread finishes
    on its own and nothing it computed is used. The mail is quarantined and the
    mailbox goes on.
    """

    def run(raw: bytes) -> ParsedMessage:
        result: list[ParsedMessage] = []
        failure: list[BaseException] = []

        def work() -> None:
            try:
                result.append(parser(raw))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                failure.append(exc)

        worker = threading.Thread(target=work, name="parse", daemon=True)
        worker.start()
        worker.join(seconds)
        if worker.is_alive():
            raise ParseTimeout(f"processing took longer than {seconds:g} s")
        if failure:
            raise failure[0]
        return result[0]

    return run


def outbox_claim(lease_seconds: float, smtp_timeout: float) -> tuple[timedelta, int]:
    """How long the sender's claim on outbox rows lasts, and how many rows it claims at once.

    A daemon that dies holding claims blocks those mails until the claims
    expire, so they last as long as a mailbox lease (`[daemon] lease_seconds`),
    the configured bound on what a dead daemon may hold up, but at least two
    SMTP timeouts so that one slow delivery does not outlive its claim. The
    sender starts a row only while a whole SMTP timeout still fits into its
    claim and gives the rest back, so a batch can be large.
    """
    claim = max(lease_seconds, 2 * smtp_timeout)
    return timedelta(seconds=claim), 50


class Notifier:
    """sd_notify over $NOTIFY_SOCKET; silent when not run by systemd."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog = int(usec) / 1_000_000 if usec.isdigit() else None

    def send(self, **fields: str) -> None:
        if not self.address:
            return
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.warning("systemd.notify_failed", error=str(exc))


class Runnable(Protocol):
    @property
    def stats(self) -> Any: ...

    def run(self, stop: threading.Event) -> None: ...


@dataclass
class Worker:
    """A blocking source run in its own thread."""

    name: str
    source: Runnable


class Daemon:
    """The service: see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        environ: Mapping[str, str] | None = None,
        holder: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.environ = dict(environ if environ is not None else os.environ)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.notifier = Notifier(self.environ)
        self.engine: Engine | None = None
        self.sessions: sessionmaker[Session] | None = None
        self.ctx: IngestContext | None = None
        self.workers: list[Worker] = []
        self.sender: Sender | None = None
        self.lmtp: Any = None
        self._stop = asyncio.Event()
        self._thread_stop = threading.Event()
        self._reload = asyncio.Event()
        self._exit_deadline: threading.Timer | None = None
        self.started_at = time.monotonic()

    # -- start-up --------------------------------------------------------------

    def startup(self) -> None:
        """Everything that can fail before we accept work; raises StartupError."""
        s = self.settings
        if not (s.mailboxes or s.maildirs or s.lmtp):
            where = s.source or "the built-in defaults (no configuration file found)"
            raise StartupError(
                f"no mailbox configured in {where}: add a [[mailbox]] (IMAP), a [[maildir]] "
                "or an [lmtp] section; see config.example.toml"
            )
        self.engine = make_engine(s.database.url)
        check_schema(self.engine)
        self.sessions = make_session_factory(self.engine)
        self.ctx = self._build_context(s)
        for mailbox in s.mailboxes:
            source = ImapSource(mailbox, self._sink, self.sessions, holder=self.holder,
                                lease_ttl=timedelta(seconds=s.daemon.lease_seconds),
                                clock=self.clock)
            self.workers.append(Worker(f"imap:{mailbox.name}", source))
        for maildir in s.maildirs:
            md = MaildirSource(maildir.path, self._sink, name=maildir.name)
            self.workers.append(Worker(f"maildir:{maildir.name}",
                                       _Polling(md, maildir.poll_interval)))
        claim, batch = outbox_claim(s.daemon.lease_seconds, s.smtp.timeout)
        self.sender = Sender(self.sessions, s.smtp, context.outbox_policy(s),
                             holder=self.holder, interval=s.daemon.send_interval,
                             clock=self.clock, lease=claim, batch=batch)

    def _build_context(self, settings: Settings) -> IngestContext:
        assert self.sessions is not None
        with self.sessions.begin() as session:
            directory.sync(session, settings.teams, settings.agents)
        with self.sessions.begin() as session:
            configured = context.load_configured(session, settings)
            ctx = context.ingest_context(session, settings, configured, clock=self.clock)
        limited = time_limited(parse, settings.daemon.message_time_limit)
        return dataclasses.replace(ctx, parse=limited)

    def _sink(self, raw: bytes, origin: Origin) -> IngestOutcome:
        # Looked up per message, so a reload takes effect with the next one.
        assert self.sessions is not None
        assert self.ctx is not None
        return ingest_sink(self.sessions, self.ctx)(raw, origin)

    # -- running ---------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until told to stop, shut down; returns the exit code."""
        try:
            self.startup()
        except (StartupError, ConfigError, RuleError, TemplateError, HelpdeskError) as exc:
            log.error("daemon.startup_failed", error=str(exc))
            return STARTUP_FAILURE
        except ArgumentError as exc:
            # A database URL SQLAlchemy cannot use (unknown dialect or driver).
            log.error("daemon.startup_failed", error=f"database.url: {exc}")
            return STARTUP_FAILURE
        try:
            return asyncio.run(self.serve(exit_deadline=EXIT_DEADLINE_SECONDS))
        finally:
            if self._exit_deadline is not None:
                self._exit_deadline.cancel()

    async def serve(self, *, exit_deadline: float | None = None) -> int:
        """Run until stopped. With `exit_deadline`, the process ends that many seconds
        after the stop request even if a thread hangs (only `run()` asks for that)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        # Each source gets a thread of its own, not one of the default executor's
        # (min(32, cpus + 4) threads, 6 on two cores): sources never return, so
        # they would take every executor thread, leave mailboxes beyond the pool
        # size unwatched and starve the sender's and reload's database calls.
        # Daemon threads, so one stuck on a frozen server cannot hold up the exit.
        tasks = [asyncio.create_task(self._in_thread(w), name=w.name) for w in self.workers]
        assert self.sender is not None
        tasks.append(asyncio.create_task(self.sender.run(self._stop), name="sender"))
        if self.settings.lmtp is not None:
            handler = LmtpHandler(self._sink, accept=self.settings.is_own_address)
            self.lmtp = start_lmtp(handler, self.settings.lmtp.host, self.settings.lmtp.port)
        ticker = asyncio.create_task(self._tick(), name="status")
        clock_task = asyncio.create_task(self._timers(), name="timers")
        log.info("daemon.started", holder=self.holder, workers=[w.name for w in self.workers],
                 lmtp=self.settings.lmtp is not None)
        self.notifier.send(ready="1", status=self.status())
        await self._stop.wait()

        log.info("daemon.stopping")
        self.notifier.send(stopping="1", status="stopping")
        if exit_deadline is not None:
            self._exit_deadline = threading.Timer(exit_deadline, _exit_now)
            self._exit_deadline.daemon = True
            self._exit_deadline.start()
        self._thread_stop.set()
        if self.lmtp is not None:
            await asyncio.to_thread(self.lmtp.stop)
        done, pending = await asyncio.wait(tasks, timeout=GRACE_SECONDS)
        for task in pending:
            log.warning("daemon.task_did_not_stop", task=task.get_name())
            task.cancel()
        ticker.cancel()
        clock_task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("daemon.task_failed", task=task.get_name(),
                          error=repr(task.exception()))
        if self.engine is not None:
            self.engine.dispose()
        log.info("daemon.stopped")
        return 0

    async def _in_thread(self, worker: Worker) -> None:
        """`worker.source.run(stop)` in a daemon thread of its own; ends when it returns."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def report(exc: BaseException | None) -> None:
            if finished.done():  # cancelled: the daemon stopped waiting for it
                return
            if exc is None:
                finished.set_result(None)
            else:
                finished.set_exception(exc)

        def target() -> None:
            error: BaseException | None = None
            try:
                worker.source.run(self._thread_stop)
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop
                error = exc
            # The loop is gone when the daemon stopped without waiting for us.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(report, error)

        threading.Thread(target=target, name=worker.name, daemon=True).start()
        await finished

    async def _timers(self) -> None:
        """Time-driven rules, once a minute, by whichever daemon holds the timers lease."""
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.run_timers)
            except Exception:
                # A failing pass (database away, a bug) must not end the daemon.
                log.exception("timers.pass_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=TIMER_INTERVAL)

    def run_timers(self) -> int:
        """One pass of the time-driven rules; returns how many fired.

        The pass reads only tickets whose stored deadline has passed (helpdesk.timers),
        in chunks, one transaction each: a long first pass (after an upgrade or a
        change of the timers) does not hold row locks that ingest waits for. Each
        chunk re-takes the lease, so a daemon that lost it stops.
        """
        ctx = self.ctx
        if self.sessions is None or ctx is None or ctx.rules is None or ctx.actions is None:
            return 0
        if not ctx.rules.timers:
            return 0
        now = self.clock()
        lease = timedelta(seconds=max(TIMER_INTERVAL * 2, self.settings.daemon.lease_seconds))
        fired = 0
        seen: set[int] = set()
        while True:
            with self.sessions.begin() as session:
                if not mailboxes.acquire_lease(session, TIMERS_LEASE, self.holder, lease,
                                               self.clock()):
                    return fired
                part = timers.run_chunk(session, ctx.rules.timers, ctx.actions, now, seen=seen)
            fired += len(part.fired)
            if part.done:
                return fired

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def _tick(self) -> None:
        """Status and watchdog pings; a reload as soon as SIGHUP asks for one."""
        interval = STATUS_INTERVAL
        if self.notifier.watchdog:
            interval = min(interval, self.notifier.watchdog / 2)
        while True:
            if self._reload.is_set():
                self._reload.clear()
                await asyncio.to_thread(self.reload)
            self.notifier.send(watchdog="1", status=self.status())
            # Woken early by SIGHUP: a reload must not wait for the next tick.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), timeout=interval)

    def reload(self) -> bool:
        """Re-read the configuration's rules, templates, teams and agents; keep the old on error."""
        try:
            settings = load_settings(self.config_path, self.environ)
            ctx = self._build_context(settings)
        except (ConfigError, RuleError, TemplateError, HelpdeskError) as exc:
            log.error("config.reload_failed", error=str(exc), kept="previous rules and templates")
            return False
        self.ctx = ctx
        log.info("config.reloaded", rules=len(ctx.rules) if ctx.rules is not None else 0)
        return True

    def status(self) -> str:
        """One line for systemd's STATUS and `systemctl status`."""
        parts = []
        for worker in self.workers:
            stats = worker.source.stats
            last = stats.last_poll_at.strftime("%H:%M:%S") if stats.last_poll_at else "never"
            suppressed = sum(stats.suppressed.values())
            parts.append(f"{worker.name}: {stats.ingested} ingested, {stats.duplicates} dup, "
                         f"{stats.quarantined} quarantined, {suppressed} auto-replies "
                         f"suppressed, last poll {last}")
        sent = self.sender.sent if self.sender else 0
        return "; ".join([*parts, f"{sent} mails sent"])


def _exit_now() -> None:
    """End the process at once: the grace period is over and a thread still hangs.

    Nothing is lost: whatever that thread had in hand was not acknowledged and
    comes again after the restart.
    """
    with contextlib.suppress(Exception):
        log.warning("daemon.forced_exit", reason="a thread did not stop within the grace period")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


class _Polling:
    """Adapts a source whose `run` takes a poll interval to the worker signature."""

    def __init__(self, source: MaildirSource, interval: float) -> None:
        self.source = source
        self.interval = interval

    @property
    def stats(self) -> Any:
        return self.source.stats

    def run(self, stop: threading.Event) -> None:
        self.source.run(stop, self.interval)
