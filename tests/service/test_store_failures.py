"""Whose fault is a database error: real driver errors from SQLite and PostgreSQL, classified."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.store.failures import is_outage
from helpdesk.values import Origin, OutcomeKind
from tests.conftest import Store
from tests.mailfactory import make_mail

POSTGRES = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


def raised(engine_url: str, statement: str, **params: object) -> DBAPIError:
    engine = create_engine(engine_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    except DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("no error")


def variable_limit() -> int:
    return sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


def test_sqlite_too_many_variables_is_the_mails_problem(tmp_path: Path) -> None:
    """Too many bound ids (a mail with 260,000 References) is data, not an outage."""
    count = variable_limit() + 1
    ids = {f"p{i}": i for i in range(count)}
    names = ", ".join(f":p{i}" for i in range(count))
    exc = raised(f"sqlite:///{tmp_path / 'a.db'}", f"SELECT 1 WHERE 1 IN ({names})", **ids)
    assert "too many SQL variables" in str(exc)
    assert not is_outage(exc)


def test_sqlite_locked_database_is_an_outage(tmp_path: Path) -> None:
    """Another writer holding the lock past the busy timeout is ours to retry."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
        with pytest.raises(OperationalError) as caught, engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
        engine.dispose()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked" in str(caught.value)
    assert is_outage(caught.value)


def test_sqlite_missing_file_is_an_outage(tmp_path: Path) -> None:
    """A database that cannot be opened (a directory here) is an outage, never a mail's fault."""
    (tmp_path / "dir.db").mkdir()
    exc = raised(f"sqlite:///{tmp_path / 'dir.db'}", "SELECT 1")
    assert is_outage(exc)


@POSTGRES
def test_postgres_value_too_long_is_the_mails_problem(store: Store) -> None:
    """22001 string data right truncation: a value in the mail, not the server."""
    exc = raised(store.url, "CREATE TEMP TABLE t (a varchar(3)); INSERT INTO t VALUES ('xxxx')")
    assert getattr(exc.orig, "sqlstate", None) == "22001"
    assert not is_outage(exc)


@POSTGRES
def test_postgres_refused_connection_is_an_outage(store: Store) -> None:
    """Nothing listening (the server is down): 08xxx or no SQLSTATE at all, an outage."""
    exc = raised("postgresql+psycopg://nobody@127.0.0.1:9/none", "SELECT 1")
    assert is_outage(exc)


def test_many_references_do_not_stop_the_mail(store: Store) -> None:
    """More References than SQLite binds in one statement: stored, threaded, not an outage."""
    ctx = IngestContext()
    with store.sessions.begin() as session:
        first = ingest(session, make_mail(message_id="<root@x.example>"), Origin("file"), ctx)
    # Written by hand: the standard library's header folding is quadratic in this.
    refs = "\r\n ".join(f"<r{i}@x.example>" for i in range(variable_limit() + 10))
    raw = (f"From: dana@example.com\r\nTo: support@example.com\r\n"
           f"Subject: Re: Printer on 3rd floor is jammed\r\nMessage-ID: <re@x.example>\r\n"
           f"References: {refs}\r\n <root@x.example>\r\n\r\nStill jammed.\r\n").encode()
    with store.sessions.begin() as session:
        outcome = ingest(session, raw, Origin("file"), ctx)
    assert outcome.kind is OutcomeKind.REPLY
    assert outcome.ticket_id == first.ticket_id
