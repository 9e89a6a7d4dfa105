"""The IMAP source against a real Dovecot and a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from datetime import timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from helpdesk.errors import StoreUnavailable
from helpdesk.flow import mailboxes
from helpdesk.sources.base import Sink
from helpdesk.sources.imap import PROCESSED_KEYWORD, passes
from helpdesk.store.models import MailboxState
from helpdesk.values import Incoming, IngestOutcome
from tests.conftest import Clock, Store
from tests.edges.conftest import (
    SourceFactory,
    append_all,
    connect,
    folder_count,
    mails,
    quarantined,
    running,
    stored_ids,
    wait_for,
)
from tests.leaseclock import elapse
from tests.mailfactory import make_mail
from tests.servers import missing_server
from tests.servers.dovecot import USERS, DovecotServer, available

POSTGRES_ONLY = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
# How long a test waits for something that normally takes well under a second:
# generous, so that a busy 2-core CI machine does not fail the run. A test that
# waits on the safety-net poll instead sets poll_interval far above it.
SLOW_CI = 15.0


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def state(store: Store, name: str = "support") -> MailboxState:
    with store.sessions() as session:
        return mailboxes.get_state(session, name)


def message_ids_in(client: Any, folder: str) -> list[str]:
    client.select_folder(folder, readonly=True)
    fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    key = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"
    return [data[key].decode().split(":", 1)[1].strip().strip("<>") for data in fetched.values()]


@pytest.mark.slow
def test_backlog_of_1000_is_ingested_once_and_moved(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """A 1,000-message backlog: each message stored once, all moved to Processed, none left."""
    append_all(imap, "INBOX", mails(1000))
    source = make_source(dovecot, store, sink, batch_size=100)

    assert source.run_once() == 1000

    ids = stored_ids(store)
    assert len(ids) == 1000
    assert len(set(ids)) == 1000
    assert folder_count(imap, "INBOX") == 0
    assert folder_count(imap, "Processed") == 1000
    row = state(store)
    assert row.last_uid == 1000
    assert row.counters == {"fetched": 1000, "ingested": 1000}
    assert source.run_once() == 0


def test_new_mail_arrives_through_idle(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """A message appended by another client is ingested via IDLE, long before the next poll."""
    source = make_source(dovecot, store, sink, poll_interval=120.0)
    with running(source):
        assert wait_for(lambda: source.stats.last_poll_at is not None, timeout=SLOW_CI)
        time.sleep(0.2)  # let it enter IDLE
        started = time.monotonic()
        imap.append("INBOX", make_mail())
        # Dovecot delays IDLE notifications by a fixed ~0.5 s.
        assert wait_for(lambda: len(stored_ids(store)) == 1, timeout=SLOW_CI)
        assert time.monotonic() - started < SLOW_CI  # the poll would take 120 s
    assert stored_ids(store) == ["req-1@mail.example.com"]
    assert folder_count(imap, "Processed") == 1


def test_stop_is_noticed_within_a_second_while_idling(
    dovecot: DovecotServer, store: Store, sink: Sink, make_source: SourceFactory
) -> None:
    """run() in IDLE ends about a second after stop is set, logged out and the lease released.

    IDLE looks at `stop` every second; the bound leaves room for LOGOUT, the
    lease release and a busy machine, far below the 600 s IDLE timeout.
    """
    source = make_source(dovecot, store, sink, poll_interval=120.0)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,))
    thread.start()
    assert wait_for(lambda: source.stats.last_poll_at is not None, timeout=SLOW_CI)
    time.sleep(0.3)
    started = time.monotonic()
    stop.set()
    thread.join(SLOW_CI)
    assert not thread.is_alive()
    assert time.monotonic() - started < 3.0
    assert state(store).lease_holder is None


def test_server_restart_while_idling_is_survived(
    dovecot: DovecotServer, store: Store, sink: Sink, make_source: SourceFactory
) -> None:
    """Dovecot restarts under an idling source: one imap.connection_lost, then mail flows again."""
    source = make_source(dovecot, store, sink, poll_interval=120.0)
    with capture_logs() as logs, running(source):
        assert wait_for(lambda: source.stats.last_poll_at is not None, timeout=SLOW_CI)
        time.sleep(0.3)
        dovecot.restart()  # SIGTERM: Dovecot says BYE to the idling client
        client = connect(dovecot, folder=None)
        client.append("INBOX", make_mail())
        # Usually the source is back and idling before this append. When it
        # lands during its first pass after the reconnect, the pass's own
        # commands or IDLE's start report it; it must not wait for the 120 s poll.
        assert wait_for(lambda: len(stored_ids(store)) == 1, timeout=SLOW_CI)
        client.logout()
    assert len(events(logs, "imap.connection_lost")) == 1
    assert len(events(logs, "imap.recovered")) == 1


def test_mail_arriving_while_a_batch_is_acknowledged_is_not_left_for_the_poll(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """New mail reported in the answer to the UID MOVE starts another pass, not IDLE."""
    late = mails(2)[1]

    def appending(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        outcomes = sink(batch)
        if any(item.origin.uid == 1 for item in batch):
            imap.append("INBOX", late)  # before the MOVE: its answer has "* 2 EXISTS"
        return outcomes

    imap.append("INBOX", mails(1)[0])
    source = make_source(dovecot, store, appending, poll_interval=120.0)
    with running(source):
        assert wait_for(lambda: len(stored_ids(store)) == 2, timeout=SLOW_CI)
    assert source.stats.fetched == 2


def test_mail_arriving_just_before_idle_is_not_left_for_the_poll(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mail reported right behind IDLE's "+ idling" (read into imaplib's buffer) is seen."""
    source = make_source(dovecot, store, sink, poll_interval=120.0)
    opened = source._open
    appended: list[bool] = []

    def opening() -> Any:
        client = opened()
        idle = client.idle

        def appending_idle() -> Any:
            if not appended:  # after the first pass, before its IDLE
                imap.append("INBOX", make_mail())
                appended.append(True)
            return idle()

        client.idle = appending_idle
        return client

    monkeypatch.setattr(source, "_open", opening)
    with running(source):
        assert wait_for(lambda: len(stored_ids(store)) == 1, timeout=SLOW_CI)
    assert appended == [True]


