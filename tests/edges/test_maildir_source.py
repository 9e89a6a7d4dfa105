"""The Maildir source on a real directory and a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from helpdesk.errors import StoreUnavailable
from helpdesk.sources.base import Backoff, Sink
from helpdesk.sources.maildir import MaildirSource
from helpdesk.values import Incoming, IngestOutcome, Origin
from tests.conftest import Store
from tests.edges.conftest import mails, running, stored_ids, wait_for


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    for sub in ("new", "cur", "tmp"):
        (tmp_path / "Maildir" / sub).mkdir(parents=True)
    return tmp_path / "Maildir"


def deliver(maildir: Path, raw: bytes, name: str) -> Path:
    """Deliver as an MDA does: write in tmp/, then rename into new/."""
    (maildir / "tmp" / name).write_bytes(raw)
    os.rename(maildir / "tmp" / name, maildir / "new" / name)
    return maildir / "new" / name


def test_new_mail_is_ingested_then_moved_to_cur_as_seen(
    maildir: Path, store: Store, sink: Sink
) -> None:
    """Each file in new/ is stored, then renamed into cur/ with the :2,S info."""
    for i, raw in enumerate(mails(3)):
        deliver(maildir, raw, f"1700000000.M{i}P1.host")
    source = MaildirSource(maildir, sink, name="local")

    assert source.run_once() == 3

    assert os.listdir(maildir / "new") == []
    assert sorted(os.listdir(maildir / "cur")) == [
        f"1700000000.M{i}P1.host:2,S" for i in range(3)
    ]
    assert sorted(stored_ids(store)) == [f"m-{i}@mail.example.com" for i in range(3)]
    assert source.run_once() == 0


def test_existing_flags_are_kept(maildir: Path, store: Store, sink: Sink) -> None:
    """A file already carrying Maildir flags keeps them, with S added in order."""
    deliver(maildir, mails(1)[0], "1700000000.M1P1.host:2,F")
    MaildirSource(maildir, sink, name="local").run_once()
    assert os.listdir(maildir / "cur") == ["1700000000.M1P1.host:2,FS"]


def test_origin_names_the_file(maildir: Path, sink: Sink) -> None:
    """The sink sees source "maildir", the configured name and the file name."""
    seen: list[Origin] = []

    def recording(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        seen.extend(item.origin for item in batch)
        return sink(batch)

    deliver(maildir, mails(1)[0], "1700000000.M1P1.host")
    MaildirSource(maildir, recording, name="local").run_once()
    assert seen == [Origin(source="maildir", mailbox="local", path="1700000000.M1P1.host")]


def test_store_unavailable_leaves_files_in_new(
    maildir: Path, store: Store, sink: Sink
) -> None:
    """Nothing moves to cur/ when the store is down; the next pass ingests it."""

    def down(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        raise StoreUnavailable("database is locked")

    deliver(maildir, mails(1)[0], "1700000000.M1P1.host")
    with pytest.raises(StoreUnavailable):
        MaildirSource(maildir, down, name="local").run_once()
    assert os.listdir(maildir / "new") == ["1700000000.M1P1.host"]
    assert stored_ids(store) == []

    assert MaildirSource(maildir, sink, name="local").run_once() == 1
    assert os.listdir(maildir / "new") == []


def test_with_a_stage_the_next_batch_is_prepared_while_one_commits(
    maildir: Path, store: Store, sink: Sink
) -> None:
    """Given a stage (the daemon's intake: prepare now, commit later), batch 2 is read and
    prepared while batch 1 commits; batches commit in name order, each batch's files move
    to cur/ only after its own commit, and a commit that fails leaves its batch and the later
    ones in new/."""
    prepared: list[list[str]] = []
    second_prepared = threading.Event()
    in_cur_at_commit: list[int] = []
    overlapped: list[bool] = []

    def stage(batch: Sequence[Incoming]) -> Callable[[], list[IngestOutcome]]:
        prepared.append([str(item.origin.path) for item in batch])
        if len(prepared) == 2:
            second_prepared.set()

        def commit() -> list[IngestOutcome]:
            in_cur_at_commit.append(len(os.listdir(maildir / "cur")))
            if len(in_cur_at_commit) == 1:
                overlapped.append(second_prepared.wait(30))
            if len(in_cur_at_commit) == 3:
                raise StoreUnavailable("the store went away")
            return sink(batch)

        return commit

    names = [f"17000000{i:02d}.M{i}P1.host" for i in range(8)]
    for name, raw in zip(names, mails(8), strict=True):
        deliver(maildir, raw, name)
    source = MaildirSource(maildir, sink, name="local", batch_max=2, stage=stage)
    with pytest.raises(StoreUnavailable):
        source.run_once()
    assert overlapped == [True]  # batch 2 was prepared during batch 1's commit
    assert prepared == [names[0:2], names[2:4], names[4:6], names[6:8]]
    assert in_cur_at_commit == [0, 2, 4]
    assert sorted(os.listdir(maildir / "new")) == names[4:]
    assert len(stored_ids(store)) == 4

    assert source.run_once() == 4  # the store is back: the rest, once
    assert os.listdir(maildir / "new") == []
    assert len(stored_ids(store)) == 8


def test_vanished_file_is_skipped(maildir: Path, store: Store, sink: Sink) -> None:
    """A file another reader took away between listing and reading is skipped quietly."""
    first = deliver(maildir, mails(2)[0], "1700000000.M1P1.host")
    second = deliver(maildir, mails(2)[1], "1700000000.M2P1.host")

    def racing(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        if second.exists():
            second.unlink()  # another MUA moved it meanwhile
        return sink(batch)

    source = MaildirSource(maildir, racing, name="local", batch_max=1)
    with capture_logs() as logs:
        assert source.run_once() == 1
    assert not first.exists()
    assert stored_ids(store) == ["m-0@mail.example.com"]
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []


def test_file_taken_after_it_was_stored_is_not_counted_twice(
    maildir: Path, store: Store, sink: Sink
) -> None:
    """Stored, then moved away by another reader before our rename: stored once, not moved."""
    deliver(maildir, mails(2)[0], "1700000000.M1P1.host")
    second = deliver(maildir, mails(2)[1], "1700000000.M2P1.host")

    def racing(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        outcomes = sink(batch)
        second.unlink()
        return outcomes

    assert MaildirSource(maildir, racing, name="local").run_once() == 1
    assert sorted(stored_ids(store)) == ["m-0@mail.example.com", "m-1@mail.example.com"]


def test_a_failing_sink_leaves_the_batch_in_new_and_is_retried(
    maildir: Path, store: Store, sink: Sink
) -> None:
    """A sink that raises acknowledges nothing; run() logs it once and tries again."""
    failures: list[int] = []

    def buggy(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        if not failures:
            failures.append(len(batch))
            raise RuntimeError("a bug")
        return sink(batch)

    deliver(maildir, mails(2)[0], "1700000000.M1P1.host")
    deliver(maildir, mails(2)[1], "1700000000.M2P1.host")
    source = MaildirSource(maildir, buggy, name="local", backoff=Backoff(base=0.02, cap=0.05))
    with capture_logs() as logs, running(source, poll_interval=0.05):
        assert wait_for(lambda: len(stored_ids(store)) == 2)
    assert failures == [2]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "maildir.unexpected_error"]
    assert os.listdir(maildir / "new") == []


def test_run_polls_until_stopped(maildir: Path, store: Store, sink: Sink) -> None:
    """run() picks up mail delivered while it runs, and survives a store outage."""
    broken = [True]

    def flaky(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        if broken[0]:
            raise StoreUnavailable("database is locked")
        return sink(batch)

    source = MaildirSource(maildir, flaky, name="local", backoff=Backoff(base=0.02, cap=0.1))
    with capture_logs() as logs, running(source, poll_interval=0.05):
        deliver(maildir, mails(1)[0], "1700000000.M1P1.host")
        assert wait_for(lambda: source.backoff.attempts >= 3)
        broken[0] = False
        assert wait_for(lambda: len(stored_ids(store)) == 1)
        deliver(maildir, mails(2)[1], "1700000000.M2P1.host")
        assert wait_for(lambda: len(stored_ids(store)) == 2)
    assert [e["event"] for e in logs if e["event"].endswith(("unavailable", "recovered"))] == [
        "store.unavailable", "maildir.recovered"
    ]
