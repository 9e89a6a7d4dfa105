"""The writer's hot statements, run on the driver's cursor: compiled once, bound by hand.

Why (issue 13): the ingest writer runs 7 (no rules) to 17 (the shipped rules)
small statements a mail, and
SQLAlchemy's execution of a cached Core statement (execution context,
parameter construction, result set-up, events) cost as much again as
SQLite's own work on them. A `Direct` statement is compiled by SQLAlchemy,
for the connection's dialect and the keys of the parameters given, on its
first use; later uses bind the values through the same type processors
(dates, JSON, booleans) and column defaults as Core would, and call the
driver's cursor directly, in the caller's transaction and savepoint.

Inside `written_later` (PostgreSQL: ingest's optimistic pass over a batch), a
statement whose rows nobody reads (`execute`, `executemany`) is not sent at
once: it waits for the connection's next statement that is read (a `Direct`
read, or anything SQLAlchemy executes: a Core query, a SAVEPOINT) and goes with
it in one pipeline, one round trip instead of one each. The server runs the
same statements in the same order, so every read still sees every write before
it. A write that fails on its data is reported by the read it went with, as
`WrittenLaterFailed`, not as the `DBAPIError` it is, which that read's caller
might take for its own (the caller files the batch again, statement by
statement, to find the mail); an outage is raised as SQLAlchemy's error, as
ever. A `NewRow` insert there takes its id from the table's sequence, reserved
a few at a time, instead of waiting for `RETURNING`.

What stays SQLAlchemy's: the SQL, its types and the errors. A driver error is
raised as SQLAlchemy's `DBAPIError` subclass (`IntegrityError`,
`OperationalError`), and a lost connection invalidates the connection as
SQLAlchemy would, so `store.failures.is_outage` and the callers' handling see
no difference. Statements with expanding IN lists or SQL-expression defaults
are refused at compile time (use Core for them), and so is a call without a
value for a required parameter, as Core refuses it. SQLAlchemy's statement
events and echo do not see these statements.
"""

from __future__ import annotations

import logging
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, event, insert
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql.base import Executable

from helpdesk.store.failures import is_outage

__all__ = ["RESERVED", "Direct", "NewRow", "WrittenLaterFailed", "written_later"]

# conn.info key: the writes waiting for the connection's next read (`written_later`).
_LATER = "helpdesk.direct.later"

_Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Bind:
    """One parameter of the compiled SQL: from the caller's values or a constant."""

    name: str
    key: str | None  # the caller's key; None: `constant` (a literal or a column default)
    process: _Processor
    constant: Any = None
    call: bool = False  # `constant` is a column default's callable, called per row


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    binds: tuple[_Bind, ...]
    positional: bool
    results: tuple[_Processor, ...]  # one per column; None where none is needed
    row: Callable[..., tuple[Any, ...]]  # a named tuple of the columns, by their keys


class Direct:
    """A Core statement run on the driver's cursor; one compilation per dialect and keys."""

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> None:
        """Run the statement once with `params`."""
        compiled = self._compile(conn, params)
        self._run(conn, compiled, False, [params], _discard)

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the statement for each of `rows` (all with the same keys)."""
        if rows:
            compiled = self._compile(conn, rows[0])
            self._run(conn, compiled, True, rows, _discard)

    def first(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row the statement returns, or None."""
        compiled = self._compile(conn, params)
        row = self._run(conn, compiled, False, [params], _fetchone)
        return None if row is None else _processed(compiled, row)

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row the statement returns."""
        compiled = self._compile(conn, params)
        rows = self._run(conn, compiled, False, [params], _fetchall)
        return [_processed(compiled, row) for row in rows]

    def scalar_one(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The single value of the single row the statement returns (INSERT ... RETURNING id)."""
        row = self.first(conn, params)
        if row is None:
            raise LookupError("the statement returned no row")
        return row[0]

    # -- compiling and running ---------------------------------------------------------------

    def _compile(self, conn: Connection, params: Mapping[str, Any]) -> _Compiled:
        keys = tuple(params)
        key = (conn.dialect.name, keys)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _compile(self.statement, conn, keys)
        return compiled

    def _run(
        self,
        conn: Connection,
        compiled: _Compiled,
        many: bool,
        rows: Sequence[Mapping[str, Any]],
        then: Callable[[Any], Any],
    ) -> Any:
        args = [_arguments(compiled, row) for row in rows]
        later: _Later | None = conn.info.get(_LATER)
        if later is not None:
            if then is _discard:
                later.writes.append(_Write(compiled.sql, many, args))
                return None
            if later.writes:
                return _after(conn, later.writes, _Write(compiled.sql, many, args), then)
        driver = conn.connection.dbapi_connection
        assert driver is not None
        cursor = driver.cursor()
        try:
            if many:
                cursor.executemany(compiled.sql, args)
            else:
                cursor.execute(compiled.sql, args[0])
            return then(cursor)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _wrapped(conn, compiled.sql, args, exc, cursor) from exc
        finally:
            cursor.close()


