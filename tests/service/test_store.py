"""The store itself: migrations match the models, SQLite runs in WAL, the schema check."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from helpdesk.errors import SchemaOutdated, StoreUnavailable
from helpdesk.store.db import (
    HEAD_REVISION,
    check_schema,
    current_revision,
    head_revision,
    isolate_sequences,
    make_engine,
    upgrade,
)
from helpdesk.store.models import Base
from tests.conftest import Store


def test_migrations_match_the_models(store: Store) -> None:
    """Alembic's head creates exactly the tables the models describe, on both engines."""
    with store.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []
    assert current_revision(store.engine) == head_revision()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    """The embedded default uses WAL with foreign keys on."""
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_empty_database_is_reported_outdated(tmp_path: Path) -> None:
    """An empty database fails the schema check until it is upgraded."""
    engine = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    with pytest.raises(SchemaOutdated, match="helpdesk db upgrade"):
        check_schema(engine)
    before, after = upgrade(engine)
    assert (before, after) == (None, head_revision())
    check_schema(engine)
    engine.dispose()


def test_head_revision_constant_is_alembics_head() -> None:
    """The schema check compares with HEAD_REVISION: it must be the newest migration file's."""
    assert head_revision() == HEAD_REVISION


def test_an_older_revision_is_outdated_and_names_both(store: Store) -> None:
    """A database one migration behind is refused, naming its revision and the one needed."""
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0003'"))
    with pytest.raises(SchemaOutdated, match=f"revision 0003.*needs revision {HEAD_REVISION}"):
        check_schema(store.engine)


def test_isolated_sequences_give_ids_back_and_make_others_wait(store: Store) -> None:
    """A dry run's ids go back on rollback; a concurrent insert waits and then gets them.

    This is what makes `rules test` safe beside running daemons on PostgreSQL:
    the daemon's insert blocks while the dry run holds the sequence, then takes
    the same id the dry run had used, so no id is lost and none is given twice.
    """
    with store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE probe (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)"
                          if store.backend == "sqlite" else
                          "CREATE TABLE probe (id BIGSERIAL PRIMARY KEY, v TEXT)"))
        conn.execute(text("INSERT INTO probe (v) VALUES ('before')"))
    dry = store.engine.connect()
    transaction = dry.begin()
    assert isolate_sequences(dry) is True
    dry_id = dry.execute(text("INSERT INTO probe (v) VALUES ('dry') RETURNING id")).scalar()
    assert dry_id == 2
    got: list[int] = []
    if store.backend == "postgres":
        other = threading.Thread(target=lambda: got.append(_insert(store, "daemon")))
        other.start()
        other.join(1.0)
        assert other.is_alive(), "the concurrent insert must wait for the dry run"
        transaction.rollback()
        other.join(10)
        assert got == [2]
    else:
        transaction.rollback()  # SQLite has one writer at a time: nobody could have waited
        got.append(_insert(store, "daemon"))
        assert got == [2]
    dry.close()
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, v FROM probe ORDER BY id")).all()
    assert [tuple(row) for row in rows] == [(1, "before"), (2, "daemon")]


def _insert(store: Store, value: str) -> int:
    with store.engine.begin() as conn:
        new = conn.execute(text("INSERT INTO probe (v) VALUES (:v) RETURNING id"), {"v": value})
        return int(new.scalar_one())


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_isolating_gives_up_rather_than_wait_long_for_a_busy_sequence(store: Store) -> None:
    """A transaction that holds a sequence makes the dry run give up after its lock timeout."""
    with store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE probe (id BIGSERIAL PRIMARY KEY)"))
    with store.engine.connect() as busy, store.engine.connect() as dry:
        busy.begin()
        busy.execute(text("SELECT nextval('probe_id_seq')"))  # held until busy ends
        dry.begin()
        with pytest.raises(StoreUnavailable, match="busy"):
            isolate_sequences(dry, lock_timeout_ms=200)
