"""`helpdesk run`: the long-running service, shaped like uvicorn's server lifecycle.

start-up (settings are given; store checked; directory synced; rules and
templates loaded; the intake's worker processes and writer started; sources
built) -> supervise (one worker thread per IMAP mailbox and Maildir, the LMTP
listener, the outbox sender's process (`daemon/sender_process.py`), a status
ticker that also watches every worker)
-> shutdown (stop fetching, let the batch in hand commit, kill what the
parsing workers still compute, release leases and claims, exit 0 within the
grace period).

Signals only set flags: SIGTERM and SIGINT stop; SIGHUP reloads the whole
configuration file — rules, templates, teams and agents, limits, SMTP, and
mailboxes: a mailbox whose settings (or password file) changed is reconnected,
a new one started, a removed one stopped. What cannot change without a restart
(the database URL, the LMTP listener, the number of parsing workers) is logged
and the running value kept; a broken file keeps everything as it was.

A worker thread that dies is logged at error level, reported in the status
and the mailbox's health, and restarted with backoff; one that stops showing
signs of life for longer than its limit stops the systemd watchdog pings, so
systemd restarts us (`daemon/workers.py`).

systemd: READY=1 once everything runs, STATUS= with the counters, WATCHDOG=1
at half the watchdog interval, STOPPING=1 on the way out. Without
$NOTIFY_SOCKET all of that is a no-op.

`[metrics] listen` adds an HTTP server for Prometheus (/metrics) and probes
(/healthz): `daemon/metrics.py` (imported only then), `daemon/health.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from helpdesk import context
from helpdesk.daemon import duties, health, reload
from helpdesk.daemon.sender_process import SenderProcess, SenderSpec
from helpdesk.daemon.systemd import Notifier
from helpdesk.daemon.workers import Polling, Runnable, Worker, join_all
from helpdesk.delivery import wakeup
from helpdesk.desk import directory
from helpdesk.errors import ConfigError, HelpdeskError
from helpdesk.flow import mailboxes
from helpdesk.flow.ingest import IngestContext
from helpdesk.intake import Commit, Committer, Intake, PreparePool
from helpdesk.observe import NULL_OBSERVER, Observer
from helpdesk.rules import RuleError
from helpdesk.settings import MailboxSettings, MaildirSettings, Settings, load_settings
from helpdesk.settings.security import security_warnings
from helpdesk.sources.imap import ImapSource
from helpdesk.sources.lmtp import LmtpHandler, start_lmtp
from helpdesk.sources.maildir import MaildirSource
from helpdesk.store.db import check_schema, make_engine, make_session_factory
from helpdesk.store.models import utcnow
from helpdesk.templates import TemplateError
from helpdesk.values import Incoming, IngestOutcome

if TYPE_CHECKING:
    from helpdesk.daemon.metrics import Metrics

log = structlog.get_logger()

STARTUP_FAILURE = 3
# SIGTERM must end the process within systemd's TimeoutStopSec; leave headroom.
GRACE_SECONDS = 8.0
# How long the sources get to finish the batch in hand before the parsing
# workers are killed under them (what they had is not acknowledged: it comes again).
SOURCE_GRACE_SECONDS = 2.0
# If even the grace period is not enough (a thread stuck on a frozen server or
# database keeps the interpreter from exiting), `run()` ends the process here.
EXIT_DEADLINE_SECONDS = 9.0
# sys.setswitchinterval for the daemon (run()): see there.
SWITCH_INTERVAL_S = 0.0005
STATUS_INTERVAL = 10.0


class StartupError(HelpdeskError):
    """The daemon cannot start (no source configured, a broken rule file, ...)."""


def outbox_claim(lease_seconds: float, smtp_timeout: float) -> tuple[timedelta, int]:
    """How long the sender's claim on outbox rows lasts, and how many rows it claims at once.

    A daemon that dies holding claims blocks those mails until the claims
    expire, so they last as long as a mailbox lease (`[daemon] lease_seconds`),
    the configured bound on what a dead daemon may hold up, but at least two
    SMTP timeouts so that one slow delivery does not outlive its claim. The
    sender renews its claims while it holds them and bounds each mail by a
    deadline inside the claim (`helpdesk.smtp.sender`), so a batch can be large.
    """
    claim = max(lease_seconds, 2 * smtp_timeout)
    return timedelta(seconds=claim), 50


def stuck_after(settings: Settings) -> float:
    """How long a worker may show no sign of life before it counts as stuck.

    A pass waits at most an IMAP read timeout per command and the intake's
    time limit per mail (the writer's progress counts as life too), so a
    healthy worker is never silent for several of them in a row.
    """
    return 4 * settings.intake.message_time_limit + 240.0


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
        log_setup: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        # How the sender's process sets up its logging (picklable); None: as it comes.
        self.log_setup = log_setup
        self.config_path = config_path
        self.environ = dict(environ if environ is not None else os.environ)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.notifier = Notifier(self.environ)
        self.engine: Engine | None = None
        self.sessions: sessionmaker[Session] | None = None
        self.ctx: IngestContext | None = None
        self.intake: Intake | None = None
        self.workers: dict[str, Worker] = {}
        self.sender: SenderProcess | None = None
        self.lmtp: Any = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._exit_deadline: threading.Timer | None = None
        self._stuck_reported: set[str] = set()
        self.started_at = time.monotonic()
        # [metrics]: None when off. `serving` is True from READY until the stop.
        self.metrics: Metrics | None = None
        self.serving = False
        self._sender_task: asyncio.Task[None] | None = None

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
        self.engine = make_engine(s.database.url, password=s.database.password_value)
        check_schema(self.engine)
        self.sessions = make_session_factory(self.engine)
        self.ctx = self._build_context(s)
        if s.metrics.listen:
            self.metrics = self._build_metrics(s)
        self.intake = self._build_intake(s)
        for mailbox in s.mailboxes:
            self._add_worker(self._imap_worker(mailbox, s))
        for maildir in s.maildirs:
            self._add_worker(self._maildir_worker(maildir, s))
        claim, batch = outbox_claim(s.daemon.lease_seconds, s.smtp.timeout)
        # In a process of its own (daemon/sender_process.py), with the real clock.
        self.sender = SenderProcess(
            SenderSpec(database_url=s.database.url, database_password=s.database.password_value,
                       smtp=s.smtp, policy=context.outbox_policy(s), holder=self.holder,
                       interval=s.daemon.send_interval, lease=claim, batch=batch,
                       log_setup=self.log_setup),
            observer=self.observer)
        # A commit that queued mail (a group commit of ingest, timers) wakes the sender at
        # once: NOTIFY on PostgreSQL (SQLite's watcher needs nothing from us).
        wakeup.install_commit_hooks(self.sessions)
        warnings = security_warnings(s)
        if warnings:  # once per start, not per message (issue 12)
            log.warning("security.warned", warnings=warnings)
        self._start_metrics(s)

    def _build_context(self, settings: Settings) -> IngestContext:
        assert self.sessions is not None
        directory.mirror(self.sessions, settings.teams, settings.agents, always=True)
        with self.sessions.begin() as session:
            configured = context.load_configured(session, settings)
            return context.ingest_context(session, settings, configured, clock=self.clock)

    def _build_intake(self, settings: Settings) -> Intake:
        assert self.sessions is not None
        intake = settings.intake
        workers = intake.workers or os.cpu_count() or 1
        # forkserver: our threads make a plain fork of this process unsafe.
        pool = PreparePool(workers, time_limit=intake.message_time_limit,
                           start_method="forkserver")
        committer = Committer(self.sessions, self._context, batch_max=intake.batch_max,
                              batch_ms=intake.batch_ms, observer=self.observer).start()
        return Intake(pool, committer, self._context)

    def _context(self) -> IngestContext:
        # Looked up per batch, so a reload takes effect with the next one.
        assert self.ctx is not None
        return self.ctx

    def _sink(self, incoming: Sequence[Incoming]) -> list[IngestOutcome]:
        return self._stage(incoming)()

    def _stage(self, incoming: Sequence[Incoming]) -> Commit:
        """Prepare `incoming` now; the returned call commits it (and tells the metrics)."""
        assert self.intake is not None
        commit = self.intake.stage(incoming)

        def committed() -> list[IngestOutcome]:
            outcomes = commit()
            if self.metrics is not None:
                # Committed: the moment that ends the arrival-to-commit latency.
                with contextlib.suppress(Exception):
                    self.metrics.observer.committed(incoming, outcomes, self.clock())
            return outcomes

        return committed

    # -- metrics and health (`[metrics]`) ------------------------------------------

    @property
    def observer(self) -> Observer:
        """Who the committer and the sender report to: the metrics, or nobody."""
        return self.metrics.observer if self.metrics is not None else NULL_OBSERVER

    def _build_metrics(self, settings: Settings) -> Metrics:
        # Imported here: without [metrics] the daemon never loads prometheus_client.
        from helpdesk.daemon.metrics import for_daemon

        return for_daemon(self, settings, reload.source_names(settings))

    def _start_metrics(self, settings: Settings) -> None:
        address = settings.metrics.address
        if self.metrics is None or address is None:
            return
        try:
            self.metrics.start(*address)
        except OSError as exc:
            raise StartupError(f"metrics.listen: cannot listen on {settings.metrics.listen}: "
                               f"{exc.strerror or exc}") from exc
        log.info("metrics.listening", listen=settings.metrics.listen)

    def liveness(self) -> list[str]:
        """What keeps this daemon from being healthy, besides the store (for /healthz)."""
        if not self.serving:
            return ["daemon: stopping" if self._stop.is_set() else "daemon: starting"]
        return health.liveness(self.workers.values(), self.intake, self._sender_task,
                               self.sender.down if self.sender is not None else None)

    # -- workers -------------------------------------------------------------------

    def _imap_worker(self, mailbox: MailboxSettings, s: Settings) -> Worker:
        assert self.sessions is not None
        sessions = self.sessions

        pool = [m.name for m in s.mailboxes]

        def make() -> Runnable:
            return ImapSource(mailbox, self._sink, sessions, holder=self.holder,
                              lease_ttl=timedelta(seconds=s.daemon.lease_seconds),
                              clock=self.clock,
                              max_message_bytes=s.intake.max_message_bytes,
                              share_of=pool, stage=self._stage)

        return Worker(f"imap:{mailbox.name}", make, stuck_after=stuck_after(s),
                      on_problem=self._worker_problem(mailbox.name))

    def _maildir_worker(self, maildir: MaildirSettings, s: Settings) -> Worker:
        assert self.sessions is not None
        sessions = self.sessions

        def make() -> Runnable:
            source = MaildirSource(maildir.path, self._sink, name=maildir.name,
                                   sessions=sessions, clock=self.clock,
                                   max_message_bytes=s.intake.max_message_bytes,
                                   batch_max=s.intake.batch_max, stage=self._stage)
            return Polling(source, maildir.poll_interval)

        return Worker(f"maildir:{maildir.name}", make, stuck_after=stuck_after(s),
                      on_problem=self._worker_problem(maildir.name))

    def _add_worker(self, worker: Worker) -> None:
        self.workers[worker.name] = worker

    def _worker_problem(self, mailbox: str) -> Callable[[str, str], None]:
        def report(_worker: str, problem: str) -> None:
            assert self.sessions is not None
            # Best effort: the store may be what killed the worker.
            with contextlib.suppress(Exception), self.sessions.begin() as session:
                mailboxes.record_health(session, mailbox, "worker died", problem, self.clock())

        return report

    # -- running ---------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until told to stop, shut down; returns the exit code."""
        try:
            self.startup()
        except (StartupError, ConfigError, RuleError, TemplateError, HelpdeskError) as exc:
            log.error("daemon.startup_failed", error=str(exc))
            self._close_intake()
            self._close_metrics()
            return STARTUP_FAILURE
        except ArgumentError as exc:
            # A database URL SQLAlchemy cannot use (unknown dialect or driver).
            log.error("daemon.startup_failed", error=f"database.url: {exc}")
            return STARTUP_FAILURE
        # The writer thread gives up the GIL for every regex search and SQL
        # statement; with the sources and the sender busy, taking it back
        # waited up to the default 5 ms switch interval each time (a mail's
        # rules cost several ms of waiting, bench/daemon.py). 0.5 ms keeps
        # the threads' turns short at a negligible cost in switches.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
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
        # Each source gets a thread of its own (daemon/workers.py), not one of
        # the default executor's: sources never return, so they would take
        # every executor thread and starve the sender's database calls.
        await asyncio.to_thread(self._heartbeat)
        for worker in self.workers.values():
            worker.start()
        assert self.sender is not None
        sender = asyncio.create_task(self.sender.run(self._stop), name="sender")
        self._sender_task = sender
        if self.settings.lmtp is not None:
            handler = LmtpHandler(self._sink, accept=self.settings.is_own_address)
            self.lmtp = start_lmtp(handler, self.settings.lmtp.host, self.settings.lmtp.port,
                                   socket=self.settings.lmtp.socket,
                                   max_message_bytes=self.settings.intake.max_message_bytes)
        ticker = asyncio.create_task(self._tick(), name="status")
        clock_task = asyncio.create_task(
            duties.repeat(self.run_timers, duties.TIMER_INTERVAL, self._stop, at_once=True,
                          failed="timers.pass_failed"), name="timers")
        # Every third of a lease, so the other daemons count this one in.
        beating = asyncio.create_task(
            duties.repeat(self._heartbeat, self.settings.daemon.lease_seconds / 3, self._stop,
                          at_once=False, failed="daemon.heartbeat_failed"), name="heartbeat")
        log.info("daemon.started", holder=self.holder, workers=list(self.workers),
                 lmtp=self.settings.lmtp is not None)
        self.notifier.send(ready="1", status=self.status())
        self.serving = True
        await self._stop.wait()
        beating.cancel()
        await self._shutdown(sender, exit_deadline)
        ticker.cancel()
        clock_task.cancel()
        return 0

    async def _shutdown(self, sender: asyncio.Task[None], exit_deadline: float | None) -> None:
        log.info("daemon.stopping")
        self.serving = False  # /healthz says so at once: a load balancer drains us
        self.notifier.send(stopping="1", status="stopping")
        started = time.monotonic()
        if exit_deadline is not None:
            self._exit_deadline = threading.Timer(exit_deadline, _exit_now)
            self._exit_deadline.daemon = True
            self._exit_deadline.start()
        for worker in self.workers.values():
            worker.request_stop()
        if self.lmtp is not None:
            await asyncio.to_thread(self.lmtp.stop)
        workers = list(self.workers.values())
        # The batch in hand may still commit and be acknowledged; after a short
        # grace whatever is still being parsed is killed and comes again later.
        await asyncio.to_thread(join_all, workers, SOURCE_GRACE_SECONDS)
        if self.intake is not None:
            self.intake.pool.close()
        left = max(0.1, GRACE_SECONDS - (time.monotonic() - started))
        await asyncio.to_thread(join_all, workers, left)
        for worker in workers:
            if worker.alive:
                log.warning("daemon.task_did_not_stop", task=worker.name)
        if self.intake is not None:
            await asyncio.to_thread(self.intake.committer.stop)
        await asyncio.to_thread(self._leave)
        left = max(0.1, GRACE_SECONDS - (time.monotonic() - started))
        done, _pending = await asyncio.wait([sender], timeout=left)
        if not done:
            log.warning("daemon.task_did_not_stop", task="sender")
            sender.cancel()
        elif not sender.cancelled() and sender.exception() is not None:
            log.error("daemon.task_failed", task="sender", error=repr(sender.exception()))
        if self.engine is not None:
            self.engine.dispose()
        self._close_metrics()
        log.info("daemon.stopped")

    def _close_intake(self) -> None:
        if self.intake is not None:
            self.intake.close()

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()

    # -- duties: the heartbeat among the daemons, the timers (daemon/duties.py) ------

    def _heartbeat(self) -> None:
        if self.sessions is not None:
            duties.heartbeat(self.sessions, self.holder, self.settings.daemon.lease_seconds,
                             [m.name for m in self.settings.mailboxes], self.clock)

    def _leave(self) -> None:
        if self.sessions is not None:
            duties.leave(self.sessions, self.holder)

    def run_timers(self) -> int:
        """One pass of the time-driven rules, if this daemon holds the timers lease."""
        if self.sessions is None or self.ctx is None:
            return 0
        return duties.run_timers(self.sessions, self.ctx, self.holder,
                                 self.settings.daemon.lease_seconds, self.clock)

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
            fields = {"status": self.status()}
            if self.healthy():
                fields["watchdog"] = "1"
            self.notifier.send(**fields)
            # Woken early by SIGHUP: a reload must not wait for the next tick.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), timeout=interval)

    def healthy(self) -> bool:
        """False when a worker is stuck: then systemd's watchdog is no longer fed."""
        now = time.monotonic()
        progress = self.intake.last_progress if self.intake is not None else 0.0
        stuck = health.stuck(self.workers.values(), now, progress)
        for worker in stuck:
            if worker.name not in self._stuck_reported:
                self._stuck_reported.add(worker.name)
                log.error("worker.stuck", worker=worker.name,
                          silent_s=round(worker.silent_for(now), 1),
                          action="watchdog pings stopped; systemd restarts the daemon")
        self._stuck_reported &= {w.name for w in stuck}
        return not stuck

    # -- reload --------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the whole configuration (see the module docstring); keep the old on error."""
        try:
            settings = load_settings(self.config_path, self.environ)
            ctx = self._build_context(settings)
        except (ConfigError, RuleError, TemplateError, HelpdeskError) as exc:
            log.error("config.reload_failed", error=str(exc), kept="the running configuration")
            return False
        kept = reload.needs_restart(self.settings, settings)
        for key in kept:
            log.warning("config.needs_restart", key=key)
        self.ctx = ctx
        if self.metrics is not None:
            self.metrics.observer.known_mailboxes(reload.source_names(settings))
        changed = self._reload_workers(settings)
        if self.sender is not None:
            self.sender.update(settings.smtp, context.outbox_policy(settings))
        if self.intake is not None:
            self.intake.pool.time_limit = settings.intake.message_time_limit
            self.intake.committer.batch_max = settings.intake.batch_max
            self.intake.committer.batch_ms = settings.intake.batch_ms
        self.settings = settings
        log.info("config.reloaded", rules=len(ctx.rules) if ctx.rules is not None else 0,
                 workers_changed=changed, needs_restart=kept)
        return True

    def _reload_workers(self, settings: Settings) -> list[str]:
        """Restart the workers whose settings changed, start new ones, stop removed ones."""
        plan = reload.plan_workers(self.settings, settings, list(self.workers))
        builders: dict[str, Callable[[], Worker]] = {}
        for mailbox in settings.mailboxes:
            builders[f"imap:{mailbox.name}"] = functools.partial(
                self._imap_worker, mailbox, settings)
        for maildir in settings.maildirs:
            builders[f"maildir:{maildir.name}"] = functools.partial(
                self._maildir_worker, maildir, settings)
        for name in plan.retire:
            self._retire(name)
        for name in plan.start:
            self.workers[name] = builders[name]().start()
        restarted = set(plan.start)
        return [f"-{n}" for n in plan.retire if n not in restarted] + list(plan.start)

    def _retire(self, name: str) -> None:
        worker = self.workers.pop(name)
        worker.request_stop()
        if not worker.join(GRACE_SECONDS):
            log.warning("daemon.task_did_not_stop", task=name)

    # -- status --------------------------------------------------------------------

    def status(self) -> str:
        """One line for systemd's STATUS and `systemctl status`."""
        parts = []
        for worker in self.workers.values():
            stats = worker.source.stats
            last = stats.last_poll_at.strftime("%H:%M:%S") if stats.last_poll_at else "never"
            suppressed = sum(stats.suppressed.values())
            text = (f"{worker.name}: {stats.ingested} ingested, {stats.duplicates} dup, "
                    f"{stats.quarantined} quarantined, {suppressed} auto-replies "
                    f"suppressed, last poll {last}")
            if worker.restarts:
                text += f", restarted {worker.restarts}x ({worker.last_error})"
            parts.append(text)
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