class NewRow:
    """The INSERT of one row of `table`, which returns the new row's id.

    Inside `written_later` the id is taken from the table's sequence, reserved
    `RESERVED` at a time, and the INSERT waits for the next read like any write:
    the caller needs the id, not the round trip `RETURNING` would cost. Ids
    reserved and not used are skipped, as a rolled-back insert's are: only for
    tables whose ids nobody reads as a count (messages, outbox rows; not tickets,
    whose numbers people see).
    """

    __slots__ = ("_plain", "_returning", "table")

    def __init__(self, table: Table) -> None:
        self.table = table
        self._returning = Direct(insert(table).returning(table.c.id))
        self._plain = Direct(insert(table))

    def insert(self, conn: Connection, row: Mapping[str, Any]) -> int:
        """INSERT `row`; its id."""
        later: _Later | None = conn.info.get(_LATER)
        if later is None:
            return int(self._returning.scalar_one(conn, row))
        new_id = later.reserved(conn, self.table.name)
        self._plain.execute(conn, {**row, "id": new_id})
        return new_id


# Ids reserved at a time by `NewRow` (at most this many less one skipped per batch and table).
RESERVED = 32
_RESERVE = ("SELECT nextval(pg_get_serial_sequence(%s, 'id')) "
            "FROM generate_series(1, %s)")


class _Later:
    """`written_later`'s state on a connection: the writes waiting, the ids reserved."""

    __slots__ = ("ids", "writes")

    def __init__(self) -> None:
        self.writes: list[_Write] = []
        self.ids: dict[str, list[int]] = {}

    def reserved(self, conn: Connection, table: str) -> int:
        """An id of `table`'s sequence, reserved for this connection (a read when none is)."""
        free = self.ids.setdefault(table, [])
        if not free:
            rows = _after(conn, self.writes, _Write(_RESERVE, False, [(table, RESERVED)]),
                          _fetchall)
            free.extend(sorted((int(row[0]) for row in rows), reverse=True))
        return free.pop()


class WrittenLaterFailed(Exception):
    """A statement sent with others in `written_later`'s pipeline failed on its data."""


@dataclass(frozen=True, slots=True)
class _Write:
    sql: str
    many: bool
    args: list[Any]


@contextmanager
def written_later(conn: Connection) -> Iterator[None]:
    """Until the block ends, `Direct` writes on `conn` wait for its next read (PostgreSQL).

    Whatever is still waiting is sent when the block ends normally, and dropped
    when it raises: the caller then rolls back to a savepoint taken before the
    block. Elsewhere (SQLite, whose statements cost no round trip) a no-op.
    """
    info = conn.info  # the pooled connection's: read once, in case it is lost meanwhile
    if not _pipelines(conn) or _LATER in info:
        yield
        return
    later = _Later()
    writes = later.writes

    def before_sqlalchemy_executes(*_args: Any) -> None:
        if writes:
            _after(conn, writes, None, _discard)

    info[_LATER] = later
    event.listen(conn, "before_cursor_execute", before_sqlalchemy_executes)
    try:
        yield
        if writes:
            _after(conn, writes, None, _discard)
    finally:
        event.remove(conn, "before_cursor_execute", before_sqlalchemy_executes)
        info.pop(_LATER, None)
        writes.clear()


def _pipelines(conn: Connection) -> bool:
    """psycopg 3 on a libpq with pipeline mode (14+; its binary package brings one)."""
    if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg":
        return False
    import psycopg  # loaded already: the dialect's driver

    return bool(psycopg.Pipeline.is_supported())