def test_without_idle_the_folder_is_polled(
    store: Store, sink: Sink, make_source: SourceFactory
) -> None:
    """A server without IDLE (RFC 2177) is polled every poll_interval."""
    if not available():
        missing_server("dovecot not found (apt-get install dovecot-imapd)")
    server = DovecotServer(USERS, extra_conf="imap_capability = IMAP4rev1 LITERAL+ UIDPLUS MOVE\n")
    try:
        server.start()
        source = make_source(server, store, sink, poll_interval=0.2)
        with running(source):
            assert wait_for(lambda: source.stats.last_poll_at is not None, timeout=SLOW_CI)
            client = connect(server, folder=None)
            assert b"IDLE" not in client.capabilities()
            client.append("INBOX", make_mail())
            assert wait_for(lambda: len(stored_ids(store)) == 1, timeout=SLOW_CI)
            client.logout()
    finally:
        server.stop()
        server.cleanup()


def test_flag_mode_leaves_mail_in_place_and_never_reingests(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """after="flag": messages stay in INBOX with \\Seen and our keyword; later passes skip them."""
    append_all(imap, "INBOX", mails(5))
    source = make_source(dovecot, store, sink, after="flag")

    assert source.run_once() == 5

    assert folder_count(imap, "INBOX") == 5
    assert not imap.folder_exists("Processed")
    imap.select_folder("INBOX")
    flags = imap.get_flags(imap.search("ALL"))
    assert all({b"\\Seen", PROCESSED_KEYWORD} <= set(f) for f in flags.values())
    assert source.run_once() == 0
    # Even with the progress lost, the keyword keeps them from being fetched again.
    with store.sessions.begin() as session:
        mailboxes.get_state(session, "support").last_uid = 0
    assert source.run_once() == 0
    assert source.stats.fetched == 5
    assert len(stored_ids(store)) == 5


def test_fetch_does_not_mark_mail_read(
    dovecot: DovecotServer, imap: Any, store: Store,
    make_source: SourceFactory,
) -> None:
    """BODY.PEEK: a message the store refused is still unread on the server."""

    def refusing(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        raise StoreUnavailable("database is locked")

    imap.append("INBOX", make_mail())
    source = make_source(dovecot, store, refusing)
    with pytest.raises(StoreUnavailable):
        source.run_once()
    imap.select_folder("INBOX")
    assert imap.search(["SEEN"]) == []
    assert folder_count(imap, "INBOX") == 1


@pytest.mark.slow
def test_server_killed_mid_fetch_loses_and_doubles_nothing(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """Dovecot is killed and restarted while run() works through a backlog: all stored once."""
    backlog = mails(400)
    append_all(imap, "INBOX", backlog)
    source = make_source(dovecot, store, sink, batch_size=20)

    with capture_logs() as logs, running(source):
        assert wait_for(lambda: len(stored_ids(store)) >= 80, timeout=20)
        dovecot.kill()  # SIGKILL: no BYE, no clean shutdown
        time.sleep(0.3)
        dovecot.restart()
        client = connect(dovecot, folder=None)
        assert wait_for(lambda: folder_count(client, "INBOX") == 0, timeout=30)
        assert wait_for(lambda: len(stored_ids(store)) == 400, timeout=SLOW_CI)

    ids = stored_ids(store)
    assert sorted(ids) == sorted(f"m-{i}@mail.example.com" for i in range(400))
    assert set(message_ids_in(client, "Processed")) == set(ids)
    client.logout()
    assert len(events(logs, "imap.connection_lost")) == 1
    assert len(events(logs, "imap.recovered")) == 1


def test_uidvalidity_change_rescans_without_double_ingest(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """The folder is recreated with the same mail: all of it is re-read, none stored twice."""
    imap.create_folder("Support")
    append_all(imap, "Support", mails(5))
    source = make_source(dovecot, store, sink, folder="Support")
    assert source.run_once() == 5
    before = state(store).uidvalidity

    source._disconnect()  # as after a restart: the old session saw the folder go
    imap.delete_folder("Support")
    imap.create_folder("Support")
    append_all(imap, "Support", mails(5))
    after = int(imap.folder_status("Support", ["UIDVALIDITY"])[b"UIDVALIDITY"])
    assert after != before

    with capture_logs() as logs:
        assert source.run_once() == 5

    (changed,) = events(logs, "imap.uidvalidity_changed")
    assert (changed["uidvalidity"], changed["previous_uidvalidity"]) == (after, before)
    assert len(stored_ids(store)) == 5
    assert state(store).counters == {"fetched": 10, "ingested": 5, "duplicates": 5}
    assert (state(store).uidvalidity, state(store).last_uid) == (after, 5)
    assert folder_count(imap, "Support") == 0
    assert folder_count(imap, "Processed") == 10


def test_poison_message_goes_to_failed_folder(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """Mail ingest quarantines is moved to the failed folder; the mail after it goes on."""
    good = mails(2)
    append_all(imap, "INBOX", [good[0], b"Subject: who sent this?\r\n\r\nno sender\r\n", good[1]])
    source = make_source(dovecot, store, sink)

    assert source.run_once() == 3

    assert folder_count(imap, "Failed") == 1
    assert folder_count(imap, "Processed") == 2
    assert folder_count(imap, "INBOX") == 0
    assert quarantined(store) == 1
    assert len(stored_ids(store)) == 2
    assert state(store).counters == {"fetched": 3, "ingested": 2, "quarantined": 1}


def test_a_failing_sink_acknowledges_nothing_of_the_batch_and_is_retried(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """A sink that raises (not the mail's fault: ingest quarantines that) leaves the whole
    batch on the server; the next pass takes all of it."""
    failures: list[int] = []

    def buggy(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        if not failures:
            failures.append(len(batch))
            raise RuntimeError("a bug")
        return sink(batch)

    append_all(imap, "INBOX", mails(4))
    source = make_source(dovecot, store, buggy)
    with pytest.raises(RuntimeError):
        source.run_once()
    assert failures == [4]
    assert folder_count(imap, "INBOX") == 4
    assert state(store).last_uid == 0
    assert stored_ids(store) == []

    assert source.run_once() == 4
    assert folder_count(imap, "INBOX") == 0
    assert len(stored_ids(store)) == 4
    assert state(store).last_uid == 4


def test_next_batch_is_fetched_while_one_commits_and_acks_wait_for_commits(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pipelined passes: batch 2 is fetched while batch 1 commits; yet every batch is
    moved only after its own commit, in order, and a failing commit leaves its batch and
    the later ones on the server."""
    fetched: list[list[int]] = []
    second_fetched = threading.Event()
    real_fetch = passes.fetch_bodies

    def recording_fetch(link: Any, uids: list[int]) -> Any:
        result = real_fetch(link, uids)
        fetched.append(list(uids))
        if len(fetched) == 2:
            second_fetched.set()
        return result

    monkeypatch.setattr(passes, "fetch_bodies", recording_fetch)
    processed_at_commit: list[int] = []
    overlapped: list[bool] = []

    def watching(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        processed_at_commit.append(folder_count(imap, "Processed"))
        if len(processed_at_commit) == 1:
            overlapped.append(second_fetched.wait(SLOW_CI))
        if len(processed_at_commit) == 3:
            raise RuntimeError("a bug")
        return sink(batch)

    append_all(imap, "INBOX", mails(8))
    source = make_source(dovecot, store, watching, batch_size=2)
    with pytest.raises(RuntimeError):
        source.run_once()
    assert overlapped == [True]  # batch 2 came from the server during batch 1's commit
    # Each commit saw none of its own batch moved, and every earlier batch moved.
    assert processed_at_commit == [0, 2, 4]
    assert folder_count(imap, "Processed") == 4
    assert folder_count(imap, "INBOX") == 4
    assert state(store).last_uid == 4
    assert len(stored_ids(store)) == 4


def test_with_a_stage_the_next_batch_is_prepared_while_one_commits(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink, make_source: SourceFactory,
) -> None:
    """Given a stage (the daemon's intake: prepare now, commit later), batch 2 is fetched
    and prepared while batch 1 commits; batches still commit in UID order, each is moved
    only after its own commit, and a commit that fails leaves its batch and the later ones
    on the server."""
    prepared: list[list[int | None]] = []
    second_prepared = threading.Event()
    processed_at_commit: list[int] = []
    overlapped: list[bool] = []

    def stage(batch: Sequence[Incoming]) -> Callable[[], list[IngestOutcome]]:
        prepared.append([item.origin.uid for item in batch])
        if len(prepared) == 2:
            second_prepared.set()

        def commit() -> list[IngestOutcome]:
            processed_at_commit.append(folder_count(imap, "Processed"))
            if len(processed_at_commit) == 1:
                overlapped.append(second_prepared.wait(SLOW_CI))
            if len(processed_at_commit) == 3:
                raise StoreUnavailable("the store went away")
            return sink(batch)

        return commit

    append_all(imap, "INBOX", mails(8))
    source = make_source(dovecot, store, sink, batch_size=2, stage=stage)
    with pytest.raises(StoreUnavailable):
        source.run_once()
    assert overlapped == [True]  # batch 2 was prepared during batch 1's commit
    assert prepared == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert processed_at_commit == [0, 2, 4]
    assert folder_count(imap, "Processed") == 4
    assert folder_count(imap, "INBOX") == 4
    assert state(store).last_uid == 4
    assert len(stored_ids(store)) == 4

    assert source.run_once() == 4  # the store is back: the rest, once
    assert folder_count(imap, "INBOX") == 0
    assert len(stored_ids(store)) == 8


def test_login_refused_is_logged_once_and_retried(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """A wrong password: one imap.login_failed, retries with backoff, recovery once it is fixed."""
    imap.append("INBOX", make_mail())
    source = make_source(dovecot, store, sink, password="the-new-password")
    with capture_logs() as logs, running(source):
        assert wait_for(lambda: source.backoff.attempts >= 3, timeout=SLOW_CI)
        dovecot.users["support@example.test"] = "the-new-password"
        dovecot.write_users()  # the admin fixes the account; Dovecot re-reads the file
        assert wait_for(lambda: len(stored_ids(store)) == 1, timeout=SLOW_CI)

    (failed,) = events(logs, "imap.login_failed")
    assert "AUTHENTICATIONFAILED" in failed["reason"]
    assert len(events(logs, "imap.recovered")) == 1


def test_store_unavailable_leaves_mail_untouched_until_it_is_back(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """While the store is down nothing is acknowledged; afterwards every message is ingested."""
    down = threading.Event()
    down.set()

    def flaky(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        if down.is_set():
            raise StoreUnavailable("database is locked")
        return sink(batch)

    append_all(imap, "INBOX", mails(3))
    source = make_source(dovecot, store, flaky)
    with capture_logs() as logs, running(source):
        assert wait_for(lambda: source.backoff.attempts >= 3, timeout=SLOW_CI)
        assert folder_count(imap, "INBOX") == 3
        imap.select_folder("INBOX")
        assert imap.search(["OR", "SEEN", "KEYWORD", PROCESSED_KEYWORD]) == []
        assert stored_ids(store) == []
        imap.unselect_folder()
        down.clear()
        assert wait_for(lambda: len(stored_ids(store)) == 3, timeout=SLOW_CI)
        assert wait_for(lambda: folder_count(imap, "INBOX") == 0, timeout=SLOW_CI)

    assert len(events(logs, "store.unavailable")) == 1
    (recovered,) = events(logs, "imap.recovered")
    assert recovered["after"] == "store.unavailable"


def test_missing_folder_is_logged_once_and_waited_for(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """A folder that does not exist yet: one imap.folder_missing, then it works once created."""
    source = make_source(dovecot, store, sink, folder="Helpdesk/Incoming")
    with capture_logs() as logs, running(source):
        assert wait_for(lambda: source.backoff.attempts >= 3, timeout=SLOW_CI)
        imap.create_folder("Helpdesk/Incoming")
        imap.append("Helpdesk/Incoming", make_mail())
        assert wait_for(lambda: len(stored_ids(store)) == 1, timeout=SLOW_CI)

    (missing,) = events(logs, "imap.folder_missing")
    assert "Helpdesk/Incoming" in missing["reason"]
    assert len(events(logs, "imap.recovered")) == 1


def test_stop_finishes_the_message_in_hand(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """Stop set while a batch is being ingested: it is still acknowledged, then run() ends."""
    stop = threading.Event()

    def stopping(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        outcomes = sink(batch)
        stop.set()  # SIGTERM arrives between the commit and the acknowledgement
        return outcomes

    append_all(imap, "INBOX", mails(5))
    source = make_source(dovecot, store, stopping, batch_size=2)
    source.run(stop)

    assert len(stored_ids(store)) == 2
    assert folder_count(imap, "Processed") == 2
    assert folder_count(imap, "INBOX") == 3
    row = state(store)
    assert (row.last_uid, row.lease_holder) == (2, None)  # progress kept, lease released


@pytest.mark.parametrize("capability", ["UIDPLUS", ""], ids=["uidplus", "plain-expunge"])
def test_without_move_copies_then_expunges(
    capability: str, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """Servers without MOVE (RFC 6851): COPY, \\Deleted, then UID EXPUNGE or EXPUNGE."""
    if not available():
        missing_server("dovecot not found (apt-get install dovecot-imapd)")
    server = DovecotServer(
        USERS, extra_conf=f"imap_capability = IMAP4rev1 LITERAL+ IDLE {capability}\n"
    )
    try:
        server.start()
        client = connect(server, folder=None)
        assert b"MOVE" not in client.capabilities()
        append_all(client, "INBOX", mails(3))
        source = make_source(server, store, sink)
        assert source.run_once() == 3
        assert folder_count(client, "INBOX") == 0
        assert folder_count(client, "Processed") == 3
        client.logout()
    finally:
        server.stop()
        server.cleanup()


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
def test_tls_with_a_private_ca(
    mode: str, store: Store, sink: Sink, make_source: SourceFactory
) -> None:
    """Implicit TLS and STARTTLS work with ca_file; without it the certificate is refused."""
    if not available():
        missing_server("dovecot not found (apt-get install dovecot-imapd)")
    server = DovecotServer(USERS, tls=True)
    try:
        server.start()
        port = server.imaps_port if mode == "ssl" else server.port
        client = connect(server)
        client.append("INBOX", make_mail())
        client.logout()

        untrusted = make_source(server, store, sink, tls=mode, port=port)
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusted.run_once()

        source = make_source(server, store, sink, tls=mode, port=port, ca_file=server.cert)
        assert source.run_once() == 1
    finally:
        server.stop()
        server.cleanup()


def test_check_reports_server_and_progress(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """check(): capabilities, every folder's counts and UIDVALIDITY, and how far ingestion got."""
    append_all(imap, "INBOX", mails(3))
    source = make_source(dovecot, store, sink)
    source.run_once()
    source._disconnect(polite=True)

    report = source.check()

    assert {"IDLE", "MOVE", "UIDPLUS"} <= set(report["capabilities"])
    folders = {f["name"]: f for f in report["folders"]}
    assert folders["INBOX"]["messages"] == 0
    assert folders["Processed"]["messages"] == 3
    assert report["folder_exists"] is True
    assert report["uidvalidity_matches"] is True
    assert report["state"]["last_uid"] == 3
    assert report["state"]["counters"] == {"fetched": 3, "ingested": 3}
    assert report["state"]["lease_holder"] == "test-daemon"


@POSTGRES_ONLY
def test_two_daemons_one_lease_holder_at_a_time(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink,
    make_source: SourceFactory,
) -> None:
    """Two sources on one mailbox: only the lease holder works; the other takes over after it."""
    append_all(imap, "INBOX", mails(200))
    # Renewed a third into the lease, at the latest a second later (IDLE's
    # check): 4.5 s leave a busy machine 2.5 s before the lease would lapse.
    ttl = timedelta(seconds=4.5)
    first = make_source(dovecot, store, sink, holder="daemon-a", lease_ttl=ttl)
    second = make_source(dovecot, store, sink, holder="daemon-b", lease_ttl=ttl)

    with running(first) as stop_first:
        assert wait_for(lambda: first.stats.fetched > 0, timeout=SLOW_CI)
        with running(second):
            assert wait_for(lambda: folder_count(imap, "INBOX") == 0, timeout=20)
            time.sleep(1.6)  # a standby round (every lease_ttl / 3) for the second daemon
            assert (first.stats.fetched, second.stats.fetched) == (200, 0)
            assert state(store).lease_holder == "daemon-a"
            # The first daemon stops and releases its lease; the second takes over.
            stop_first.set()
            assert wait_for(lambda: state(store).lease_holder == "daemon-b", timeout=SLOW_CI)
            append_all(imap, "INBOX", mails(20, prefix="late"))
            assert wait_for(lambda: second.stats.fetched == 20, timeout=SLOW_CI)

    ids = stored_ids(store)
    assert len(ids) == len(set(ids)) == 220
    assert first.stats.fetched == 200


@POSTGRES_ONLY
def test_a_dead_holders_lease_is_taken_over_after_expiry(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink, clock: Clock,
    make_source: SourceFactory,
) -> None:
    """A daemon that dies holding the lease blocks the mailbox only until the lease expires."""
    ttl = timedelta(seconds=60)
    dead = make_source(dovecot, store, sink, holder="daemon-a", lease_ttl=ttl, clock=clock)
    alive = make_source(dovecot, store, sink, holder="daemon-b", lease_ttl=ttl, clock=clock)
    append_all(imap, "INBOX", mails(3))
    assert dead.run_once() == 3
    dead._disconnect()  # it dies: no logout, no release

    append_all(imap, "INBOX", mails(2, prefix="later"))
    assert alive.run_once() == 0
    elapse(store, clock, 59)  # leases run on the database's clock on PostgreSQL
    assert alive.run_once() == 0
    elapse(store, clock, 2)
    assert alive.run_once() == 2
    assert state(store).lease_holder == "daemon-b"
    assert dead.run_once() == 0  # had it only been paused, it now stands by
    assert len(stored_ids(store)) == 5
