"""Prometheus metrics and `/healthz` for `helpdesk run` (issue 11; `[metrics] listen`).

The only module that imports prometheus_client, and only the daemon imports
it, only when `[metrics] listen` is set. Three kinds of figures:

* **Counters and histograms of this process**, fed by the intake's committer
  and the sender through `helpdesk.observe.Observer` (`PrometheusObserver`),
  and by the daemon's sink (arrival-to-commit latency). With several daemons
  each exports its own; Prometheus tells them apart by `instance`.
* **The state of this process's mailbox workers**, read at scrape time
  (`WorkerCollector`): up, last successful poll, lease held, restarts.
* **Store-wide figures**, the same from every daemon and so without any
  per-process label: the outbox, open tickets, the quarantine. Read from the
  store at scrape time, at most every `[metrics] store_cache_seconds`
  however many scrapers ask, and never waiting on a hung database for longer
  than a scrape can afford (`StoreCollector`).

Label values are bounded: mailbox names come from the configuration (anything
else becomes "other"), outcomes, reasons and results from fixed lists. No
Message-ID, address or subject ever becomes a label.

Latency of arrival: the IMAP source fetches each message's INTERNALDATE
(RFC 3501 §2.3.3: when the server received it; whole seconds, on the mail
server's clock), and the daemon observes "commit time minus INTERNALDATE" once
the message's transaction committed. This is what a person waits for, IDLE
notification and any backlog included; it reads up to a second high (the
date has no fraction) and a duplicate (already stored) is not observed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from helpdesk import __version__
from helpdesk.daemon import health
from helpdesk.daemon.health import Health, SingleFlight
from helpdesk.daemon.workers import Worker
from helpdesk.desk import gauges
from helpdesk.desk.gauges import StoreGauges
from helpdesk.observe import Observer, smtp_result
from helpdesk.settings import Settings
from helpdesk.values import Incoming, IngestOutcome, Origin, OutcomeKind

if TYPE_CHECKING:
    from helpdesk.daemon.service import Daemon

T = TypeVar("T")

OUTCOMES: tuple[str, ...] = tuple(kind.value for kind in OutcomeKind)
# Why automatic mail was not sent (helpdesk.desk.notices.why_no_automatic_mail,
# helpdesk.desk.actions).
SUPPRESSION_REASONS = ("automated", "own_address", "noreply", "bounced", "rate_limit",
                       "no_team_address")
SEND_RESULTS = ("2xx", "4xx", "5xx", "connection_error")
OTHER = "other"
NO_TEAM = "(no team)"

# Seconds. Ingest costs milliseconds; a runaway parse is stopped at message_time_limit.
INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                  10.0, 30.0, 60.0)
# Seconds, from INTERNALDATE (whole seconds): IDLE brings mail in within a second or
# two; a missed notification waits for the poll; an outage for much longer.
ARRIVAL_BUCKETS = (1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# A scrape must not hang on a frozen database: Prometheus' default scrape timeout is 10 s.
STORE_READ_TIMEOUT = 5.0


def bounded(value: str | None, allowed: Iterable[str]) -> str:
    """`value` if it is one of `allowed`, else "other": a label never takes arbitrary text."""
    return value if value is not None and value in allowed else OTHER


class PrometheusObserver(Observer):
    """The counters and histograms of this process; see the module docstring."""

    def __init__(self, registry: CollectorRegistry, mailboxes: Iterable[str]) -> None:
        self._mailboxes: frozenset[str] = frozenset()
        self.ingested_total = Counter(
            "helpdesk_messages_ingested",
            "Messages committed to the store, by mailbox and outcome.",
            ["mailbox", "outcome"], registry=registry)
        self.suppressed_total = Counter(
            "helpdesk_auto_replies_suppressed",
            "Automatic replies (and forwards) not sent, by reason (RFC 3834 loop protection, "
            "rate limit, bounced address, ...).", ["reason"], registry=registry)
        self.send_attempts_total = Counter(
            "helpdesk_smtp_send_attempts",
            "The relay's answers about recipients of outgoing mail, by class; connection_error "
            "when there was no answer.", ["result"], registry=registry)
        self.ingest_seconds = Histogram(
            "helpdesk_ingest_duration_seconds",
            "What ingesting one message cost: its parsing plus its share of the group commit.",
            buckets=INGEST_BUCKETS, registry=registry)
        self.arrival_seconds = Histogram(
            "helpdesk_message_arrival_to_commit_seconds",
            "From the IMAP server's INTERNALDATE of a message to the commit of its ticket.",
            ["mailbox"], buckets=ARRIVAL_BUCKETS, registry=registry)
        for reason in (*SUPPRESSION_REASONS, OTHER):
            self.suppressed_total.labels(reason)
        for result in SEND_RESULTS:
            self.send_attempts_total.labels(result)
        self.known_mailboxes(mailboxes)

    def known_mailboxes(self, names: Iterable[str]) -> None:
        """The mailbox label values allowed (the configured names); each counter starts at 0."""
        self._mailboxes = self._mailboxes | frozenset(names)
        for name in self._mailboxes:
            for outcome in OUTCOMES:
                self.ingested_total.labels(name, outcome)

    def mailbox(self, origin: Origin) -> str:
        """The mailbox label of a mail from `origin`: a configured name, or "other"."""
        return bounded(origin.mailbox, self._mailboxes)

    def ingested(self, origin: Origin, outcome: IngestOutcome, seconds: float) -> None:
        self.ingested_total.labels(self.mailbox(origin), outcome.kind.value).inc()
        for reason in outcome.suppressed:
            self.suppressed_total.labels(bounded(reason, SUPPRESSION_REASONS)).inc()
        self.ingest_seconds.observe(max(0.0, seconds))

    def send_attempted(self, code: int | None, recipients: int = 1) -> None:
        if recipients > 0:
            self.send_attempts_total.labels(smtp_result(code)).inc(recipients)

    def committed(self, incoming: Sequence[Incoming], outcomes: Sequence[IngestOutcome],
                  now: datetime) -> None:
        """A sink call returned (its mails committed): observe each new mail's arrival latency."""
        for item, outcome in zip(incoming, outcomes, strict=False):
            if item.arrived_at is None or outcome.kind is OutcomeKind.DUPLICATE:
                continue
            waited = max(0.0, (now - item.arrived_at).total_seconds())
            self.arrival_seconds.labels(self.mailbox(item.origin)).observe(waited)


