"""Our own store failing is never the mail's fault, and nothing is acknowledged before a commit.

Real failures, not fakes that raise before doing anything (issue 9):

* PostgreSQL: a deferred constraint trigger makes COMMIT itself fail, after
  every statement of the batch succeeded — the one moment a source could be
  tempted to acknowledge;
* SQLite: the database lives on a tiny tmpfs that is full (SQLITE_FULL).

Each source must then acknowledge nothing (Maildir file stays in new/, IMAP
message stays in INBOX unflagged, LMTP answers 451, the MTA pipe exits 75) and
take the mail once the store is back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from helpdesk.errors import StoreUnavailable
from helpdesk.flow.ingest import IngestContext
from helpdesk.sources.base import ingest_sink
from helpdesk.sources.maildir import MaildirSource
from helpdesk.store.db import make_engine, make_session_factory
from tests.conftest import Store
from tests.edges.conftest import SourceFactory, folder_count, stored_ids
from tests.mailfactory import make_mail
from tests.servers.dovecot import DovecotServer

POSTGRES = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
SQLITE = pytest.mark.parametrize("store", ["sqlite"], indirect=True)
ROOT = Path(__file__).resolve().parents[2]

_FAIL_AT_COMMIT = """
CREATE FUNCTION test_fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'injected failure at COMMIT'; END $$;
CREATE CONSTRAINT TRIGGER test_fail_at_commit AFTER INSERT ON messages
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_fail_at_commit();
"""


class CommitFailure:
    """Switches the PostgreSQL store's COMMIT failure on and off."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def on(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(_FAIL_AT_COMMIT))

    def off(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER test_fail_at_commit ON messages"))
            conn.execute(text("DROP FUNCTION test_fail_at_commit()"))


@pytest.fixture
def commit_fails(store: Store) -> CommitFailure:
    failure = CommitFailure(store.engine)
    failure.on()
    return failure


def deliver(maildir: Path, raw: bytes, name: str) -> Path:
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    path = maildir / "new" / name
    path.write_bytes(raw)
    return path


@POSTGRES
def test_maildir_acknowledges_nothing_when_the_commit_fails(
    store: Store, commit_fails: CommitFailure, tmp_path: Path
) -> None:
    """COMMIT fails after every statement succeeded: the file stays in new/, nothing is stored."""
    maildir = tmp_path / "Maildir"
    deliver(maildir, make_mail(message_id="<a@x.example>"), "1700000000.M1P1.host")
    source = MaildirSource(maildir, ingest_sink(store.sessions, IngestContext()), name="local")
    with pytest.raises(StoreUnavailable, match="injected failure at COMMIT"):
        source.run_once()
    assert os.listdir(maildir / "new") == ["1700000000.M1P1.host"]
    assert os.listdir(maildir / "cur") == []
    assert stored_ids(store) == []

    commit_fails.off()
    assert source.run_once() == 1
    assert stored_ids(store) == ["a@x.example"]


@POSTGRES
def test_imap_acknowledges_nothing_when_the_commit_fails(
    dovecot: DovecotServer, imap: Any, store: Store, commit_fails: CommitFailure,
    make_source: SourceFactory,
) -> None:
    """COMMIT fails: no MOVE, no flag, no progress; after the store is back, all of it once."""
    for i in range(3):
        imap.append("INBOX", make_mail(message_id=f"<c-{i}@x.example>"))
    sink = ingest_sink(store.sessions, IngestContext())
    source = make_source(dovecot, store, sink)
    with pytest.raises(StoreUnavailable, match="injected failure at COMMIT"):
        source.run_once()
    assert folder_count(imap, "INBOX") == 3
    imap.select_folder("INBOX")
    assert imap.search(["SEEN"]) == []
    imap.unselect_folder()
    assert stored_ids(store) == []

    commit_fails.off()
    assert source.run_once() == 3
    assert folder_count(imap, "INBOX") == 0
    assert sorted(stored_ids(store)) == ["c-0@x.example", "c-1@x.example", "c-2@x.example"]


# -- the MTA pipe: `helpdesk ingest` as Postfix runs it ------------------------------------


def pipe(config: Path, raw: bytes, *options: str) -> subprocess.CompletedProcess[bytes]:
    """`helpdesk [options] ingest --json` with `raw` on stdin, as an MTA's pipe runs it."""
    env = {k: v for k, v in os.environ.items() if k != "HELPDESK_DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "helpdesk", "--config", str(config), *options,
                           "ingest", "--json"], input=raw, capture_output=True,
                          env=env, cwd=config.parent, timeout=120, check=False)


