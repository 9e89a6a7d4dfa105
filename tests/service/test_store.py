"""The store itself: migrations match the models, SQLite runs in WAL, the schema check."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text

from helpdesk.errors import SchemaOutdated
from helpdesk.store.db import (
    check_schema,
    current_revision,
    head_revision,
    make_engine,
    snapshot,
    upgrade,
)
from helpdesk.store.models import Base, Contact
from helpdesk.store.search import include_object
from tests.conftest import Store


def test_migrations_match_the_models(store: Store) -> None:
    """Alembic's head creates exactly the tables the models describe, on both engines."""
    with store.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": include_object}),
            Base.metadata,
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


def test_a_snapshot_sees_one_moment_and_blocks_no_writer(store: Store) -> None:
    """`snapshot` (exports) reads a consistent view while writers carry on, on both engines;
    on SQLite it takes no write lock (a writer that may wait half a second gets in)."""
    with snapshot(store.engine) as reader:
        assert reader.scalar(select(func.count(Contact.id))) == 0
        with store.sessions.begin() as writer:
            writer.add(Contact(address="dana@example.com"))
        if store.backend == "sqlite":
            path = store.url.removeprefix("sqlite:///")
            other = sqlite3.connect(path, timeout=0.5, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO contacts (address, name, created_at) "
                          "VALUES ('sam@example.org', '', '2026-03-02 09:00:00')")
            other.execute("COMMIT")
            other.close()
        assert reader.scalar(select(func.count(Contact.id))) == 0
    with store.sessions() as session:
        assert session.scalar(select(func.count(Contact.id))) == (
            2 if store.backend == "sqlite" else 1)
