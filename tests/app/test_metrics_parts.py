"""The metrics' own parts: bounded labels, the observer's counters, the cache and the probes,
what /healthz says about workers. The daemon scraped over HTTP: test_daemon_metrics.py."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from helpdesk.daemon.health import (
    Health,
    SingleFlight,
    SqliteFile,
    StoreProbe,
    check,
    worker_problems,
)
from helpdesk.daemon.metrics import (
    Cached,
    PrometheusObserver,
    StoreCollector,
    WorkerCollector,
    bounded,
)
from helpdesk.daemon.workers import Worker
from helpdesk.desk.gauges import StoreGauges
from helpdesk.observe import NULL_OBSERVER, smtp_result
from helpdesk.sources.base import Backoff, SourceStats
from helpdesk.store.db import make_engine
from helpdesk.values import Incoming, IngestOutcome, Origin, OutcomeKind

NOW = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back: (name, sorted labels) -> value."""
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return samples(registry).get((name, tuple(sorted(labels.items()))))


def outcome(kind: OutcomeKind, *, suppressed: tuple[str, ...] = ()) -> IngestOutcome:
    return IngestOutcome(kind, ticket_id=7, message_id="<secret-id@example.org>",
                         suppressed=suppressed)


# -- labels ---------------------------------------------------------------------------------


def test_smtp_results_are_the_first_digit_or_a_connection_error() -> None:
    """250 is 2xx, 451 4xx, 550 5xx; no answer, 354 or nonsense is a connection error."""
    assert [smtp_result(c) for c in (250, 251, 451, 421, 550, 554)] == [
        "2xx", "2xx", "4xx", "4xx", "5xx", "5xx"]
    assert {smtp_result(c) for c in (None, 0, 99, 354, 600, 1000)} == {"connection_error"}


def test_a_label_outside_its_list_becomes_other() -> None:
    """Arbitrary text (a Message-ID, an address) never becomes a label value."""
    assert bounded("support", {"support"}) == "support"
    assert bounded("<a@b>", {"support"}) == "other"
    assert bounded(None, {"support"}) == "other"


def test_ingested_counts_by_configured_mailbox_and_outcome_and_never_by_message() -> None:
    """Each commit counts once under its mailbox and outcome; an unknown mailbox is "other";
    no label value anywhere is a Message-ID or an address."""
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, ["support", "local"])
    assert value(registry, "helpdesk_messages_ingested_total", mailbox="local",
                 outcome="reply") == 0  # known series start at 0, so rate() works at once
    support = Origin("imap", mailbox="support", uidvalidity=1, uid=4)
    observer.ingested(support, outcome(OutcomeKind.NEW_TICKET), 0.02)
    observer.ingested(support, outcome(OutcomeKind.NEW_TICKET), 0.03)
    observer.ingested(support, outcome(OutcomeKind.QUARANTINED), 0.5)
    observer.ingested(Origin("imap", mailbox="<x@evil.example>"), outcome(OutcomeKind.REPLY), 1)
    assert value(registry, "helpdesk_messages_ingested_total", mailbox="support",
                 outcome="new_ticket") == 2
    assert value(registry, "helpdesk_messages_ingested_total", mailbox="support",
                 outcome="quarantined") == 1
    assert value(registry, "helpdesk_messages_ingested_total", mailbox="other",
                 outcome="reply") == 1
    assert value(registry, "helpdesk_ingest_duration_seconds_count") == 4
    assert value(registry, "helpdesk_ingest_duration_seconds_bucket", le="0.025") == 1
    for (_name, labels), _v in samples(registry).items():
        for _key, label in labels:
            assert "@" not in label, label
            assert "<" not in label, label


