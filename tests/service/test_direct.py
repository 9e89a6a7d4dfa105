"""Statements run on the driver's cursor (`store.direct`) store, read and fail as Core's do."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, bindparam, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from helpdesk.flow.ingest import rows
from helpdesk.store import queries, schema
from helpdesk.store.direct import Direct
from helpdesk.store.failures import is_outage
from helpdesk.store.upsert import dialect_insert
from tests.conftest import Store

WHEN = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)
POSTGRES = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


def stored(conn: Connection, table: str, key: str, value: Any) -> list[dict[str, Any]]:
    """The rows as the driver reads them back: the values Core or Direct wrote, untyped.

    Without the columns that differ on purpose (id, ticket, Message-ID).
    """
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    result = conn.exec_driver_sql(f"SELECT * FROM {table} WHERE {key} = {mark}", (value,))
    names = [column[0] for column in result.cursor.description]
    found = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    assert found, (table, key, value)
    return [{k: v for k, v in row.items() if k not in ("id", "ticket_id", "message_id")}
            for row in found]


def new_ticket(conn: Connection, subject: str) -> int:
    values = {"subject": subject, "status": "new", "created_at": WHEN, "updated_at": WHEN}
    return int(conn.execute(rows.INSERT_TICKET.statement, values).scalar_one())


def message_row(ticket_id: int, message_id: str) -> dict[str, object]:
    return {
        "ticket_id": ticket_id, "direction": "in", "kind": "customer", "message_id": message_id,
        "message_id_synthetic": True, "content_hash": "c" * 64, "from_address": "a@example.com",
        "from_name": "Åsa Öberg", "subject": "Drucker — kaputt ✓", "sent_at": WHEN,
        "received_at": WHEN, "text": "hello\tworld\r\n", "new_text": "hello", "html": None,
        "raw": b"\x00\xff raw bytes", "size": 13, "origin_uid": 2**40,
        "origin_source": "imap", "origin_mailbox": "INBOX",
    }


def test_direct_writes_exactly_what_core_writes(store: Store) -> None:
    """Dates, JSON, booleans, blobs, NULLs, literals and Python-side defaults, byte for byte."""
    with store.engine.begin() as conn:
        core_ticket, direct_ticket = new_ticket(conn, "core"), new_ticket(conn, "direct")
        cases: list[tuple[Any, str, str, dict[str, Any]]] = [
            # table, the column both rows share a value in, and the row (ticket id added)
            (insert(schema.events), "events", "kind",
             {"actor": "x@example.com", "kind": "k", "created_at": WHEN,
              "detail": {"to": "ü@example.com", "n": [1, 2.5, None, True]}}),
            (insert(schema.events), "events", "kind",  # detail by default
             {"actor": "rule:x", "kind": "defaulted", "created_at": WHEN}),
            (insert(schema.outbox), "outbox", "envelope_from",
             {"envelope_to": ["a@example.com", "b@example.com"], "raw": b"\r\nmail",
              "envelope_from": "support@example.com", "next_attempt_at": WHEN,
              "created_at": WHEN}),
            (insert(schema.ticket_tags), "ticket_tags", "tag", {"tag": "vpn"}),
            (insert(schema.auto_replies), "auto_replies", "address",
             {"address": "r@example.com", "sent_at": WHEN}),
        ]
        for statement, table, key, row in cases:
            for ticket_id, via_direct in ((core_ticket, False), (direct_ticket, True)):
                values = {**row, "ticket_id": ticket_id}
                if key == "envelope_from":
                    values["message_id"] = f"<{ticket_id}@example.com>"
                if via_direct:
                    Direct(statement).execute(conn, values)
                else:
                    conn.execute(statement, values)
            core, direct = stored(conn, table, key, row[key])
            assert core == direct, table
        for ticket_id, via_direct in ((core_ticket, False), (direct_ticket, True)):
            values = message_row(ticket_id, f"<m{ticket_id}@example.com>")
            statement = insert(schema.messages)
            if via_direct:
                Direct(statement).execute(conn, values)
            else:
                conn.execute(statement, values)
        core_m = stored(conn, "messages", "message_id", f"<m{core_ticket}@example.com>")
        direct_m = stored(conn, "messages", "message_id", f"<m{direct_ticket}@example.com>")
        assert core_m == direct_m
        assert core_m[0]["raw"] == b"\x00\xff raw bytes"
        # An UPDATE with literal values beside the bound ones.
        conn.execute(rows.REOPEN_TICKET.statement, {"ticket_id": core_ticket, "now": WHEN})
        rows.REOPEN_TICKET.execute(conn, {"ticket_id": direct_ticket, "now": WHEN})
        core_t = stored(conn, "tickets", "id", core_ticket)
        direct_t = stored(conn, "tickets", "id", direct_ticket)
        assert {**core_t[0], "subject": "*"} == {**direct_t[0], "subject": "*"}
        assert core_t[0]["status"] == "open"


def test_defaults_are_computed_per_row_as_core_computes_them(store: Store) -> None:
    """A callable default (created_at = now) is called for each row, not once per statement."""
    with store.engine.begin() as conn:
        ticket_id = new_ticket(conn, "defaults")
        before = datetime.now(UTC)
        rows.INSERT_EVENT.executemany(conn, [
            {"ticket_id": ticket_id, "actor": "a", "kind": "one"},
            {"ticket_id": ticket_id, "actor": "a", "kind": "two"},
        ])
        middle = datetime.now(UTC)
        rows.INSERT_EVENT.execute(conn, {"ticket_id": ticket_id, "actor": "a", "kind": "three"})
        found = conn.execute(select(schema.events.c.created_at, schema.events.c.detail)
                             .where(schema.events.c.ticket_id == ticket_id)
                             .order_by(schema.events.c.id)).all()
    assert [detail for _when, detail in found] == [{}, {}, {}]
    assert all(before <= when <= middle for when, _detail in found[:2])
    assert middle <= found[2][0] <= datetime.now(UTC)


def test_reads_come_back_as_core_reads_them(store: Store) -> None:
    """Result types are processed (SQLite's text dates become aware datetimes, JSON parsed)."""
    with store.engine.begin() as conn:
        ticket_id = new_ticket(conn, "reads")
        rows.INSERT_EVENT.execute(conn, {"ticket_id": ticket_id, "actor": "a", "kind": "k",
                                         "created_at": WHEN, "detail": {"x": ["ü"]}})
        statement = (select(schema.events.c.created_at, schema.events.c.detail,
                            schema.events.c.message_row_id)
                     .where(schema.events.c.ticket_id == bindparam("ticket_id")))
        core = conn.execute(statement, {"ticket_id": ticket_id}).all()
        direct = Direct(statement)
        assert direct.all(conn, {"ticket_id": ticket_id}) == [tuple(r) for r in core]
        assert direct.first(conn, {"ticket_id": ticket_id}) == (WHEN, {"x": ["ü"]}, None)
        assert direct.first(conn, {"ticket_id": ticket_id + 1000}) is None
        assert rows.INSERT_TICKET.scalar_one(
            conn, {"subject": "s", "status": "new", "created_at": WHEN, "updated_at": WHEN}
        ) == ticket_id + 1


def test_a_refused_value_raises_sqlalchemys_error_and_is_the_mails_problem(store: Store) -> None:
    """A unique violation is SQLAlchemy's IntegrityError (ingest's race handling reads it), not
    an outage, and the savepoint around it can be rolled back and the transaction go on."""
    with store.sessions.begin() as session:
        conn = session.connection()
        ticket_id = new_ticket(conn, "refused")
        people = Direct(insert(schema.participants))
        people.execute(conn, {"ticket_id": ticket_id, "address": "a@example.com", "role": "cc"})
        with pytest.raises(IntegrityError) as caught, session.begin_nested():
            people.execute(session.connection(),
                           {"ticket_id": ticket_id, "address": "a@example.com", "role": "cc"})
        assert not is_outage(caught.value)
        assert "INSERT INTO participants" in str(caught.value)
        # ON CONFLICT DO NOTHING through the same path, then the transaction goes on.
        upsert = Direct(dialect_insert(store.engine.dialect.name)(schema.participants)
                        .on_conflict_do_nothing())
        upsert.executemany(session.connection(), [
            {"ticket_id": ticket_id, "address": "a@example.com", "role": "agent"},
            {"ticket_id": ticket_id, "address": "b@example.com", "role": "cc"},
        ])
        roles = dict(session.connection().execute(
            select(schema.participants.c.address, schema.participants.c.role)).all())
    assert roles == {"a@example.com": "cc", "b@example.com": "cc"}


@POSTGRES
def test_a_lost_connection_is_an_outage_and_the_connection_is_invalidated(
    store: Store, pg_admin: Engine
) -> None:
    """The server going away mid-transaction: retried later, never blamed on the mail."""
    with store.engine.connect() as conn:
        conn.begin()
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with pg_admin.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as caught:
            rows.TOUCH_TICKET.execute(conn, {"ticket_id": 1, "now": WHEN})
        assert caught.value.connection_invalidated
        assert is_outage(caught.value)
        assert conn.invalidated
    # The pool hands out a working connection afterwards.
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1


def test_statements_it_cannot_run_as_core_would_are_refused(store: Store) -> None:
    """An expanding IN list is compiled per call by Core: Direct says so at once."""
    statement = select(schema.tickets.c.id).where(
        schema.tickets.c.id.in_(bindparam("ids", expanding=True)))
    with store.engine.begin() as conn, pytest.raises(TypeError, match="expanding"):
        Direct(statement).all(conn, {"ids": [1, 2]})


def test_rows_are_named_like_cores(store: Store) -> None:
    """Callers read columns by their key or label, as on Core's rows."""
    with store.engine.begin() as conn:
        ticket_id = new_ticket(conn, "named")
        statement = select(schema.tickets.c.subject, schema.tickets.c.status.label("state"))
        row = Direct(statement.where(schema.tickets.c.id == bindparam("ticket_id"))).first(
            conn, {"ticket_id": ticket_id})
    assert row is not None
    assert (row.subject, row.state) == ("named", "new") == tuple(row)


@pytest.mark.parametrize("known", [1, 3, 7, 8, 1200])  # with the unknown id: 8 and 9 asked
def test_a_few_ids_or_many_find_the_same_tickets(store: Store, known: int) -> None:
    """Up to 8 ids run as a fixed IN list directly, more through Core: the same answer, the
    first stored copy of an id winning, unknown ids and repeats ignored."""
    with store.sessions.begin() as session:
        conn = session.connection()
        tickets = [new_ticket(conn, f"t{i}") for i in range(3)]
        ids = [f"<{i}@example.com>" for i in range(known)]
        for i, mid in enumerate(ids):
            Direct(insert(schema.messages)).executemany(conn, [
                {**message_row(tickets[(i + copy) % 3], mid), "content_hash": f"{copy:064d}"}
                for copy in range(2)])
        asked = [*ids, "<unknown@example.com>", ids[0]]
        found = queries.tickets_by_message_ids(session, asked)
    assert found == {mid: tickets[i % 3] for i, mid in enumerate(ids)}


def test_a_missing_value_is_refused_as_core_refuses_it(store: Store) -> None:
    """Without `now`, Core raises; binding NULL instead would touch no ticket, silently."""
    with store.engine.begin() as conn:
        ticket_id = new_ticket(conn, "missing")
        with pytest.raises(TypeError, match="'now'"):
            rows.TOUCH_TICKET.execute(conn, {"ticket_id": ticket_id})
        with pytest.raises(TypeError, match="'ticket_id'"):
            rows.TOUCH_TICKET.execute(conn, {"now": WHEN})