class WorkerCollector(Collector):
    """The mailbox workers of this process, as they are at scrape time."""

    def __init__(self, workers: Callable[[], Iterable[Worker]],
                 stuck: Callable[[], Iterable[Worker]] = tuple) -> None:
        self._workers = workers
        # The workers the watchdog would call stuck right now (`health.stuck`): a
        # thread hung on a server that stopped answering is not working its mailbox.
        self._stuck = stuck

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        up, last, lease, restarts = self._families()
        stuck = {worker.name for worker in self._stuck()}
        for worker in list(self._workers()):
            mailbox = worker.name.partition(":")[2] or worker.name
            stats = worker.source.stats
            working = (worker.alive and not worker.crashed and worker.name not in stuck
                       and bool(getattr(stats, "up", False)))
            up.add_metric([mailbox], 1.0 if working else 0.0)
            success = getattr(stats, "last_success_at", None)
            if isinstance(success, datetime):
                last.add_metric([mailbox], success.timestamp())
            holds = getattr(worker.source, "holds_lease", None)
            if isinstance(holds, bool):
                lease.add_metric([mailbox], 1.0 if holds else 0.0)
            restarts.add_metric([mailbox], float(worker.restarts))
        yield from (up, last, lease, restarts)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
                             CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "helpdesk_mailbox_up",
                "1 while this daemon's worker for the mailbox works (its last pass, or its "
                "look at the lease while another daemon holds it, succeeded); 0 while it fails, "
                "has died, is stuck, or has not finished its first pass.", labels=["mailbox"]),
            GaugeMetricFamily(
                "helpdesk_mailbox_last_successful_poll_timestamp_seconds",
                "Unix time this daemon last completed a pass over the mailbox.",
                labels=["mailbox"]),
            GaugeMetricFamily(
                "helpdesk_mailbox_lease_held",
                "1 when this daemon holds the mailbox's lease (works it), 0 on standby. IMAP only.",
                labels=["mailbox"]),
            CounterMetricFamily(
                "helpdesk_worker_restarts", "Times the mailbox's worker died and was restarted.",
                labels=["mailbox"]),
        )


class Cached:
    """The last result of `read` (or its failure) for `ttl` seconds; `read` is single-flight."""

    def __init__(self, read: Callable[[], T], ttl: float, *, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = SingleFlight(read, timeout, name="store-gauges")
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._value: Any = None
        self._error: BaseException | None = None
        self.reads = 0

    def __call__(self) -> Any:
        with self._lock:
            now = self._clock()
            if self._at is None or now - self._at >= self.ttl:
                self.reads += 1
                try:
                    self._value, self._error = self._read(), None
                except Exception as exc:  # noqa: BLE001 - remembered, re-raised below
                    self._value, self._error = None, exc
                self._at = self._clock()
            if self._error is not None:
                raise self._error
            return self._value


class StoreCollector(Collector):
    """The store-wide figures (no per-process label), through a short cache."""

    def __init__(self, read: Callable[[], StoreGauges], *, cache_seconds: float,
                 timeout: float = STORE_READ_TIMEOUT) -> None:
        self.cache = Cached(read, cache_seconds, timeout=timeout)

    def describe(self) -> list[Metric]:
        # Without this the registry would call collect() (a database read) to learn the names.
        return [*self._families(), self._store_up()]

    def collect(self) -> Iterator[Metric]:
        store_up = self._store_up()
        try:
            gauges: StoreGauges = self.cache()
        except Exception:  # noqa: BLE001 - down, locked, or no answer in time: say so
            store_up.add_metric([], 0.0)
            yield store_up
            return
        store_up.add_metric([], 1.0)
        yield store_up
        yield from _store_families(gauges, self._families())

    @staticmethod
    def _store_up() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "helpdesk_store_up",
            "1 when the last read of the store-wide figures worked (0: they are missing).")

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "helpdesk_outbox_mails",
                "Outgoing mail by state: queued (due now), retrying (waiting for a later "
                "attempt), sent, failed.", labels=["state"]),
            GaugeMetricFamily(
                "helpdesk_outbox_oldest_due_age_seconds",
                "How long the longest-waiting due mail has waited since it became due "
                "(0: none is due)."),
            GaugeMetricFamily(
                "helpdesk_tickets_open",
                "Open tickets (new, open, pending) by team and status.", labels=["team", "status"]),
            GaugeMetricFamily(
                "helpdesk_quarantine_held",
                "Quarantined messages waiting for a person (state held)."),
        )


