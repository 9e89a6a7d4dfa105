"""`[metrics]`: a real `helpdesk run` scraped over HTTP as mail flows (issue 11 item 1).

The daemon is a process against a throwaway Dovecot and an aiosmtpd relay; the
tests read /metrics with Prometheus' own parser and /healthz as a load
balancer would, and look at values that move: mail ingested, refused and
quarantined, acknowledgements accepted, greylisted, refused or not delivered
at all, a worker that hangs on a frozen IMAP server, a store that is gone.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.app.daemon_helpers import (
    Daemon,
    append_all,
    frozen,
    process_tree,
    start_sink,
    wait_for,
)
from tests.app.test_daemon import (
    DaemonFactory,
    daemons,
    dovecot,
    settings_for,
    wait_idle,
)
from tests.conftest import Store
from tests.mailfactory import make_mail
from tests.servers import free_port
from tests.servers.dovecot import DovecotServer
from tests.servers.postgres import PgServer
from tests.servers.smtp_sink import SmtpSink

__all__ = ["daemons", "dovecot"]  # fixtures, imported for pytest

SQLITE = pytest.mark.parametrize("store", ["sqlite"], indirect=True)
POSTGRES = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
STUCK_SITE = Path(__file__).parent / "stuck_site"
ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def relay() -> Iterator[SmtpSink]:
    """An aiosmtpd relay that a test may stop on purpose (`server.stop()`)."""
    server = start_sink()
    try:
        yield server
    finally:
        with contextlib.suppress(AssertionError):  # aiosmtpd: "SMTP daemon not running"
            server.stop()


class Endpoint:
    """The daemon's metrics listener, as Prometheus and a load balancer see it."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, timeout: float = 15.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def scrape(self) -> Samples:
        status, text = self.get("/metrics")
        assert status == 200, text
        found: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def value(self, name: str, **labels: str) -> float | None:
        return self.scrape().get((name, tuple(sorted(labels.items()))))

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` whose labels include `labels`."""
        return sum(v for (n, ls), v in self.scrape().items()
                   if n == name and set(labels.items()) <= set(ls))

    def wait(self, check: Callable[[Samples], bool], timeout: float = 20.0) -> Samples:
        last: list[Samples] = [{}]

        def ok() -> bool:
            last[0] = self.scrape()
            return check(last[0])
        if not wait_for(ok, timeout, step=0.2):
            shown = {k: v for k, v in last[0].items() if k[0].startswith("helpdesk_")}
            raise AssertionError(f"metrics did not get there within {timeout} s: {shown}")
        return last[0]

    def health(self, timeout: float = 15.0) -> tuple[int, str]:
        return self.get("/healthz", timeout)


def metrics_config(base: str, port: int, **overrides: str) -> str:
    text = base + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\nstore_cache_seconds = 0.2\n'
    for old, new in overrides.items():
        text = text.replace(old, new)
    return text


def started(daemon_factory: DaemonFactory, store: Store, config: str,
            env: dict[str, str] | None = None) -> tuple[Daemon, Endpoint]:
    daemon = daemon_factory(config, env=env).start()
    port = int(config.split('listen = "127.0.0.1:')[1].split('"')[0])
    endpoint = Endpoint(port)
    wait_idle(daemon, store)
    assert wait_for(lambda: endpoint.health()[0] == 200, 10), endpoint.health()
    return daemon, endpoint


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


INGESTED = "helpdesk_messages_ingested_total"
ATTEMPTS = "helpdesk_smtp_send_attempts_total"
ARRIVAL = "helpdesk_message_arrival_to_commit_seconds_count"
DURATION = "helpdesk_ingest_duration_seconds_count"


@pytest.mark.slow
@SQLITE
def test_metrics_move_as_mail_flows_in_and_out(
    store: Store, relay: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory,
) -> None:
    """Ingested by outcome, suppressed replies, the relay's answers by class, the outbox,
    the quarantine, open tickets and both histograms follow the mail; healthz stays 200."""
    config = metrics_config(settings_for(store, relay, dovecot), free_port(),
                            **{"max_per_sender = 1000": "max_per_sender = 1"})
    daemon, metrics = started(daemons, store, config)
    first = metrics.scrape()
    assert first[key(INGESTED, mailbox="support", outcome="new_ticket")] == 0
    assert first[key("helpdesk_mailbox_up", mailbox="support")] == 1
    assert first[key("helpdesk_mailbox_lease_held", mailbox="support")] == 1
    polled = first[key("helpdesk_mailbox_last_successful_poll_timestamp_seconds",
                       mailbox="support")]
    assert time.time() - 60 < polled <= time.time()
    assert first[key("helpdesk_store_up")] == 1
    assert first[key("helpdesk_outbox_mails", state="sent")] == 0
    assert first[key("helpdesk_quarantine_held")] == 0

    # Two requests from one person (the rate limit of 1 answers the first only) and garbage.
    request = make_mail(subject="Printer jams", sender="Ann Lee <ann@example.org>",
                        message_id="<m-1@example.org>")
    again = make_mail(subject="Also the scanner", sender="Ann Lee <ann@example.org>",
                      message_id="<m-2@example.org>")
    append_all(dovecot, [request, again, b"\x00\x01 not a mail \xff" * 20])
    got = metrics.wait(lambda s: s.get(key("helpdesk_outbox_mails", state="sent")) == 1
                       and s.get(key(INGESTED, mailbox="support", outcome="quarantined")) == 1)
    assert got[key(INGESTED, mailbox="support", outcome="new_ticket")] == 2
    assert got[key("helpdesk_auto_replies_suppressed_total", reason="rate_limit")] == 1
    assert got[key(ATTEMPTS, result="2xx")] == 1
    assert got[key(ARRIVAL, mailbox="support")] == 3
    assert got[key(DURATION)] == 3
    assert got[key("helpdesk_quarantine_held")] == 1
    assert got[key("helpdesk_outbox_mails", state="queued")] == 0
    assert sum(v for (n, _), v in got.items() if n == "helpdesk_tickets_open") == 2
    assert time.time() - 10 < got[key("helpdesk_mailbox_last_successful_poll_timestamp_seconds",
                                       mailbox="support")] > polled

    # The same mail once more: a duplicate, which is no arrival.
    append_all(dovecot, [request])
    got = metrics.wait(lambda s: s.get(key(INGESTED, mailbox="support",
                                            outcome="duplicate")) == 1)
    assert got[key(ARRIVAL, mailbox="support")] == 3
    assert got[key(DURATION)] == 4

    # The relay greylists one acknowledgement and refuses the other.
    relay.handler.refuse_next.extend(["451 4.7.1 greylisted, try again later",
                                      "550 5.1.1 no such mailbox"])
    append_all(dovecot, [make_mail(subject=f"Request {n}", sender=f"p{n}@example.org",
                                   message_id=f"<r-{n}@example.org>") for n in (1, 2)])
    got = metrics.wait(lambda s: s.get(key(ATTEMPTS, result="4xx")) == 1
                       and s.get(key(ATTEMPTS, result="5xx")) == 1)
    assert got[key("helpdesk_outbox_mails", state="retrying")] == 2
    assert got[key(ATTEMPTS, result="2xx")] == 1

    # The relay goes away: the next acknowledgement waits, due, and its wait grows.
    relay.stop()
    append_all(dovecot, [make_mail(subject="Monitor", sender="q@example.org",
                                   message_id="<down@example.org>")])
    got = metrics.wait(lambda s: s.get(key(ATTEMPTS, result="connection_error"), 0) >= 1
                       and s.get(key("helpdesk_outbox_mails", state="queued")) == 1)
    waited = got[key("helpdesk_outbox_oldest_due_age_seconds")]
    time.sleep(1.5)
    assert (metrics.value("helpdesk_outbox_oldest_due_age_seconds") or 0) >= waited + 1
    assert metrics.health() == (200, "ok\n")
    assert daemon.terminate()[0] == 0


@pytest.mark.slow
@SQLITE
def test_a_mailbox_whose_server_is_gone_is_down_and_its_last_poll_stops(
    store: Store, relay: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory,
) -> None:
    """The IMAP server stops: mailbox_up drops to 0 and the last successful poll stays
    where it was (what the mailbox-down alert watches); the daemon itself is healthy."""
    config = metrics_config(settings_for(store, relay, dovecot, poll_interval=1.0), free_port())
    daemon, metrics = started(daemons, store, config)
    assert metrics.value("helpdesk_mailbox_up", mailbox="support") == 1
    dovecot.stop()
    got = metrics.wait(lambda s: s.get(key("helpdesk_mailbox_up", mailbox="support")) == 0)
    last = got[key("helpdesk_mailbox_last_successful_poll_timestamp_seconds", mailbox="support")]
    time.sleep(2.5)  # two poll intervals
    assert metrics.value("helpdesk_mailbox_last_successful_poll_timestamp_seconds",
                         mailbox="support") == last
    assert metrics.health() == (200, "ok\n")
    assert daemon.terminate()[0] == 0


@pytest.mark.slow
@SQLITE
def test_healthz_is_503_while_a_worker_hangs_on_a_frozen_imap_server(
    store: Store, relay: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory,
) -> None:
    """A mailbox thread stuck on a server that stopped answering: 503 naming it, and
    /metrics still answers with the mailbox down; 200 and up again once the server is back."""
    config = metrics_config(settings_for(store, relay, dovecot, poll_interval=1.0), free_port())
    env = {"PYTHONPATH": f"{STUCK_SITE}{os.pathsep}{ROOT}", "HELPDESK_TEST_STUCK_AFTER": "3"}
    daemon, metrics = started(daemons, store, config, env=env)
    assert dovecot.proc is not None
    with frozen(process_tree(dovecot.proc.pid)):
        # The next IDLE ends after the 1 s poll interval; its DONE then waits for an answer.
        assert wait_for(lambda: metrics.health()[0] == 503, 20, step=0.3)
        status, text = metrics.health()
        assert status == 503
        assert text.startswith("imap:support: stuck, no sign of life for"), text
        assert metrics.value("helpdesk_mailbox_up", mailbox="support") == 0
    assert wait_for(lambda: metrics.health() == (200, "ok\n"), 30, step=0.3), metrics.health()
    assert wait_for(lambda: metrics.value("helpdesk_mailbox_up", mailbox="support") == 1, 15)
    assert daemon.terminate()[0] == 0


@pytest.mark.slow
@SQLITE
def test_healthz_is_503_when_the_sqlite_file_is_deleted_under_the_daemon(
    store: Store, relay: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory,
) -> None:
    """Deleting the database file does not stop SQLite answering SELECT 1 on the open
    connections, but everything written from then on is lost: 503, naming the file."""
    config = metrics_config(settings_for(store, relay, dovecot), free_port())
    daemon, metrics = started(daemons, store, config)
    path = Path(store.url.removeprefix("sqlite:///"))
    assert path.is_file()
    path.unlink()
    status, text = metrics.health()
    assert status == 503
    assert text == f"store: the SQLite file {path} is gone (deleted while in use)\n"
    assert daemon.terminate()[0] == 0


@pytest.mark.slow
@POSTGRES
def test_healthz_is_503_within_its_bound_while_postgresql_does_not_answer(
    store: Store, relay: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory,
    pg_server: PgServer,
) -> None:
    """A frozen PostgreSQL: /healthz answers 503 within seconds (never hangs), /metrics says
    the store-wide figures are missing; both recover when the database does."""
    config = metrics_config(settings_for(store, relay, dovecot), free_port())
    daemon, metrics = started(daemons, store, config)
    assert metrics.value("helpdesk_store_up") == 1
    postmaster = int((pg_server.data / "postmaster.pid").read_text().split()[0])
    with frozen(process_tree(postmaster)):
        time.sleep(0.5)  # the pooled connections are idle; the probe's next query will hang
        began = time.monotonic()
        status, text = metrics.health()
        took = time.monotonic() - began
        assert (status, text) == (503, "store: no answer within 2 s\n")
        assert took < 10, took
        assert metrics.value("helpdesk_store_up") == 0
        assert metrics.value("helpdesk_outbox_mails", state="sent") is None
    assert wait_for(lambda: metrics.health() == (200, "ok\n"), 30, step=0.3), metrics.health()
    assert wait_for(lambda: metrics.value("helpdesk_store_up") == 1, 15, step=0.3)
    assert daemon.terminate()[0] == 0


@SQLITE
def test_a_taken_metrics_port_is_a_startup_error_naming_the_key(
    store: Store, relay: SmtpSink, daemons: DaemonFactory, tmp_path: Path,
) -> None:
    """[metrics] listen on a port in use: exit 3, and the log says which key and why."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The mailbox is never contacted: start-up fails before any source runs.
        config = metrics_config(settings_for(store, relay, None), port)
        config += '\n[[maildir]]\nname = "local"\npath = "' + str(tmp_path / "md") + '"\n'
        for sub in ("new", "cur", "tmp"):
            (tmp_path / "md" / sub).mkdir(parents=True, exist_ok=True)
        daemon = daemons(config).start()
        assert daemon.wait(60) == 3
    (failed,) = daemon.events("daemon.startup_failed")
    assert failed["error"].startswith(f"metrics.listen: cannot listen on 127.0.0.1:{port}:")

