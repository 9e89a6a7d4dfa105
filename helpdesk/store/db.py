"""Engine and session factory, SQLite pragmas, and the schema-version check.

There is no global session: callers make a factory and open one transaction
per unit of work (`with factory.begin() as session:`).

Every command checks the schema before it works, so the check is one SQL
query on Alembic's own table compared with `HEAD_REVISION`, the newest
migration this package ships. Alembic itself (a tenth of a second of imports)
is loaded only by `upgrade` and the `db` commands; a test asks Alembic for the
head and fails when `HEAD_REVISION` is not kept in step with the migrations.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.pool import QueuePool, StaticPool

from helpdesk.errors import HelpdeskError, SchemaOutdated, StoreUnavailable

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"

# The newest revision in migrations/versions; keep it in step when adding one
# (tests/service/test_store.py asks Alembic and fails otherwise).
HEAD_REVISION = "0013"

# How long a writer waits for another writer's lock before SQLite reports busy.
SQLITE_BUSY_TIMEOUT_MS = 15_000


class StoreAccessDenied(HelpdeskError):
    """The database refused us (wrong or missing password, unknown role or database).

    Unlike `StoreUnavailable` this does not pass by waiting: an admin must fix
    the configuration, so it is reported as a configuration error, not retried.
    """


def make_engine(url: str, *, echo: bool = False, password: str | None = None) -> Engine:
    """An engine for `url`; SQLite files get WAL, foreign keys and immediate transactions.

    `password` (from `[database] password_file` or the environment) is put
    into the URL object, never into a string that could reach a log: SQLAlchemy
    shows such a URL with the password as `***`.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url, echo=echo)
    else:
        if password is not None:
            parsed = parsed.set(password=password)
        engine = create_engine(parsed, echo=echo, pool_pre_ping=True, future=True)
    _plain_savepoints(engine.dialect)
    return engine


def _plain_savepoints(dialect: Dialect) -> None:
    """Send SAVEPOINT, RELEASE and ROLLBACK TO as plain SQL.

    SQLAlchemy builds each as a statement and compiles it, and as every savepoint
    has a name of its own its statement cache never hits: ~100 us a statement,
    and ingest took one savepoint per mail (two when rules act), which was a
    tenth of storing a mail (it now takes one a batch while no mail fails).
    Its names ("sa_savepoint_7") need no quoting; the ORM's bookkeeping
    (begin_nested) is untouched.
    """
    def savepoint(connection: Connection, name: str) -> None:
        connection.exec_driver_sql(f"SAVEPOINT {_checked(name)}")

    def rollback_to(connection: Connection, name: str) -> None:
        connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_checked(name)}")

    def release(connection: Connection, name: str) -> None:
        connection.exec_driver_sql(f"RELEASE SAVEPOINT {_checked(name)}")

    # On this engine's dialect object only (its class is chosen by the URL).
    setattr(dialect, "do_savepoint", savepoint)  # noqa: B010
    setattr(dialect, "do_rollback_to_savepoint", rollback_to)  # noqa: B010
    setattr(dialect, "do_release_savepoint", release)  # noqa: B010