def _store_families(g: StoreGauges, families: Sequence[GaugeMetricFamily]) -> Iterator[Metric]:
    outbox, oldest, tickets, quarantine = families
    for state, count in (("queued", g.outbox_queued), ("retrying", g.outbox_retrying),
                         ("sent", g.outbox_sent), ("failed", g.outbox_failed)):
        outbox.add_metric([state], float(count))
    oldest.add_metric([], g.outbox_oldest_due_seconds)
    for (team, status), count in sorted(g.open_tickets.items(), key=lambda i: (i[0][0] or "",
                                                                                 i[0][1])):
        tickets.add_metric([team or NO_TEAM, status], float(count))
    quarantine.add_metric([], float(g.quarantine_held))
    yield from families


class Metrics:
    """Everything `[metrics]` adds to a daemon: the registry, the observer, the HTTP server."""

    def __init__(
        self,
        *,
        mailboxes: Iterable[str],
        workers: Callable[[], Iterable[Worker]],
        stuck: Callable[[], Iterable[Worker]] = tuple,
        read_store: Callable[[], StoreGauges],
        health: Callable[[], Health],
        cache_seconds: float,
    ) -> None:
        # No `_created` series beside each counter: they double the output for nothing.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        info = Gauge("helpdesk_build_info", "The running helpdesk's version (always 1).",
                     ["version"], registry=self.registry)
        info.labels(__version__).set(1)
        self.observer = PrometheusObserver(self.registry, mailboxes)
        self.registry.register(WorkerCollector(workers, stuck))
        self.registry.register(StoreCollector(read_store, cache_seconds=cache_seconds))
        self.health = health
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> Metrics:
        """Listen on host:port and serve in a thread; OSError when the address is taken."""
        app = _app(make_wsgi_app(self.registry), self.health)
        self._server = make_server(host, port, app, server_class=_server_class(host),
                                   handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        """The port actually bound (useful when 0 was asked for)."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def for_daemon(daemon: Daemon, settings: Settings, mailboxes: Iterable[str]) -> Metrics:
    """The metrics of `daemon` (started, its store open); `start()` them to serve."""
    engine, sessions = daemon.engine, daemon.sessions
    assert engine is not None
    assert sessions is not None
    store = health.StoreProbe(engine)

    def read_store() -> StoreGauges:
        with sessions() as session:
            return gauges.read(session, daemon.clock())

    return Metrics(
        mailboxes=mailboxes,
        workers=lambda: list(daemon.workers.values()),
        stuck=lambda: health.stuck_now(list(daemon.workers.values()), daemon.intake),
        read_store=read_store,
        health=lambda: health.check(daemon.liveness, store),
        cache_seconds=settings.metrics.store_cache_seconds,
    )


Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _app(metrics: Wsgi, health: Callable[[], Health]) -> Wsgi:
    """/metrics (Prometheus' own WSGI app), /healthz, and 404 for anything else."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            verdict = health()
            status = "200 OK" if verdict.ok else "503 Service Unavailable"
            return _text(start_response, status, verdict.text())
        if path == "/":
            return _text(start_response, "200 OK", "helpdesk: /metrics, /healthz\n")
        return _text(start_response, "404 Not Found", "not found: try /metrics or /healthz\n")

    return app


def _text(start_response: Callable[..., Any], status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data))), ("Cache-Control", "no-store")])
    return [data]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per request: a slow /metrics (the store) never holds up /healthz."""

    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


def _server_class(host: str) -> type[_ThreadingServer]:
    return _ThreadingServer6 if ":" in host else _ThreadingServer


class _QuietHandler(WSGIRequestHandler):
    """Scrapes every few seconds would flood the journal; nothing is logged per request."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


__all__ = ["Cached", "Metrics", "PrometheusObserver", "StoreCollector", "WorkerCollector",
           "bounded", "for_daemon"]