class _PipelineExitFilter(logging.Filter):
    """Drops psycopg's warning that closing a pipeline failed after a statement in it did.

    That failure is the statement's error again, which `_after` raises: logged
    as well, one failed write made two log lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg == "error ignored terminating %r: %s"
                    and bool(args) and type(args[0]).__name__ == "Pipeline")


logging.getLogger("psycopg").addFilter(_PipelineExitFilter())


def _after(conn: Connection, waiting: list[_Write], read: _Write | None,
           then: Callable[[Any], Any]) -> Any:
    """Send the waiting writes, and `read` if given, in one pipeline; `then` on its cursor."""
    statements = [*waiting, read] if read else list(waiting)
    waiting.clear()
    driver: Any = conn.connection.dbapi_connection
    cursors = [driver.cursor() for _ in statements]
    last = statements[-1]
    try:
        # The pipeline's end sends one Sync and waits for every result before it.
        with driver.pipeline():
            for cursor, statement in zip(cursors, statements, strict=True):
                if statement.many:
                    cursor.executemany(statement.sql, statement.args)
                else:
                    cursor.execute(statement.sql, statement.args[0])
        return then(cursors[-1])  # the read's (the last write's when there is none)
    except conn.dialect.loaded_dbapi.Error as exc:
        # The pipeline stops at the failing statement; which one it was, psycopg does not
        # say here: named by the last one sent.
        wrapped = _wrapped(conn, last.sql, last.args, exc, cursors[-1])
        if is_outage(wrapped):
            raise wrapped from exc
        # Not as the DBAPIError it is: a caller that expects, say, a unique violation
        # of its own statement (a savepoint around an insert) must not take this one
        # for it and go on in an aborted transaction.
        first = str(exc).strip().split("\n", 1)[0]
        raise WrittenLaterFailed(f"{type(exc).__name__}: {first}") from wrapped
    finally:
        for cursor in cursors:
            cursor.close()


def _discard(_cursor: Any) -> None:
    return None


def _fetchone(cursor: Any) -> Any:
    return cursor.fetchone()


def _fetchall(cursor: Any) -> Any:
    return cursor.fetchall()


def _processed(compiled: _Compiled, row: Sequence[Any]) -> tuple[Any, ...]:
    return compiled.row(*(p(v) if p is not None else v
                          for p, v in zip(compiled.results, row, strict=True)))


def _arguments(compiled: _Compiled, row: Mapping[str, Any]) -> Any:
    values = []
    for bind in compiled.binds:
        if bind.key is not None:
            value = row[bind.key]
        else:
            value = bind.constant() if bind.call else bind.constant
        values.append(bind.process(value) if bind.process is not None else value)
    if compiled.positional:
        return tuple(values)
    return {bind.name: value for bind, value in zip(compiled.binds, values, strict=True)}


def _compile(statement: Executable, conn: Connection, keys: tuple[str, ...]) -> _Compiled:
    dialect = conn.dialect
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    positional = bool(compiled.positional)
    names = list(compiled.positiontup) if positional else list(compiled.bind_names.values())
    escaped = getattr(compiled, "escaped_bind_names", None) or {}
    # Columns the caller left out whose Python-side default Core would compute.
    defaults = {column.key: column for column in (*compiled.insert_prefetch,
                                                   *compiled.update_prefetch)}
    binds = []
    for name in dict.fromkeys(names):
        param = compiled.binds[name]
        if param.expanding:
            raise TypeError(f"{name}: an expanding IN list cannot be run directly")
        process = param.type.dialect_impl(dialect).bind_processor(dialect)
        bound_name = escaped.get(name, name)
        if param.key in keys:
            binds.append(_Bind(bound_name, param.key, process))
        elif param.key in defaults:
            binds.append(_default(bound_name, defaults[param.key], process))
        elif param.required:
            # Core refuses the statement too; binding NULL would match no row, silently.
            raise TypeError(f"a value is required for bind parameter {name!r}")
        elif param.callable is not None:
            raise TypeError(f"{name}: a bind with a callable value cannot be run directly")
        else:
            binds.append(_Bind(bound_name, None, process, param.value))
    if positional:
        # A name bound twice appears twice in the positional order.
        by_name = {bind.name: bind for bind in binds}
        ordered = tuple(by_name[escaped.get(name, name)] for name in names)
    else:
        ordered = tuple(binds)
    columns = list(getattr(statement, "exported_columns", ()))
    processors = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None)
                       for column in columns)
    # Named like Core's rows (`row.subject`); a label that is no identifier gets _0, _1...
    row = namedtuple("Row", [str(column.key) for column in columns], rename=True)  # type: ignore[misc]
    return _Compiled(compiled.string, ordered, positional, processors, row)


def _default(name: str, column: Any, process: _Processor) -> _Bind:
    """A column the caller left out, filled with its Python-side default as Core would."""
    default = column.default
    if default is None:
        return _Bind(name, None, process, None)
    if getattr(default, "is_scalar", False):
        return _Bind(name, None, process, default.arg)
    if getattr(default, "is_callable", False):
        fn = default.arg
        return _Bind(name, None, process, lambda: fn(None), call=True)
    raise TypeError(f"{column.name}: a {type(default).__name__} default cannot be run directly")


def _wrapped(conn: Connection, sql: str, args: Any, exc: Any, cursor: Any) -> StatementError:
    """The driver's error as SQLAlchemy raises it; a lost connection is invalidated first."""
    dialect = conn.dialect
    lost = bool(dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor))
    if lost:
        conn.invalidate(exc)
    wrapped: StatementError = DBAPIError.instance(
        sql, args, exc, dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=dialect)
    return wrapped