def write_config(path: Path, url: str, extra: str = "") -> Path:
    path.write_text(f'[helpdesk]\nsupport_address = "support@example.com"\n'
                    f'[database]\nurl = "{url}"\n{extra}')
    return path


@POSTGRES
def test_pipe_exits_75_and_logs_nothing_when_the_commit_fails(
    store: Store, commit_fails: CommitFailure, tmp_path: Path
) -> None:
    """The MTA keeps the mail (exit 75) and our log never claims it was ingested."""
    config = write_config(tmp_path / "helpdesk.toml", store.url)
    raw = make_mail(message_id="<pipe@x.example>")
    failed = pipe(config, raw, "-v")
    assert failed.returncode == 75, failed.stderr.decode()
    assert b"injected failure at COMMIT" in failed.stderr
    assert b"message.ingested" not in failed.stdout + failed.stderr
    assert stored_ids(store) == []

    commit_fails.off()
    done = pipe(config, raw, "-v")
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["new_tickets"] == 1
    assert b"message.ingested" in done.stdout + done.stderr  # logged, once committed
    assert stored_ids(store) == ["pipe@x.example"]


@pytest.fixture
def full_disk(tmp_path: Path, sqlite_template: Path) -> Iterator[Path]:
    """A migrated SQLite store alone on a tiny tmpfs; the returned filler file fills it up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    size = sqlite_template.stat().st_size + 2 * 1024 * 1024
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                   check=True)
    try:
        shutil.copy(sqlite_template, mount / "helpdesk.db")
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> Path:
    filler = mount / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def test_pipe_exits_75_when_the_disk_is_full(full_disk: Path, tmp_path: Path) -> None:
    """SQLite on a full disk (SQLITE_FULL) is our failure: exit 75, the MTA retries."""
    url = f"sqlite:///{full_disk / 'helpdesk.db'}"
    config = write_config(tmp_path / "helpdesk.toml", url)
    raw = make_mail(message_id="<full@x.example>",
                    body="A request with a long body.\n" * 2000)
    filler = fill(full_disk)
    failed = pipe(config, raw)
    assert failed.returncode == 75, failed.stderr.decode()
    assert b"store unavailable" in failed.stderr

    filler.unlink()
    done = pipe(config, raw)
    assert done.returncode == 0, done.stderr.decode()
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        count = session.execute(text("SELECT count(*) FROM messages")).scalar_one()
    engine.dispose()
    assert count == 1


@SQLITE
def test_pipe_refuses_an_oversized_mail_with_exit_1(store: Store, tmp_path: Path) -> None:
    """Over [intake] max_message_bytes: exit 1 with the reason, so the MTA bounces it."""
    config = write_config(tmp_path / "helpdesk.toml", store.url,
                          "[intake]\nmax_message_bytes = 5000\n")
    raw = make_mail(body="y" * 20_000)
    result = pipe(config, raw)
    assert result.returncode == 1
    assert b"too large" in result.stderr
    assert b"the limit is 5000 bytes" in result.stderr
    assert stored_ids(store) == []


def test_pipe_exits_75_on_a_schema_that_needs_an_upgrade(tmp_path: Path) -> None:
    """A database without the schema is ours to fix: exit 75, not a bounce."""
    config = write_config(tmp_path / "helpdesk.toml", f"sqlite:///{tmp_path / 'empty.db'}")
    result = pipe(config, make_mail())
    assert result.returncode == 75
    assert b"helpdesk db upgrade" in result.stderr