def test_suppressed_auto_replies_count_by_bounded_reason() -> None:
    """One count per suppressed reply, by reason; a reason nobody listed counts as other."""
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, ["support"])
    origin = Origin("imap", mailbox="support")
    observer.ingested(origin, outcome(OutcomeKind.NEW_TICKET,
                                      suppressed=("automated", "bounced")), 0.01)
    observer.ingested(origin, outcome(OutcomeKind.REPLY, suppressed=("automated",)), 0.01)
    observer.ingested(origin, outcome(OutcomeKind.REPLY, suppressed=("x@y.example",)), 0.01)
    assert value(registry, "helpdesk_auto_replies_suppressed_total", reason="automated") == 2
    assert value(registry, "helpdesk_auto_replies_suppressed_total", reason="bounced") == 1
    assert value(registry, "helpdesk_auto_replies_suppressed_total", reason="rate_limit") == 0
    assert value(registry, "helpdesk_auto_replies_suppressed_total", reason="other") == 1


def test_send_attempts_count_each_recipient_by_result() -> None:
    """A relay answer per recipient; a relay problem counts for every recipient of the mail."""
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, [])
    observer.send_attempted(250)
    observer.send_attempted(250)
    observer.send_attempted(451)
    observer.send_attempted(None, 3)
    observer.send_attempted(535, 2)
    observer.send_attempted(None, 0)
    assert value(registry, "helpdesk_smtp_send_attempts_total", result="2xx") == 2
    assert value(registry, "helpdesk_smtp_send_attempts_total", result="4xx") == 1
    assert value(registry, "helpdesk_smtp_send_attempts_total", result="5xx") == 2
    assert value(registry, "helpdesk_smtp_send_attempts_total", result="connection_error") == 3


def test_arrival_latency_is_commit_minus_internaldate_without_duplicates() -> None:
    """New mail is observed (seconds since INTERNALDATE, never negative); a duplicate or a
    mail without an arrival time is not."""
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, ["support"])
    origin = Origin("imap", mailbox="support")
    incoming = [
        Incoming(b"a", origin, arrived_at=NOW - timedelta(seconds=2)),
        Incoming(b"b", origin, arrived_at=NOW - timedelta(seconds=40)),
        Incoming(b"c", origin, arrived_at=NOW - timedelta(hours=3)),  # a duplicate
        Incoming(b"d", origin),  # LMTP, Maildir: no arrival time
        Incoming(b"e", origin, arrived_at=NOW + timedelta(seconds=5)),  # server clock ahead
    ]
    kinds = [OutcomeKind.NEW_TICKET, OutcomeKind.REPLY, OutcomeKind.DUPLICATE,
             OutcomeKind.NEW_TICKET, OutcomeKind.QUARANTINED]
    observer.committed(incoming, [outcome(k) for k in kinds], NOW)
    name = "helpdesk_message_arrival_to_commit_seconds"
    assert value(registry, f"{name}_count", mailbox="support") == 3
    assert value(registry, f"{name}_sum", mailbox="support") == 42
    assert value(registry, f"{name}_bucket", mailbox="support", le="1.0") == 1  # the clamped 0
    assert value(registry, f"{name}_bucket", mailbox="support", le="2.0") == 2


def test_the_null_observer_accepts_everything() -> None:
    """Without [metrics] the committer and sender call the base observer, which does nothing."""
    NULL_OBSERVER.ingested(Origin("stdin"), outcome(OutcomeKind.NEW_TICKET), 0.1)
    NULL_OBSERVER.send_attempted(250, 2)


# -- the cache and the probes ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cached_reads_once_per_ttl_and_remembers_a_failure_as_long() -> None:
    """Many scrapes within the TTL cost one read; after it a new read; a failure is cached too."""
    clock = Clock()
    calls: list[float] = []
    fail = False

    def read() -> float:
        calls.append(clock.now)
        if fail:
            raise RuntimeError("database is locked")
        return clock.now

    cached = Cached(read, 5.0, timeout=1.0, clock=clock)
    assert [cached() for _ in range(10)] == [100.0] * 10
    clock.now = 104.9
    assert cached() == 100.0
    clock.now = 105.0
    assert cached() == 105.0
    assert calls == [100.0, 105.0]
    fail = True
    clock.now = 111.0
    for _ in range(3):
        with pytest.raises(RuntimeError, match="locked"):
            cached()
    assert len(calls) == 3
    fail = False
    clock.now = 116.0
    assert cached() == 116.0


