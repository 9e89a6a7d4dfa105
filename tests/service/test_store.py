"""The store itself: migrations match the models, SQLite runs in WAL, the schema check."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from helpdesk.errors import SchemaOutdated
from helpdesk.store.db import check_schema, current_revision, head_revision, make_engine, upgrade
from helpdesk.store.models import Base
from tests.conftest import Store


# SQLite cannot reflect expression indexes (the PostgreSQL-only trigram index on subjects).
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
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
