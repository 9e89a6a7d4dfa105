"""`helpdesk run` as a process: SIGTERM in the middle of a sender batch (issue 9 (d)), and
mail queued by the CLI or by ingest reaching the relay while the daemon polls only every
30 s (issue 14)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.daemon_helpers import ROOT, TEAMS, Daemon, daemon_env, wait_for
from tests.conftest import Store
from tests.faults.helpers import assert_exactly_once, items, queue
from tests.faults.relay import ScriptedRelay
from tests.mailfactory import make_mail

CONFIG = """\
[helpdesk]
name = "Example IT"
support_address = "support@example.com"
secret = "test-signing-secret"

[database]
url = "{url}"

[daemon]
send_interval = {send_interval}
lease_seconds = 60.0

[smtp]
host = "127.0.0.1"
port = {port}
tls = "none"
timeout = 5.0

[auto_reply]
max_per_sender = 1000

[rules]
dir = "{root}/rules"

[templates]
dir = "{root}/templates"

[[maildir]]
name = "support"
path = "{maildir}"
poll_interval = 0.2

[[agent]]
name = "Alice Admin"
addresses = ["alice@example.com"]
teams = ["support"]
{teams}"""


@pytest.fixture
def relay() -> Iterator[ScriptedRelay]:
    server = ScriptedRelay().start()
    yield server
    server.stop()


def write_config(tmp_path: Path, store: Store, relay: ScriptedRelay,
                 send_interval: float) -> Path:
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    teams = "".join(f'\n[[team]]\nname = "{name}"\naddress = "{address}"\n'
                    for name, address in TEAMS)
    path = tmp_path / "helpdesk.toml"
    path.write_text(CONFIG.format(url=store.url, port=relay.port, root=ROOT.as_posix(),
                                  maildir=maildir, send_interval=send_interval, teams=teams))
    return path


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    made: list[Daemon] = []
    yield made
    for daemon in made:
        daemon.kill()


@pytest.mark.slow
def test_sigterm_in_the_middle_of_50_mails_records_what_went_and_sends_the_rest_once(
    store: Store, relay: ScriptedRelay, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """SIGTERM while the sender works through a claimed batch of 50 mails (to two recipients
    each): it exits 0, every mail the relay took is recorded as sent, no claim is left
    behind, and after a restart the rest goes out: each mail to each recipient once."""
    relay.script.data_delay = 0.04
    queue(store, 50, cc=("carl@example.org",))
    path = write_config(tmp_path, store, relay, send_interval=0.5)
    first = Daemon(path, tmp_path / "logs", name="first")
    daemons.append(first.start())
    assert wait_for(lambda: len(relay.accepted) >= 10, 30, 0.01, alive=first)
    code, seconds = first.terminate()
    assert code == 0
    assert seconds < 10

    accepted = {a.message_id for a in relay.accepted}
    rows = items(store)
    assert 0 < len(accepted) < 50, "the stop landed in the middle of the batch"
    assert {i.message_id for i in rows if i.state == "sent"} == accepted, \
        "every mail the relay accepted was recorded before the exit"
    assert [i.id for i in rows if i.claimed_by is not None] == [], "claims were given back"
    assert_exactly_once(store, relay)

    second = Daemon(path, tmp_path / "logs", name="second")
    daemons.append(second.start())
    assert wait_for(lambda: all(i.state == "sent" for i in items(store)), 30, 0.1,
                    alive=second)
    assert second.terminate()[0] == 0
    assert len(relay.accepted) == 50
    assert_exactly_once(store, relay)


@pytest.mark.slow
def test_mail_queued_by_ingest_and_by_the_cli_reaches_the_relay_without_waiting_for_a_poll(
    store: Store, relay: ScriptedRelay, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """With `send_interval = 30`, the acknowledgement of an ingested mail and `helpdesk
    tickets reply` run as another process each reach the relay within 10 s: the wake-up
    (NOTIFY, or data_version on SQLite: the daemon's sender is a process of its own, so
    both reach it that way), not the poll, sends them."""
    path = write_config(tmp_path, store, relay, send_interval=30.0)
    daemon = Daemon(path, tmp_path / "logs", name="daemon")
    daemons.append(daemon.start())
    daemon.wait_event("daemon.started", timeout=30)
    time.sleep(1.0)  # the sender's first pass is over; it now waits for 30 s

    mail = make_mail(subject="Printer on floor 3 is jammed",
                     sender="Dana Reyes <dana.reyes@example.org>", to="support@example.com",
                     message_id="<wake-1@mail.example.org>")
    (tmp_path / "Maildir" / "tmp" / "1.wake").write_bytes(mail)
    (tmp_path / "Maildir" / "tmp" / "1.wake").rename(tmp_path / "Maildir" / "new" / "1.wake")
    assert wait_for(lambda: len(relay.accepted) == 1, 10, 0.05, alive=daemon), \
        "the acknowledgement waited for a poll"
    assert relay.accepted[0].recipients == ["dana.reyes@example.org"]

    started = time.monotonic()
    reply = subprocess.run(
        [*_helpdesk(path), "tickets", "reply", "1", "--as", "alice@example.com",
         "-m", "We are on our way with a new drum."],
        cwd=ROOT, env=daemon_env(), capture_output=True, timeout=60)
    assert reply.returncode == 0, reply.stderr.decode()
    assert wait_for(lambda: len(relay.accepted) == 2, 10, 0.05, alive=daemon), \
        "the CLI's reply waited for a poll"
    elapsed = time.monotonic() - started
    assert b"We are on our way" in relay.accepted[1].data
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    print(f"tickets reply -> relay: {elapsed:.2f} s (process start included)")


def _helpdesk(config: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "helpdesk", "--config", str(config)]