def test_single_flight_answers_in_time_and_never_piles_up_threads() -> None:
    """A call that hangs: every caller gets TimeoutError within the bound, one thread runs it."""
    release = threading.Event()
    started: list[int] = []

    def hang() -> str:
        started.append(1)
        release.wait(10)
        return "answered"

    probe = SingleFlight(hang, timeout=0.2)
    begin = time.monotonic()
    for _ in range(5):
        with pytest.raises(TimeoutError):
            probe()
    assert time.monotonic() - begin < 5 * 0.2 + 1.5
    assert len(started) == 1
    release.set()
    time.sleep(0.1)
    # Once the hung call has finished, each call is a fresh one: a probe is never stale.
    assert probe() == "answered"
    assert probe() == "answered"
    assert len(started) == 3


def test_the_store_probe_finds_a_deleted_or_replaced_sqlite_file(tmp_path: Path) -> None:
    """SELECT 1 still works on a deleted SQLite file; the probe says the file is gone."""
    path = tmp_path / "helpdesk.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
    probe = StoreProbe(engine, timeout=2)
    assert probe.problem() is None
    path.unlink()
    problem = probe.problem()
    assert problem is not None
    assert "is gone" in problem
    with engine.connect() as conn:  # what /healthz must not be fooled by
        conn.exec_driver_sql("SELECT 1")
    path.write_bytes(b"")  # something made a new, empty file in its place
    assert "was replaced" in (probe.problem() or "")
    assert SqliteFile(path).problem() is None
    engine.dispose()


def test_the_store_probe_reports_a_database_that_refuses(tmp_path: Path) -> None:
    """A store that raises is a one-line problem naming the error."""
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    problem = StoreProbe(engine, timeout=5).problem()
    assert problem is not None
    assert problem.startswith("store: OperationalError")
    assert "\n" not in problem
    engine.dispose()


# -- workers and /healthz --------------------------------------------------------------------


class Source:
    """A source whose behaviour the test sets: run until stopped, raise, or hang silently."""

    def __init__(self, fail: bool = False, silent: bool = False) -> None:
        self.stats = SourceStats()
        self.fail = fail
        self.last_beat = time.monotonic() - (3600 if silent else 0)

    def run(self, stop: threading.Event) -> None:
        if self.fail:
            raise RuntimeError("IMAP library bug")
        self.stats.up = True
        self.stats.last_success_at = NOW
        stop.wait()


def started(worker: Worker) -> Worker:
    worker.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (worker.crashed or worker.source.stats.up):
        time.sleep(0.01)
    return worker


def test_healthz_names_a_crashed_and_a_stuck_worker_and_not_a_stopping_one() -> None:
    """A worker waiting to be restarted after a crash and a silent one are problems; one that
    works or is being stopped is not."""
    crashed = started(Worker("imap:a", lambda: Source(fail=True), stuck_after=60,
                             backoff=Backoff(base=30, cap=30)))
    silent = Worker("imap:b", lambda: Source(silent=True), stuck_after=10).start()
    fine = started(Worker("maildir:c", Source, stuck_after=10))
    stopping = Worker("imap:d", lambda: Source(silent=True), stuck_after=10).start()
    stopping.request_stop()
    workers = [crashed, silent, fine, stopping]
    try:
        now = time.monotonic()
        problems = worker_problems(workers, now, progress=now - 3600)
        assert problems == ["imap:a: died (RuntimeError: IMAP library bug); restarting",
                            "imap:b: stuck, no sign of life for 3600 s"]
        # The intake committed a moment ago: a mailbox waiting on it is not stuck.
        assert worker_problems(workers, now, progress=now)[1:] == []
        verdict = check(lambda: problems, None)
        assert not verdict.ok
        assert verdict.text().splitlines() == problems
        assert Health().text() == "ok\n"
    finally:
        for worker in workers:
            worker.request_stop()
            worker.join(5)


