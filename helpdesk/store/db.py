"""Engine and session factory, SQLite pragmas, and the schema-version check.

There is no global session: callers make a factory and open one transaction
per unit of work (`with factory.begin() as session:`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool, StaticPool

from helpdesk.errors import SchemaOutdated, StoreUnavailable

MIGRATIONS = Path(__file__).parent / "migrations"

# How long a writer waits for another writer's lock before SQLite reports busy.
SQLITE_BUSY_TIMEOUT_MS = 15_000


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for `url`; SQLite files get WAL, foreign keys and immediate transactions."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo=echo)
    return create_engine(url, echo=echo, pool_pre_ping=True, future=True)


def _sqlite_engine(url: str, *, echo: bool) -> Engine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # A pool of connections: opening one per transaction re-runs the pragmas and
    # makes SQLite checkpoint the WAL on every close, which cost ~3 ms a message.
    # pysqlite connections may move between threads when the pool hands them out
    # (one thread at a time), hence check_same_thread=False.
    memory = parsed.database in (None, "", ":memory:")
    engine = create_engine(
        url,
        echo=echo,
        future=True,
        poolclass=StaticPool if memory else QueuePool,
        connect_args={"check_same_thread": False},
        **({} if memory else {"pool_size": 5, "max_overflow": 10}),
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINT;
        # take control of it (SQLAlchemy's documented recipe).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that
        # later wants to write fails at once with SQLITE_BUSY when another
        # process committed in between, instead of waiting for busy_timeout.
        # A read-only snapshot (`snapshot`) never writes, so it must not hold the lock.
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


_READ_ONLY = "helpdesk_read_only"


@contextmanager
def snapshot(engine: Engine) -> Iterator[Session]:
    """A read-only session on one consistent view of the store that never blocks writers.

    For long reads such as exports: SQLite reads a WAL snapshot without the
    write lock; PostgreSQL runs REPEATABLE READ, READ ONLY.
    """
    with engine.connect() as conn:
        if is_sqlite(engine):
            conn.execution_options(**{_READ_ONLY: True})
        else:
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin(), Session(bind=conn) as session:
            yield session


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory; objects stay usable after commit for rendering."""
    return sessionmaker(engine, expire_on_commit=False, future=True)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def alembic_config(engine: Engine) -> AlembicConfig:
    """An Alembic configuration for our migrations, bound to `engine`."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    """The newest migration this version of helpdesk ships."""
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise StoreUnavailable(f"cannot open the database: {exc.orig}") from exc


def check_schema(engine: Engine) -> None:
    """Raise SchemaOutdated unless the database is at the newest migration."""
    head = head_revision()
    current = current_revision(engine)
    if current != head:
        raise SchemaOutdated(current, head)


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Run migrations up to `revision`; returns (before, after)."""
    before = current_revision(engine)
    command.upgrade(alembic_config(engine), revision)
    return before, current_revision(engine) or ""


def describe_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)
