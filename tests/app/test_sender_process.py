"""The daemon's outbox sender in a process of its own (`helpdesk.daemon.sender_process`).

Against a real `helpdesk run`, Dovecot and aiosmtpd sinks: a commit wakes the
process at once (the send interval here is a minute), a sender process that
dies is started again and sends, a reload with another relay restarts it with
that relay, and nothing of it outlives the daemon.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
import structlog

from helpdesk.daemon import sender_process
from helpdesk.delivery.outbox import OutboxPolicy
from helpdesk.settings import SmtpSettings
from tests.app.daemon_helpers import (
    Daemon,
    append_all,
    received_ids,
    start_sink,
    wait_for,
)
from tests.app.test_daemon import DaemonFactory, daemons, dovecot, settings_for, sink, wait_idle
from tests.app.test_daemon_metrics import metrics_config, started
from tests.conftest import Store
from tests.mailfactory import make_mail
from tests.servers import free_port
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp_sink import SmtpSink

__all__ = ["daemons", "dovecot", "sink"]  # fixtures, imported for pytest

# The safety net's interval: longer than every wait below, so only a wake-up sends.
SLOW = 'send_interval = 60.0'


def slow_sender(config: str) -> str:
    assert "send_interval = 0.5" in config
    return config.replace("send_interval = 0.5", SLOW)


def request(n: int) -> bytes:
    return make_mail(subject=f"Laptop {n} does not boot", message_id=f"<sp{n}@mail.example.com>",
                     sender=f"Person {n} <p{n}@example.com>")


def acknowledged(relay: SmtpSink, n: int) -> bool:
    """Whether `relay` has the acknowledgement of `request(n)` (it answers that mail)."""
    return any(f"<sp{n}@mail.example.com>".encode() in m.data for m in relay.messages)


def sender_pids(daemon: Daemon) -> list[int]:
    return [int(e["pid"]) for e in daemon.events("sender.started")]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone as a process, only not reaped yet.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z")


def test_a_commit_wakes_the_sender_process_at_once(
    store: Store, sink: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory
) -> None:
    """The interval is a minute: the acknowledgement goes out within seconds of the commit,
    because the commit wakes the process (NOTIFY on PostgreSQL, SQLite's data_version)."""
    daemon = daemons(slow_sender(settings_for(store, sink, dovecot))).start()
    wait_idle(daemon, store)
    daemon.wait_event("sender.started")
    time.sleep(0.5)  # its first pass, at start, found nothing: it idles for the interval
    append_all(dovecot, [request(1)])
    assert wait_for(lambda: acknowledged(sink, 1), 10, alive=daemon), daemon.output()[-3000:]
    code, _seconds = daemon.terminate()
    assert code == 0
    (pid,) = sender_pids(daemon)
    assert wait_for(lambda: gone(pid), 5), "the sender process outlived the daemon"
    (stopped,) = daemon.events("sender.stopped")
    assert stopped["sent"] == 1


def test_a_sender_process_that_dies_is_started_again_and_sends(
    store: Store, sink: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory
) -> None:
    """SIGKILL to the sender process: the daemon logs it, /healthz says so, the daemon goes
    on ingesting, starts a new one after a pause, and the mail queued meanwhile is sent
    once."""
    config = metrics_config(settings_for(store, sink, dovecot), free_port())
    daemon, endpoint = started(daemons, store, config)
    daemon.wait_event("sender.started")
    (first,) = sender_pids(daemon)
    os.kill(first, signal.SIGKILL)
    died = daemon.wait_event("sender.process_died")
    assert died[0]["exit_code"] == -signal.SIGKILL
    status, text = endpoint.health()
    assert status == 503, text
    assert "sender: its process died" in text
    append_all(dovecot, [request(2)])
    daemon.wait_event("message.ingested", where=lambda e: e.get("message_id") ==
                      "sp2@mail.example.com")
    daemon.wait_event("sender.started", timeout=20, count=2)
    assert wait_for(lambda: acknowledged(sink, 2), 15, alive=daemon), daemon.output()[-3000:]
    assert endpoint.health()[0] == 200
    time.sleep(1.0)  # nothing more comes
    assert sum(b"<sp2@mail.example.com>" in m.data for m in sink.messages) == 1
    ids = received_ids(sink)
    assert len(ids) == len(set(ids))
    # The daemon killed: its sender process does not go on without it.
    second = sender_pids(daemon)[-1]
    daemon.kill()
    assert wait_for(lambda: gone(second), 5), "the sender process outlived a killed daemon"


def test_a_reload_restarts_the_sender_process_with_the_new_relay(
    store: Store, sink: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory
) -> None:
    """SIGHUP after `[smtp] port` changed: the process is restarted with the new relay, and
    the next acknowledgement goes there, not to the old one."""
    daemon = daemons(settings_for(store, sink, dovecot)).start()
    wait_idle(daemon, store)
    daemon.wait_event("sender.started")
    other = start_sink()
    try:
        daemon.config.write_text(daemon.config.read_text().replace(
            f"port = {sink.port}\n", f"port = {other.port}\n"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("config.reloaded")
        daemon.wait_event("sender.restarting")
        daemon.wait_event("sender.started", count=2)
        append_all(dovecot, [request(3)])
        assert wait_for(lambda: acknowledged(other, 3), 15, alive=daemon)
        assert not acknowledged(sink, 3)
        assert daemon.terminate()[0] == 0
    finally:
        other.stop()


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_an_unchanged_reload_keeps_the_sender_process(
    store: Store, sink: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory
) -> None:
    """SIGHUP with the same `[smtp]` and `[outbox]`: the same process goes on."""
    daemon = daemons(settings_for(store, sink, dovecot)).start()
    wait_idle(daemon, store)
    daemon.wait_event("sender.started")
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config.reloaded")
    time.sleep(1.0)
    assert len(sender_pids(daemon)) == 1
    assert not daemon.events("sender.restarting")
    assert daemon.terminate()[0] == 0


def test_a_sender_process_that_cannot_be_started_is_tried_again(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """No fork (memory, a process limit): the supervisor logs it, /healthz has the reason
    during the pause, and it tries again instead of ending (which would stop sending)."""
    monkeypatch.setattr(sender_process, "RESTART_PAUSE", 0.2)
    spec = sender_process.SenderSpec(
        database_url="sqlite://", database_password=None, smtp=SmtpSettings(),
        policy=OutboxPolicy(), holder="test", interval=1.0, lease=timedelta(seconds=60),
        batch=10)
    supervisor = sender_process.SenderProcess(spec)
    attempts: list[float] = []
    seen_down: list[str | None] = []

    def no_fork() -> None:
        attempts.append(time.monotonic())
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(supervisor, "_start", no_fork)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(stop))
        deadline = time.monotonic() + 5
        while len(attempts) < 3 and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            seen_down.append(supervisor.down)
        stop.set()
        await asyncio.wait_for(task, 5)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    assert len(attempts) >= 3
    assert [e for e in logs if e["event"] == "sender.start_failed"]
    assert any(d and "could not be started" in d for d in seen_down)
    assert supervisor.down is None
