"""Rows with a large blob (a mail's raw bytes, an attachment), written without copies of it.

Why (issue 12 item 10, issue 13 item 7): SQLite copies a bound blob
(Python's sqlite3 binds with SQLITE_TRANSIENT), copies it again into the
record it builds, and the cached statement keeps the first copy until it is
next used. A 34 MB mail cost three times its size to store. A large blob is
inserted as `zeroblob(n)` instead and its bytes written into the row in
chunks through SQLite's incremental blob I/O (`sqlite3.Connection.blobopen`):
a zeroblob in the last column is never built in memory, and one in another
column only for the length of the INSERT.

PostgreSQL binds the bytes as usual.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, insert

from helpdesk.store.direct import Direct, NewRow

__all__ = ["LARGE_BLOB", "insert_many", "insert_one"]

# Blobs from this size on are streamed into SQLite; smaller ones are bound.
LARGE_BLOB = 1 << 20
_CHUNK = 1 << 20
_SIZE = "_blob_size"

_statements: dict[tuple[str, str | None, bool], Direct] = {}
_new_rows: dict[str, NewRow] = {}


def insert_one(conn: Connection, table: Table, row: Mapping[str, Any], column: str) -> int:
    """INSERT `row` into `table` and return its id; a large `column` value is streamed."""
    data = row[column]
    if not _streams(conn):
        return _new_row(table).insert(conn, row)  # PostgreSQL: an id reserved ahead, maybe
    if not _large(data):
        return int(_statement(table, None, returning=True).scalar_one(conn, row))
    values = {key: value for key, value in row.items() if key != column}
    values[_SIZE] = len(data)
    row_id = int(_statement(table, column, returning=True).scalar_one(conn, values))
    view = memoryview(data)
    # The same connection, inside the caller's transaction and savepoint.
    driver: sqlite3.Connection = conn.connection.dbapi_connection  # type: ignore[assignment]
    with driver.blobopen(table.name, column, row_id) as blob:
        for offset in range(0, len(view), _CHUNK):
            blob.write(view[offset : offset + _CHUNK])
    return row_id


def insert_many(conn: Connection, table: Table, rows: list[dict[str, Any]], column: str) -> None:
    """INSERT `rows` into `table`, in order; large `column` values are streamed."""
    if _streams(conn) and any(_large(row[column]) for row in rows):
        for row in rows:
            insert_one(conn, table, row, column)
    else:
        _statement(table, None, returning=False).executemany(conn, rows)


def _streams(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite"


def _large(value: object) -> bool:
    return isinstance(value, bytes | bytearray | memoryview) and len(value) >= LARGE_BLOB


def _new_row(table: Table) -> NewRow:
    found = _new_rows.get(table.name)
    if found is None:
        found = _new_rows[table.name] = NewRow(table)
    return found


def _statement(table: Table, streamed: str | None, *, returning: bool) -> Direct:
    key = (table.name, streamed, returning)
    direct = _statements.get(key)
    if direct is None:
        statement = insert(table)
        if returning:
            statement = statement.returning(table.c.id)
        if streamed is not None:
            statement = statement.values({streamed: func.zeroblob(bindparam(_SIZE))})
        direct = _statements[key] = Direct(statement)
    return direct
