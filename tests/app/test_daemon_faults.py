"""The daemon under faults, as a process: a poison message, a runaway parse, a stop mid-work.

Issue 9 §1 and issue 12 §11, end to end: one message the server cannot return
never stops the mailbox; a message whose parsing runs away is stopped at the
time limit and quarantined while the daemon keeps working; SIGTERM is honoured
within 10 s whatever a parsing worker is doing, and what was not committed
comes again after the restart.
"""

from __future__ import annotations

import glob
import os
import signal
import time
from pathlib import Path

import pytest

from tests.app.daemon_helpers import (
    append_all,
    folder_counts,
    incoming_ids,
    quarantine_count,
    wait_for,
)
from tests.app.test_daemon import (
    DaemonFactory,
    daemons,
    dovecot,
    settings_for,
    sink,
)
from tests.conftest import Store
from tests.mailfactory import make_mail
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp_sink import SmtpSink

__all__ = ["daemons", "dovecot", "sink"]  # fixtures, imported for pytest

SQLITE = pytest.mark.parametrize("store", ["sqlite"], indirect=True)
RUNAWAY_SITE = Path(__file__).parent / "runaway_site"
ROOT = Path(__file__).resolve().parents[2]


def runaway_env() -> dict[str, str]:
    """PYTHONPATH that loads runaway_site/sitecustomize.py into every daemon process."""
    return {"PYTHONPATH": f"{RUNAWAY_SITE}{os.pathsep}{ROOT}"}


def requests(count: int, prefix: str) -> list[bytes]:
    return [make_mail(subject=f"Request {i}", sender=f"user{i}@example.org",
                      message_id=f"<{prefix}-{i}@example.org>") for i in range(count)]


def message_file(server: DovecotServer, uid: int) -> Path:
    maildir = Path(server.dir) / "mail" / "example.test" / "support" / "Maildir"
    for line in (maildir / "dovecot-uidlist").read_text().splitlines()[1:]:
        number, _, rest = line.partition(" ")
        if int(number) == uid:
            base = rest.rpartition(":")[2]
            (path,) = [Path(p) for p in glob.glob(f"{maildir}/*/{base}*")]
            return path
    raise AssertionError(f"no file for UID {uid}")


@pytest.mark.slow
@SQLITE
def test_a_message_the_server_cannot_return_does_not_stop_the_daemon(
    store: Store, sink: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory,
) -> None:
    """An unreadable message among five: four stored and moved at once; the bad one is
    retried on later polls, then quarantined and moved to Failed; the daemon runs on."""
    append_all(dovecot, requests(5, "poison"))
    folder_counts(dovecot, "INBOX")  # Dovecot has written its uidlist
    os.chmod(message_file(dovecot, 3), 0)
    daemon = daemons(settings_for(store, sink, dovecot, poll_interval=1.0)).start()
    assert wait_for(lambda: folder_counts(dovecot, "INBOX", "Processed", "Failed")
                    == {"INBOX": 0, "Processed": 4, "Failed": 1}, 60, 0.2, alive=daemon), \
        daemon.output()[-3000:]
    assert quarantine_count(store) == 1
    assert sorted(incoming_ids(store)) == [f"poison-{i}@example.org" for i in (0, 1, 3, 4)]
    assert len(daemon.events("imap.fetch_failed")) == 2
    (gave_up,) = daemon.events("imap.fetch_given_up")
    assert gave_up["uid"] == 3
    assert daemon.running
    append_all(dovecot, requests(1, "after"))
    assert wait_for(lambda: "after-0@example.org" in incoming_ids(store), 30, alive=daemon)
    assert daemon.terminate()[0] == 0


@pytest.mark.slow
@SQLITE
def test_a_runaway_parse_is_stopped_at_the_limit_and_the_mailbox_goes_on(
    store: Store, sink: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory,
) -> None:
    """A mail whose parsing spins (GIL held) is killed at message_time_limit and
    quarantined with its bytes; the mails around it are stored."""
    mails = requests(3, "limit")
    mails.insert(1, make_mail(subject="RUNAWAY", message_id="<runaway@example.org>"))
    append_all(dovecot, mails)
    config = settings_for(store, sink, dovecot, message_time_limit=2.0)
    daemon = daemons(config, env=runaway_env()).start()
    assert wait_for(lambda: folder_counts(dovecot, "INBOX", "Processed", "Failed")
                    == {"INBOX": 0, "Processed": 3, "Failed": 1}, 60, 0.2, alive=daemon), \
        daemon.output()[-3000:]
    assert sorted(incoming_ids(store)) == [f"limit-{i}@example.org" for i in range(3)]
    quarantined = [e for e in daemon.events("message.ingested") if e["outcome"] == "quarantined"]
    assert [e["uid"] for e in quarantined] == [2]
    assert "took longer than 2 s" in quarantined[0]["error"]
    assert daemon.terminate()[0] == 0


@pytest.mark.slow
@SQLITE
def test_sigterm_is_honoured_while_a_worker_spins_and_nothing_is_lost(
    store: Store, sink: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory,
) -> None:
    """SIGTERM while a parsing worker spins with the GIL held: exit 0 within 10 s; the mail
    in hand was not acknowledged, and a restart (without the fault) stores it."""
    append_all(dovecot, [make_mail(subject="RUNAWAY", message_id="<spin@example.org>")])
    config = settings_for(store, sink, dovecot, message_time_limit=600.0)
    daemon = daemons(config, env=runaway_env()).start()
    daemon.wait_event("imap.lease_acquired", timeout=30)
    time.sleep(3.0)  # fetched and handed to a worker, which now spins
    assert folder_counts(dovecot, "INBOX") == {"INBOX": 1}
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = daemon.wait(15)
    assert code == 0
    assert time.monotonic() - started < 10.0
    assert not daemon.events("daemon.forced_exit")
    assert folder_counts(dovecot, "INBOX") == {"INBOX": 1}
    assert incoming_ids(store) == []

    again = daemons(config, name="again").start()
    assert wait_for(lambda: incoming_ids(store) == ["spin@example.org"], 30, alive=again)
    assert again.terminate()[0] == 0