def test_a_dead_worker_thread_is_a_problem() -> None:
    """A worker whose thread ended although nobody stopped it is reported."""
    worker = Worker("imap:gone", Source, stuck_after=60)
    assert worker_problems([worker], time.monotonic(), 0.0) == [
        "imap:gone: the worker thread has ended"]


def test_worker_collector_reports_up_last_poll_lease_and_restarts() -> None:
    """Per mailbox: up only while it works (not crashed, not stuck), the last successful
    pass, the lease where there is one."""
    class Imap(Source):
        holds_lease = True

    working = started(Worker("imap:support", Imap, stuck_after=60))
    crashed = started(Worker("maildir:local", lambda: Source(fail=True), stuck_after=60,
                             backoff=Backoff(base=30, cap=30)))
    registry = CollectorRegistry()
    stuck: list[Worker] = []
    registry.register(WorkerCollector(lambda: [working, crashed], lambda: stuck))
    try:
        assert value(registry, "helpdesk_mailbox_up", mailbox="support") == 1
        stuck.append(working)  # its thread hangs on a server that stopped answering
        assert value(registry, "helpdesk_mailbox_up", mailbox="support") == 0
        stuck.clear()
        assert value(registry, "helpdesk_mailbox_up", mailbox="local") == 0
        assert value(registry, "helpdesk_mailbox_last_successful_poll_timestamp_seconds",
                     mailbox="support") == NOW.timestamp()
        assert value(registry, "helpdesk_mailbox_last_successful_poll_timestamp_seconds",
                     mailbox="local") is None
        assert value(registry, "helpdesk_mailbox_lease_held", mailbox="support") == 1
        assert value(registry, "helpdesk_mailbox_lease_held", mailbox="local") is None
        assert value(registry, "helpdesk_worker_restarts_total", mailbox="local") == 1
    finally:
        for worker in (working, crashed):
            worker.request_stop()
            worker.join(5)


GAUGES = StoreGauges(outbox_queued=2, outbox_retrying=1, outbox_sent=40, outbox_failed=3,
                     outbox_oldest_due_seconds=75.5,
                     open_tickets={("networking", "new"): 4, (None, "open"): 1},
                     quarantine_held=2)


def test_store_collector_exports_the_snapshot_and_reads_it_only_when_scraped() -> None:
    """Registering reads nothing; a scrape exports every figure; a failing read drops them
    and says store_up 0."""
    reads: list[int] = []
    broken = False

    def read() -> StoreGauges:
        reads.append(1)
        if broken:
            raise RuntimeError("no such table: outbox")
        return GAUGES

    registry = CollectorRegistry()
    registry.register(StoreCollector(read, cache_seconds=0.0))
    assert reads == []
    got = samples(registry)
    assert got[("helpdesk_store_up", ())] == 1
    assert {labels[0][1]: v for (name, labels), v in got.items()
            if name == "helpdesk_outbox_mails"} == {
                "queued": 2, "retrying": 1, "sent": 40, "failed": 3}
    assert got[("helpdesk_outbox_oldest_due_age_seconds", ())] == 75.5
    assert got[("helpdesk_tickets_open", (("status", "new"), ("team", "networking")))] == 4
    assert got[("helpdesk_tickets_open", (("status", "open"), ("team", "(no team)")))] == 1
    assert got[("helpdesk_quarantine_held", ())] == 2
    broken = True
    got = samples(registry)
    assert got[("helpdesk_store_up", ())] == 0
    assert not [name for name, _ in got if name.startswith(("helpdesk_outbox",
                                                              "helpdesk_tickets"))]

