"""The README's backups, done while mail keeps arriving, and restored.

SQLite: the online backup API (`sqlite3 helpdesk.db ".backup ..."` uses it),
`VACUUM INTO` and the sqlite3 shell's `.backup`; PostgreSQL: `pg_dump -Fc` and
`pg_restore`. Each backup is taken while another thread ingests mail; the
restored copy must open at the current schema, pass the integrity checks, and
hold every mail committed before the backup began.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select, text

from helpdesk.desk import tickets
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.store.db import check_schema, make_engine, make_session_factory, upgrade
from helpdesk.store.models import Message
from helpdesk.values import Origin, OutcomeKind
from tests.conftest import Store
from tests.mailfactory import make_mail
from tests.servers.postgres import PgServer


class Ingesting:
    """A thread that ingests one mail after another until stopped, counting what committed."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = make_session_factory(self.engine)
        self.committed: list[str] = []
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                message_id = f"m{n}@backup.example.com"
                raw = make_mail(subject=f"Printer {n} jammed", message_id=f"<{message_id}>",
                                body=f"Paper jam number {n} in tray wombat{n}.\n")
                with self.sessions.begin() as session:
                    outcome = ingest(session, raw, Origin("file"), IngestContext())
                assert outcome.kind is OutcomeKind.NEW_TICKET
                self.committed.append(message_id)
        except BaseException as exc:  # reported by wait_for and __exit__
            self.failure = exc

    def wait_for(self, count: int) -> None:
        while len(self.committed) < count:
            assert self.failure is None, self.failure
            assert self.thread.is_alive()
            self.stop.wait(0.01)

    def __enter__(self) -> Ingesting:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.engine.dispose()
        assert self.failure is None, self.failure


def sqlite_api(source: Path, target: Path) -> None:
    """Python's binding of SQLite's online backup API, which the shell's `.backup` uses."""
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()


def vacuum_into(source: Path, target: Path) -> None:
    src = sqlite3.connect(source)
    src.execute("VACUUM INTO ?", (str(target),))
    src.close()


def sqlite_shell(source: Path, target: Path) -> None:
    shell = shutil.which("sqlite3")
    if shell is None:
        pytest.skip("the sqlite3 shell is not installed (apt-get install sqlite3)")
    subprocess.run([shell, str(source), f".backup '{target}'"], check=True, timeout=60)


def restored_mail(engine: Engine) -> set[str]:
    """Check a restored store and return the Message-IDs it holds."""
    check_schema(engine)  # opens, at the revision this helpdesk needs
    sessions = make_session_factory(engine)
    with sessions() as session:
        ids = set(session.scalars(select(Message.message_id)))
        # The full-text index came along and answers.
        hits = tickets.search(session, "wombat1")
        assert [h.subject for h in hits] == ["Printer 1 jammed"]
    return ids


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Path:
    path = tmp_path / "helpdesk.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.mark.parametrize("backup", [sqlite_api, vacuum_into, sqlite_shell],
                         ids=["backup-api", "vacuum-into", "sqlite3-shell"])
def test_sqlite_online_backup_while_ingesting_restores(
    sqlite_store: Path, tmp_path: Path, backup: Callable[[Path, Path], None]
) -> None:
    """A backup taken while mail arrives restores to a sound store with everything that
    was committed before it began."""
    saved = tmp_path / "backup.db"
    with Ingesting(f"sqlite:///{sqlite_store}") as feed:
        feed.wait_for(20)
        before = set(feed.committed)
        backup(sqlite_store, saved)
        feed.wait_for(len(before) + 20)  # mail kept arriving during and after the backup
    # Restore: the daemon is stopped, the backup file goes where the database was.
    restored = tmp_path / "restored" / "helpdesk.db"
    restored.parent.mkdir()
    shutil.copy(saved, restored)
    check = sqlite3.connect(restored)
    assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert check.execute("PRAGMA foreign_key_check").fetchall() == []
    check.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES('integrity-check', 1)")
    check.close()
    engine = make_engine(f"sqlite:///{restored}")
    try:
        ids = restored_mail(engine)
    finally:
        engine.dispose()
    assert before <= ids
    assert ids <= set(feed.committed)


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_postgres_pg_dump_while_ingesting_restores(store: Store, pg_server: PgServer,
                                                   pg_admin: Engine, tmp_path: Path) -> None:
    """`pg_dump -Fc` while mail arrives, `pg_restore` into a new database: it opens and holds
    every mail committed before the dump began."""
    dump = tmp_path / "helpdesk.dump"
    libpq = store.url.replace("postgresql+psycopg://", "postgresql://")
    with Ingesting(store.url) as feed:
        feed.wait_for(20)
        before = set(feed.committed)
        subprocess.run([f"{pg_server.bindir}/pg_dump", "-Fc", "-f", str(dump), libpq],
                       check=True, timeout=120, capture_output=True)
        feed.wait_for(len(before) + 20)
    with pg_admin.connect() as conn:
        conn.execute(text('CREATE DATABASE "restored"'))
    try:
        target = libpq.rsplit("/", 1)[0] + "/restored"
        subprocess.run([f"{pg_server.bindir}/pg_restore", "--no-owner", "-d", target,
                        str(dump)], check=True, timeout=120, capture_output=True)
        engine = create_engine(pg_server.url("restored"))
        try:
            ids = restored_mail(engine)
        finally:
            engine.dispose()
    finally:
        with pg_admin.connect() as conn:
            conn.execute(text('DROP DATABASE "restored" WITH (FORCE)'))
    assert before <= ids
    assert ids <= set(feed.committed)
