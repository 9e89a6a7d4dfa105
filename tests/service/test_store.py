"""The store itself: migrations match the models, SQLite runs in WAL, the schema check."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from helpdesk.errors import SchemaOutdated, StoreUnavailable
from helpdesk.store.db import (
    HEAD_REVISION,
    check_schema,
    current_revision,
    head_revision,
    isolate_sequences,
    make_engine,
    reading_together,
    snapshot,
    upgrade,
)
from helpdesk.store.models import Base, Contact
from helpdesk.store.schema import dialect_indexes
from helpdesk.store.search import include_object
from tests.conftest import Store


# SQLite cannot reflect expression indexes (the PostgreSQL-only trigram index on subjects).
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
def test_migrations_match_the_models(store: Store) -> None:
    """Alembic's head creates exactly the tables the models describe, on both engines."""
    dialect_indexes()
    with store.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": include_object}),
            Base.metadata,
        )
    assert diff == []
    assert current_revision(store.engine) == head_revision()


def test_postgresqls_indexes_carry_the_columns_the_models_include(store: Store) -> None:
    """Alembic's comparison does not look at INCLUDE: each index the models declare with
    `postgresql_include` has exactly those columns in the migrated store."""
    if store.backend != "postgres":
        pytest.skip("INCLUDE is PostgreSQL's")
    dialect_indexes()
    declared = {ix.name: list(ix.dialect_options["postgresql"]["include"])
                for table in Base.metadata.tables.values() for ix in table.indexes
                if ix.dialect_options["postgresql"]["include"]}
    assert declared  # ix_tickets_created_at at least
    with store.engine.connect() as conn:
        for name, columns in declared.items():
            definition = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = "
                                           ":name"), {"name": name}).scalar_one()
            assert definition.endswith(f"INCLUDE ({', '.join(columns)})"), definition


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    """The embedded default uses WAL with foreign keys on, and every commit is synced to disk."""
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        # 2 = FULL: NORMAL (1) loses commits to a power loss after their mail was acknowledged.
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2
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


def test_reading_together_shares_one_snapshot(store: Store) -> None:
    """PostgreSQL's connections side by side all see the first one's moment, even the ones
    that read for the first time after a writer committed; SQLite gets one connection."""
    with store.sessions.begin() as writer:
        writer.add(Contact(address="kim@example.com"))
    with reading_together(store.engine, 3) as readers:
        assert len(readers) == (3 if store.backend == "postgres" else 1)
        assert readers[0].scalar(select(func.count(Contact.id))) == 1
        with store.sessions.begin() as writer:
            writer.add(Contact(address="dana@example.com"))
        assert [r.scalar(select(func.count(Contact.id))) for r in readers] == [1] * len(readers)
        assert readers[-1].scalar(text("SELECT current_setting('transaction_read_only')")
                                  if store.backend == "postgres" else text("SELECT 'on'")) == "on"
    with store.sessions() as session:
        assert session.scalar(select(func.count(Contact.id))) == 2


@pytest.mark.postgres
def test_reading_together_with_no_connection_to_spare_reads_alone(
    store: Store, request: pytest.FixtureRequest
) -> None:
    """A role limited to one connection still reads: one connection, queries in turn."""
    if store.backend != "postgres":
        pytest.skip("PostgreSQL's connection limits")
    admin = request.getfixturevalue("pg_admin")
    with admin.connect() as conn:
        conn.execute(text("CREATE ROLE helpdesk_onecon LOGIN CONNECTION LIMIT 1"))
    url = make_url(store.url).set(username="helpdesk_onecon")
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        with reading_together(engine, 2) as readers:
            assert len(readers) == 1
            assert readers[0].scalar(text("SELECT current_user")) == "helpdesk_onecon"
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text("DROP ROLE helpdesk_onecon"))


def test_raw_is_the_last_column_of_messages_on_sqlite(tmp_path: Path) -> None:
    """SQLite streams a large mail only into a trailing column (migration 0010, store.blobs)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade(engine)
    with engine.connect() as conn:
        columns = [row[1] for row in conn.execute(text("PRAGMA table_info(messages)"))]
    engine.dispose()
    assert columns[-1] == "raw"
    assert columns.count("raw") == 1
    assert "raw_last" not in columns


def test_moving_raw_last_keeps_every_mail_and_what_refers_to_it(store: Store) -> None:
    """Upgrading from 0009: the raw bytes, attachments, events and search are all still there."""
    from alembic import command

    from helpdesk.store.db import alembic_config

    command.downgrade(alembic_config(store.engine), "0009")
    store.engine.dispose()
    raw = b"Subject: Beamer\r\n\r\n" + bytes(range(256)) * 4000
    now = "2026-12-01 10:00:00"
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO tickets (id, subject, status, priority, created_at, updated_at) "
            "VALUES (1, 'Beamer', 'new', 'normal', :t, :t)"), {"t": now})
        conn.execute(text(
            "INSERT INTO messages (id, ticket_id, direction, kind, message_id,"
            " message_id_synthetic, content_hash, in_reply_to, \"references\", from_address,"
            " from_name, to_addresses, cc_addresses, subject, received_at, text, new_text, raw,"
            " size, defects, mail_class, origin_source, thread_index) VALUES (7, 1, 'in',"
            " 'customer', 'old@x', false, 'x', '', '', 'dana@example.com', '', '', '', 'Beamer',"
            " :t, 'Der Beamer geht nicht.', '', :raw, :size, '', 'human', 'file', '')"),
            {"t": now, "raw": raw, "size": len(raw)})
        conn.execute(text(
            "INSERT INTO attachments (message_id, filename, content_type, size, sha256, inline,"
            " content) VALUES (7, 'a.pdf', 'application/pdf', 3, 'h', false, :c)"),
            {"c": b"pdf"})
        conn.execute(text(
            "INSERT INTO events (ticket_id, message_row_id, created_at, actor, kind, detail)"
            " VALUES (1, 7, :t, 'dana@example.com', 'ticket.created', '{}')"), {"t": now})
    assert upgrade(store.engine) == ("0009", head_revision())
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT raw FROM messages WHERE id = 7")).scalar_one() == raw
        assert conn.execute(text("SELECT content FROM attachments WHERE message_id = 7")
                            ).scalar_one() == b"pdf"
        assert conn.execute(text("SELECT message_row_id FROM events")).scalar_one() == 7
        if store.backend == "sqlite":
            assert list(conn.execute(text("PRAGMA foreign_key_check"))) == []
            conn.execute(text("INSERT INTO messages_fts(messages_fts, rank) "
                              "VALUES('integrity-check', 1)"))
    with store.sessions() as session:
        from helpdesk.store import search

        (hit,) = search.search(session, search.parse_query("beamer"))
        assert hit.ticket_id == 1
