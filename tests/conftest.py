"""Shared fixtures: the store on SQLite and on a real PostgreSQL, settings, a clock."""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from helpdesk.store.db import make_engine, make_session_factory, upgrade
from tests.servers import missing_server
from tests.servers.postgres import PgServer, find_bindir

MESSAGES = Path(__file__).parent / "messages"


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """Commands configure logging globally; give every test back the defaults."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@dataclass
class Store:
    """A migrated, empty database for one test."""

    backend: str
    url: str
    engine: Engine
    sessions: sessionmaker[Session]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy (migrating per test is slow)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # the last connection to close checkpoints the WAL into the file
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL cluster for the whole run."""
    bindir = find_bindir()
    if bindir is None:
        missing_server("PostgreSQL server binaries not found (apt-get install postgresql)")
    assert bindir is not None
    server = PgServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.cleanup()


@pytest.fixture(scope="session")
def pg_admin(pg_server: PgServer) -> Iterator[Engine]:
    engine = create_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer, pg_admin: Engine) -> str:
    """A migrated template database; tests clone it with CREATE DATABASE ... TEMPLATE."""
    with pg_admin.connect() as conn:
        conn.execute(text('CREATE DATABASE "helpdesk_template"'))
    engine = make_engine(pg_server.url("helpdesk_template"))
    upgrade(engine)
    engine.dispose()
    return "helpdesk_template"


_counter = itertools.count()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty, migrated store: parametrised over SQLite and a real PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "helpdesk.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
        engine = make_engine(url)
        yield Store("sqlite", url, engine, make_session_factory(engine))
        engine.dispose()
        return
    server: PgServer = request.getfixturevalue("pg_server")
    admin: Engine = request.getfixturevalue("pg_admin")
    template = request.getfixturevalue("pg_template")
    name = f"t_{next(_counter)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    url = server.url(name)
    engine = make_engine(url)
    yield Store("postgres", url, engine, make_session_factory(engine))
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


class Clock:
    """A controllable clock for services that take `now`."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def read_message(relative: str) -> bytes:
    """A fixture mail from tests/messages."""
    return (MESSAGES / relative).read_bytes()
