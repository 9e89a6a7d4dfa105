"""Writes that go with the next read (`store.direct.written_later`, PostgreSQL).

Inside the block a `Direct` write is not sent until the connection's next
statement that is read: a `Direct` read, or anything SQLAlchemy executes. These
tests check that it really waits (the server's own view of what our connection
ran last), that every read still sees every write before it, that what waits at
the end is sent or, on an error, dropped, that a failing write is reported as
SQLAlchemy's error by the read it went with, and that ingest then files its
batch again and quarantines the one mail whose write failed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
import pytest
import structlog
from sqlalchemy import Connection, Engine, bindparam, func, select, text
from sqlalchemy.exc import IntegrityError

from helpdesk.errors import StoreUnavailable
from helpdesk.flow.ingest import filing, ingest_batch
from helpdesk.store import schema
from helpdesk.store.direct import RESERVED, Direct, NewRow, WrittenLaterFailed, written_later
from helpdesk.values import OutcomeKind
from tests.conftest import Store
from tests.service.test_batch_reads import imap, prepare, request
from tests.service.test_direct import WHEN, new_ticket
from tests.service.test_ingest_batch import shipped_rules_context

POSTGRES = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)

_TAGS = schema.ticket_tags
ADD_TAG = Direct(_TAGS.insert())
TAGS_OF = Direct(select(_TAGS.c.tag).where(_TAGS.c.ticket_id == bindparam("ticket_id"))
                 .order_by(_TAGS.c.tag))


def last_query(admin: Engine, pid: int) -> str:
    """What the server last ran for backend `pid`, as another session sees it."""
    with admin.connect() as conn:
        return str(conn.scalar(text("SELECT query FROM pg_stat_activity WHERE pid = :pid"),
                               {"pid": pid}))


def tags(conn: Connection, ticket_id: int) -> list[str]:
    return [row[0] for row in TAGS_OF.all(conn, {"ticket_id": ticket_id})]


@POSTGRES
def test_a_write_waits_for_the_next_read_and_that_read_sees_it(store: Store) -> None:
    with store.engine.begin() as conn:
        pid = int(conn.scalar(text("SELECT pg_backend_pid()")) or 0)
        ticket = new_ticket(conn, "tags")
        with written_later(conn):
            ADD_TAG.execute(conn, {"ticket_id": ticket, "tag": "vpn"})
            ADD_TAG.executemany(conn, [{"ticket_id": ticket, "tag": t} for t in ("mfa", "sso")])
            assert "ticket_tags" not in last_query(store.engine, pid)  # not sent yet
            assert tags(conn, ticket) == ["mfa", "sso", "vpn"]  # a Direct read
            ADD_TAG.execute(conn, {"ticket_id": ticket, "tag": "wifi"})
            # Anything SQLAlchemy runs sees it too.
            found = conn.execute(select(func.count()).select_from(_TAGS)
                                 .where(_TAGS.c.ticket_id == ticket)).scalar_one()
            assert found == 4
            ADD_TAG.execute(conn, {"ticket_id": ticket, "tag": "zoom"})
        # What still waited at the end of the block was sent then.
        assert "INSERT INTO ticket_tags" in last_query(store.engine, pid)
        assert tags(conn, ticket) == ["mfa", "sso", "vpn", "wifi", "zoom"]


@POSTGRES
def test_what_waits_when_the_block_raises_is_dropped(store: Store) -> None:
    with store.engine.begin() as conn:
        ticket = new_ticket(conn, "tags")

        def file_then_fail() -> None:
            with written_later(conn):
                ADD_TAG.execute(conn, {"ticket_id": ticket, "tag": "vpn"})
                raise RuntimeError("a bug while filing")

        with pytest.raises(RuntimeError):
            file_then_fail()
        # Never sent: the caller's savepoint rollback has nothing of it to undo.
        assert tags(conn, ticket) == []


@POSTGRES
def test_a_failing_write_is_reported_by_the_read_it_went_with(store: Store) -> None:
    """Not as a DBAPIError: the read's caller might take it for its own statement's."""
    with store.engine.begin() as conn:
        ticket = new_ticket(conn, "tags")
        ADD_TAG.execute(conn, {"ticket_id": ticket, "tag": "vpn"})
        savepoint = conn.begin_nested()

        def again_then_read() -> None:
            with written_later(conn):
                ADD_TAG.execute(conn, {"ticket_id": ticket, "tag": "vpn"})  # the same key again
                tags(conn, ticket)

        with pytest.raises(WrittenLaterFailed, match="UniqueViolation") as failed:
            again_then_read()
        assert isinstance(failed.value.__cause__, IntegrityError)  # SQLAlchemy's, as ever
        savepoint.rollback()
        assert tags(conn, ticket) == ["vpn"]


@POSTGRES
def test_psycopgs_warning_about_the_same_failure_is_not_logged(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """When a failure reaches psycopg before the pipeline ends, it warns that closing the
    pipeline failed too: the same error again, which we raise and log once already."""
    caplog.set_level(logging.WARNING, logger="psycopg")
    with store.engine.connect() as conn:
        with written_later(conn):
            pass  # as every batch's first pass begins
        driver = conn.connection.dbapi_connection
        assert driver is not None
        driver.execute("CREATE TEMPORARY TABLE once (k integer PRIMARY KEY)")
        driver.execute("INSERT INTO once VALUES (1)")

        def fail_inside_the_pipeline() -> None:
            with driver.pipeline():
                driver.execute("INSERT INTO once VALUES (1)")
                time.sleep(0.2)  # the error is in by the next statement: raised in the block
                driver.execute("SELECT 1")

        with pytest.raises(psycopg.errors.UniqueViolation):
            fail_inside_the_pipeline()
        conn.rollback()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []


@POSTGRES
def test_a_batch_whose_write_fails_later_quarantines_that_mail_alone(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mail's event row refers to no ticket: the database refuses it when the write is
    sent, with a later mail's read. The batch is filed again mail by mail, and only that
    mail is quarantined; the others are stored once and acknowledged once."""
    ctx = shipped_rules_context(store, clock)
    raws = [request(n, f"Person {n} <p{n}@example.com>") for n in range(1, 5)]
    poison = "r2@mail.example.com"
    original = filing.rows.message_events

    def message_events(ticket_id: int, row_id: int, message_id: str, *args: Any,
                       **kwargs: Any) -> Any:
        events = original(ticket_id, row_id, message_id, *args, **kwargs)
        if message_id == poison:
            events = [{**e, "ticket_id": 10**9} for e in events]
        return events

    monkeypatch.setattr(filing.rows, "message_events", message_events)
    items = [prepare(raw, imap(uid), ctx) for uid, raw in enumerate(raws, 1)]
    with structlog.testing.capture_logs() as logs, store.sessions.begin() as session:
        outcomes = ingest_batch(session, items, ctx)
    (split,) = [e for e in logs if e["event"] == "ingest.batch_split"]
    assert "ForeignKeyViolation" in split["error"] or "foreign key" in split["error"]
    assert [o.kind for o in outcomes] == [OutcomeKind.NEW_TICKET, OutcomeKind.QUARANTINED,
                                          OutcomeKind.NEW_TICKET, OutcomeKind.NEW_TICKET]
    assert outcomes[1].error is not None
    assert "could not be stored" in outcomes[1].error
    with store.sessions() as session:
        stored = session.scalars(select(schema.messages.c.message_id)
                                 .where(schema.messages.c.direction == "in")
                                 .order_by(schema.messages.c.id)).all()
        assert stored == ["r1@mail.example.com", "r3@mail.example.com", "r4@mail.example.com"]
        queued = session.scalars(select(schema.outbox.c.ticket_id)).all()
        assert sorted(queued) == sorted(o.ticket_id for o in outcomes
                                        if o.kind is OutcomeKind.NEW_TICKET)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_sqlite_runs_every_statement_at_once(store: Store) -> None:
    """No round trip to save there: the block changes nothing."""
    with store.engine.begin() as conn:
        ticket = new_ticket(conn, "tags")
        with written_later(conn):
            ADD_TAG.execute(conn, {"ticket_id": ticket, "tag": "vpn"})
            # The driver itself, past Direct and SQLAlchemy's events, sees it at once.
            assert conn.exec_driver_sql("SELECT count(*) FROM ticket_tags").scalar() == 1


