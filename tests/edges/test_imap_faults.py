"""One bad message never stops an IMAP mailbox (issue 9 §1, §3), against a real Dovecot."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from helpdesk.flow.mailboxes import LeaseLost
from helpdesk.sources.base import Sink
from helpdesk.sources.imap import FAILED_KEYWORD
from helpdesk.sources.imap.fetching import plan_batches
from helpdesk.store.models import ImapFetchFailure, MailboxState, QuarantineItem
from helpdesk.values import Incoming, IngestOutcome
from tests.conftest import Store
from tests.edges.conftest import (
    SourceFactory,
    append_all,
    folder_count,
    mails,
    quarantined,
    stored_ids,
)
from tests.edges.test_imap_source import state
from tests.mailfactory import make_mail
from tests.servers.dovecot import DovecotServer


def message_file(server: DovecotServer, uid: int) -> Path:
    """The Maildir file Dovecot keeps the test user's INBOX message `uid` in."""
    maildir = Path(server.dir) / "mail" / "example.test" / "support" / "Maildir"
    # dovecot-uidlist: a header line, then "<uid> [<extensions>] :<base file name>".
    for line in (maildir / "dovecot-uidlist").read_text().splitlines()[1:]:
        number, _, rest = line.partition(" ")
        if int(number) == uid:
            base = rest.rpartition(":")[2]
            (path,) = [Path(p) for p in glob.glob(f"{maildir}/*/{base}*")]
            return path
    raise AssertionError(f"no file for UID {uid}")


def quarantine_items(store: Store) -> list[QuarantineItem]:
    with store.sessions() as session:
        return list(session.scalars(select(QuarantineItem).order_by(QuarantineItem.id)))


def fetch_failures(store: Store) -> list[tuple[int, int]]:
    with store.sessions() as session:
        rows = session.scalars(select(ImapFetchFailure).order_by(ImapFetchFailure.uid))
        return [(row.uid, row.attempts) for row in rows]


def test_a_message_the_server_cannot_return_is_retried_then_quarantined(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink, make_source: SourceFactory,
) -> None:
    """An unreadable message file (Dovecot ends the session over it) among five: the other four
    are stored and moved at once; the bad one is retried on later passes, counted in the
    store, then quarantined without bytes and moved to the failed folder."""
    append_all(imap, "INBOX", mails(5))
    imap.noop()
    # Mail is read as the dovecot user: this makes every FETCH of UID 3 fail.
    os.chmod(message_file(dovecot, 3), 0)

    source = make_source(dovecot, store, sink, fetch_attempts=3)
    assert source.run_once() == 4
    assert len(stored_ids(store)) == 4
    assert folder_count(imap, "Processed") == 4
    assert folder_count(imap, "INBOX") == 1
    assert fetch_failures(store) == [(3, 1)]
    assert state(store).last_uid == 2  # held back before the message left for later

    # A restart in between: the count lives in the store, not in the source.
    source = make_source(dovecot, store, sink, fetch_attempts=3)
    assert source.run_once() == 0
    assert fetch_failures(store) == [(3, 2)]
    assert quarantined(store) == 0

    assert source.run_once() == 1
    (item,) = quarantine_items(store)
    assert "could not return it (3 attempts)" in item.error
    assert "no raw bytes are available" in item.error
    assert item.raw == b""
    assert (item.origin_mailbox, item.origin_uid) == ("support", 3)
    assert folder_count(imap, "INBOX") == 0
    assert folder_count(imap, "Failed") == 1
    assert fetch_failures(store) == []
    assert state(store).last_uid == 5
    assert source.run_once() == 0
    assert len(stored_ids(store)) == 4


def test_a_message_over_the_size_limit_is_quarantined_with_its_header(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink, make_source: SourceFactory,
) -> None:
    """Over max_message_bytes: never fetched whole; quarantined as too large with its header."""
    big = make_mail(subject="Huge attachment", message_id="<big@mail.example.com>",
                    body="x" * 20_000)
    append_all(imap, "INBOX", [mails(2)[0], big, mails(2)[1]])
    source = make_source(dovecot, store, sink, max_message_bytes=10_000)
    assert source.run_once() == 3
    (item,) = quarantine_items(store)
    size = len(big.replace(b"\n", b"\r\n"))  # as Dovecot stores and counts it
    assert item.error.startswith(f"too large ({size} bytes; the limit is 10000 bytes")
    assert item.raw.startswith(b"From: ")
    assert item.raw.endswith(b"\r\n\r\n")
    assert b"xxxx" not in item.raw
    assert item.subject == "Huge attachment"
    assert sorted(stored_ids(store)) == ["m-0@mail.example.com", "m-1@mail.example.com"]
    assert folder_count(imap, "Failed") == 1
    assert folder_count(imap, "Processed") == 2


def test_a_refused_move_to_the_failed_folder_falls_back_to_flagging(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink, make_source: SourceFactory,
) -> None:
    """The failed folder cannot be created: the quarantined mail is flagged instead, and the
    mailbox goes on; the next pass does not read it again."""
    append_all(imap, "INBOX", [mails(2)[0], b"\x00 not a mail at all", mails(2)[1]])
    source = make_source(dovecot, store, sink, failed_folder="~Failed")  # Dovecot refuses the name
    assert source.run_once() == 3
    assert quarantined(store) == 1
    assert len(stored_ids(store)) == 2
    imap.select_folder("INBOX")
    (left,) = imap.search("ALL")
    assert {b"\\Seen", FAILED_KEYWORD} <= set(imap.get_flags([left])[left])
    imap.unselect_folder()
    assert state(store).last_uid == 3
    assert source.run_once() == 0
    assert quarantined(store) == 1


def test_batches_are_bounded_by_count_and_bytes() -> None:
    """Sizes cut batches so that a batch never holds more than total_bytes (but one message)."""
    sized = [(1, 10), (2, 10), (3, 50), (4, 100), (5, 5), (6, 5), (7, 5)]
    assert plan_batches(sized, count=3, total_bytes=60) == [
        [(1, 10), (2, 10)], [(3, 50)], [(4, 100)], [(5, 5), (6, 5), (7, 5)]]
    assert plan_batches(sized, count=2, total_bytes=1000) == [
        [(1, 10), (2, 10)], [(3, 50), (4, 100)], [(5, 5), (6, 5)], [(7, 5)]]
    assert plan_batches([], count=3, total_bytes=60) == []


def test_a_daemon_that_lost_its_lease_cannot_move_progress(
    dovecot: DovecotServer, imap: Any, store: Store, sink: Sink, make_source: SourceFactory,
) -> None:
    """Another daemon takes the mailbox over during a pass: the stale one's progress is
    refused (LeaseLost), so the new holder cannot be made to skip mail."""
    append_all(imap, "INBOX", mails(3))

    def stealing(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        outcomes = sink(batch)
        with store.sessions.begin() as session:
            session.execute(update(MailboxState).where(MailboxState.name == "support")
                            .values(lease_holder="other-daemon"))
        return outcomes

    source = make_source(dovecot, store, stealing)
    with pytest.raises(LeaseLost, match="held by other-daemon"):
        source.run_once()
    assert state(store).last_uid == 0
    assert state(store).lease_holder == "other-daemon"