def _checked(name: str) -> str:
    if not name.isidentifier():
        raise ValueError(f"unexpected savepoint name {name!r}")
    return name


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
        # FULL: every commit is on disk before we acknowledge its mail to the source
        # (IMAP MOVE, Maildir rename, LMTP 250, pipe exit 0). With NORMAL a commit in WAL
        # mode survives our process dying but may roll back after a power loss or an OS
        # crash, while the source has already let go of the mail. Group commit makes
        # that one fsync a batch, not a mail.
        cursor.execute("PRAGMA synchronous=FULL")
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
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only Core connection on one consistent view of the store that never blocks
    writers: SQLite reads a WAL snapshot without the write lock; PostgreSQL runs
    REPEATABLE READ, READ ONLY. No ORM: commands that only list start faster."""
    with engine.connect() as conn:
        if is_sqlite(engine):
            conn.execution_options(**{_READ_ONLY: True})
        else:
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


@contextmanager
def reading_together(engine: Engine, count: int) -> Iterator[list[Connection]]:
    """Up to `count` `reading` connections on one and the same snapshot, for independent
    queries run side by side: PostgreSQL exports the first one's snapshot to the others.

    SQLite has no snapshot to share, and a server that cannot export one (a standby)
    gives one connection: the caller runs its queries one after the other.
    """
    with reading(engine) as first:
        if count < 2 or is_sqlite(engine):
            yield [first]
            return
        # A standby cannot export (and the export cannot run in a savepoint to try).
        exported = first.exec_driver_sql(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_export_snapshot() END"
        ).scalar_one()
        if exported is None:
            yield [first]
            return
        if not re.fullmatch(r"[0-9A-Fa-f-]+", exported):  # no bind parameters in SET
            raise ValueError(f"unexpected snapshot name {exported!r}")
        with ExitStack() as others:
            try:
                more = [others.enter_context(reading(engine)) for _ in range(count - 1)]
                for conn in more:  # must be each transaction's first statement
                    conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{exported}'")
            except OperationalError:  # no connection slot to spare: one after the other
                others.close()
                more = []
            yield [first, *more]


@contextmanager
def snapshot(engine: Engine) -> Iterator[Session]:
    """`reading` as an ORM session, for long reads such as exports."""
    from sqlalchemy.orm import Session

    with reading(engine) as conn, Session(bind=conn) as session:
        yield session


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory; objects stay usable after commit for rendering."""
    from sqlalchemy.orm import sessionmaker

    return sessionmaker(engine, expire_on_commit=False, future=True)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def alembic_config(engine: Engine) -> AlembicConfig:
    """An Alembic configuration for our migrations, bound to `engine`."""
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    """The newest migration this version of helpdesk ships (as Alembic sees the files)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    assert head is not None
    return head


INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE: the role may not use the table

# Messages of a refused connection, as libpq words them (psycopg gives no
# SQLSTATE for a failed connection). A server with a translated lc_messages
# words the FATAL ones differently; those fall back to "unavailable" (retried),
# which delays the admin's fix but never loses mail.
_REFUSED = re.compile(
    r"password authentication failed|no password supplied|authentication failed"
    r'|no pg_hba\.conf entry|role "[^"]*" does not exist|database "[^"]*" does not exist'
    r"|permission denied for database",
    re.IGNORECASE,
)


def connect_error(exc: DBAPIError) -> HelpdeskError:
    """What a failed connection means: access denied (configuration) or unavailable (retry)."""
    reason = str(exc.orig).strip() if exc.orig is not None else str(exc)
    # libpq prefixes every line with where it tried; the reason is what counts.
    reason = reason.removeprefix("connection failed: ")
    pgconn = getattr(exc.orig, "pgconn", None)
    if getattr(pgconn, "needs_password", False) or _REFUSED.search(reason):
        return StoreAccessDenied(f"the database server refused the login: {reason}")
    return StoreUnavailable(f"cannot open the database: {reason}")


def stored_revision(engine: Engine) -> str | None:
    """The revision recorded in the database (Alembic's table), or None for an empty one.

    One query, no Alembic import: this runs before every command.
    """
    try:
        with engine.connect() as conn:
            if not _has_version_table(conn):
                return None
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except (OperationalError, InterfaceError) as exc:
        raise connect_error(exc) from exc
    except ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
            raise StoreAccessDenied(f"the database refused access: {exc.orig}") from exc
        raise
    # Several rows would mean branches, which we never ship: that is not our head either.
    return rows[0] if len(rows) == 1 else (",".join(sorted(rows)) or None)


def _has_version_table(conn: Any) -> bool:
    if conn.dialect.name == "sqlite":
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    else:
        # The table is looked up on the search_path, as Alembic's own query does.
        query = "SELECT to_regclass('alembic_version') IS NOT NULL"
    return bool(conn.execute(text(query)).scalar())


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    return stored_revision(engine)


def check_schema(engine: Engine) -> None:
    """Raise SchemaOutdated unless the database is at the newest migration."""
    current = stored_revision(engine)
    if current != HEAD_REVISION:
        raise SchemaOutdated(current, HEAD_REVISION)


def upgrade(engine: Engine, revision: str = "head",
            on_step: Callable[[str], None] | None = None) -> tuple[str | None, str]:
    """Run migrations up to `revision`; returns (before, after).

    `on_step` is called with each revision's id once it is applied (a progress bar).
    """
    from alembic import command

    before = current_revision(engine)
    config = alembic_config(engine)
    if on_step is not None:
        report = on_step

        def applied(*, step: Any, **_: Any) -> None:  # Alembic passes keywords
            report(str(step.up_revision_id))

        config.attributes["on_version_apply"] = applied
    command.upgrade(config, revision)
    return before, current_revision(engine) or ""


def pending_revisions(engine: Engine, revision: str = "head") -> list[str]:
    """The revisions `upgrade` would apply, oldest first (none when the schema is current)."""
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError

    script = ScriptDirectory(str(MIGRATIONS))
    current = current_revision(engine)
    try:
        steps = list(script.iterate_revisions(revision, current or "base"))
    except RevisionError:
        return []  # a revision this package does not know: `upgrade` says so itself
    return [r.revision for r in reversed(steps) if r.revision != current]


def isolate_sequences(conn: Connection, *, lock_timeout_ms: int = 2000) -> bool:
    """Make the ids this transaction takes from sequences go back on rollback (PostgreSQL).

    `nextval` is not transactional: a rolled-back insert still uses up its id,
    so a dry run (`helpdesk rules test`) would leave gaps in the ticket
    numbers. A no-op `ALTER SEQUENCE` is transactional, though: PostgreSQL
    gives the sequence new storage that lives and dies with this transaction,
    and holds a lock that makes other sessions' `nextval` wait until it ends.
    So a concurrent daemon never gets an id this transaction used: it waits
    (for the length of the dry run) and then continues from the untouched
    value. `lock_timeout` bounds how long *we* wait for a daemon's locks, so
    that we, not the daemon, give up if the two ever wait on each other.

    Returns False when the sequences cannot be altered (the role does not own
    them): the caller then says that ids may advance. SQLite needs nothing: its
    ids come from the table itself, and a rollback undoes them.
    """
    if conn.dialect.name == "sqlite":
        return True
    conn.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
    names = conn.execute(text(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'S' AND n.nspname = current_schema() ORDER BY 1"
    )).scalars().all()
    try:
        with conn.begin_nested():
            for name in names:  # always in the same order, so two dry runs cannot deadlock
                conn.execute(text(f"ALTER SEQUENCE {name} INCREMENT BY 1"))
    except ProgrammingError:  # insufficient privilege: not the owner
        return False
    except OperationalError as exc:  # lock_timeout: a long transaction holds a sequence
        raise StoreUnavailable(f"the store is busy, try again: {exc.orig}") from exc
    return True


def describe_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)