@POSTGRES
def test_a_connection_lost_with_writes_waiting_is_an_outage_not_the_mails_fault(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database drops our connection while the batch's writes wait: the store is
    unavailable (nothing is committed or acknowledged, the mails come again); no mail is
    blamed, and the batch is not filed again mail by mail on a dead connection."""
    ctx = shipped_rules_context(store, clock)
    items = [prepare(request(n, f"Person {n} <p{n}@example.com>"), imap(n), ctx)
             for n in range(1, 4)]
    original = filing.rows.message_events
    pid: list[int] = []

    def message_events(ticket_id: int, row_id: int, message_id: str, *args: Any,
                       **kwargs: Any) -> Any:
        if message_id == "r2@mail.example.com":
            with store.engine.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid[0]})
        return original(ticket_id, row_id, message_id, *args, **kwargs)

    monkeypatch.setattr(filing.rows, "message_events", message_events)
    session = store.sessions()
    try:
        pid.append(int(session.connection().scalar(text("SELECT pg_backend_pid()")) or 0))
        with structlog.testing.capture_logs() as logs, pytest.raises(StoreUnavailable):
            ingest_batch(session, items, ctx)
    finally:
        session.close()
    assert not [e for e in logs if e["event"] in ("ingest.batch_split", "ingest.failed")]
    with store.sessions() as fresh:
        assert fresh.scalar(select(func.count()).select_from(schema.messages)) == 0
        assert fresh.scalar(select(func.count()).select_from(schema.quarantine)) == 0


def contact_row(n: int) -> dict[str, Any]:
    return {"address": f"p{n}@example.com", "name": f"Person {n}", "created_at": WHEN}


@POSTGRES
def test_a_new_rows_id_is_reserved_ahead_and_its_insert_waits(store: Store) -> None:
    """`NewRow` inside the block: ids from the table's sequence, `RESERVED` at a time (one
    read), each INSERT waiting like any write; the rows are there with those ids."""
    new_contact = NewRow(schema.contacts)
    count = RESERVED + 8
    with store.engine.begin() as conn:
        pid = int(conn.scalar(text("SELECT pg_backend_pid()")) or 0)
        with written_later(conn):
            ids = [new_contact.insert(conn, contact_row(0))]
            assert "nextval" in last_query(store.engine, pid)  # the reservation, no INSERT
            ids += [new_contact.insert(conn, contact_row(n)) for n in range(1, count)]
            assert "generate_series" in last_query(store.engine, pid)  # the second one
        assert ids == sorted(set(ids))
        stored = dict(conn.execute(select(schema.contacts.c.address, schema.contacts.c.id)).all())
        assert stored == {f"p{n}@example.com": ids[n] for n in range(count)}
        # Two blocks reserved, the rest of the second skipped.
        assert conn.scalar(text("SELECT last_value FROM contacts_id_seq")) == 2 * RESERVED


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_a_new_row_outside_the_block_returns_the_databases_id(store: Store) -> None:
    with store.engine.begin() as conn:
        first = NewRow(schema.contacts).insert(conn, contact_row(1))
        second = NewRow(schema.contacts).insert(conn, contact_row(2))
        assert (first, second) == (1, 2)
