"""SQLite's search index holds the mail `tickets search` can find, and only that (0011).

Incoming mail and agents' replies are indexed; the acknowledgements and
notifications we write ourselves are not (search never counted them). The index
stays consistent through inserts, updates and deletes, and migration 0011 drops
the entries an older store had for our own mail (and 0011's downgrade puts them back).
"""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import Connection, text

from helpdesk.store.db import alembic_config, upgrade
from tests.conftest import Store

# One unusual word per message, so that a MATCH finds exactly one row.
MAILS = {
    "zebracorn": ("in", "customer"),      # a customer's mail
    "narwhalish": ("out", "agent_reply"),  # an agent's reply relayed by `tickets reply`
    "quokkaform": ("out", "auto_reply"),   # our acknowledgement
    "axolotlic": ("out", "system"),        # a notification to the team
}
SEARCHED = {"zebracorn", "narwhalish"}


# PostgreSQL's tsvector column is unchanged by 0011.
pytestmark = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


def add_mails(conn: Connection) -> dict[str, int]:
    """The four messages on one ticket, by raw SQL (the schema of 0010 and 0011 alike)."""
    conn.execute(text(
        "INSERT INTO tickets (id, subject, status, priority, created_at, updated_at) "
        "VALUES (1, 'VPN', 'open', 'normal', :t, :t)"), {"t": "2026-03-01 09:00:00"})
    ids = {}
    for word, (direction, kind) in MAILS.items():
        ids[word] = conn.execute(text(
            "INSERT INTO messages (ticket_id, direction, kind, message_id, message_id_synthetic,"
            " content_hash, in_reply_to, \"references\", from_address, from_name, to_addresses,"
            " cc_addresses, subject, received_at, text, new_text, size, defects, mail_class,"
            " origin_source) VALUES (1, :direction, :kind, :mid, false, 'x', '', '',"
            " 'a@example.org', '', '', '', 'VPN', :t, :body, :body, 0, '', 'human', '')"
            " RETURNING id"),
            {"direction": direction, "kind": kind, "mid": f"{word}@example.org",
             "body": f"The tunnel drops: {word}", "t": "2026-03-01 09:00:00"}).scalar_one()
    return ids


def indexed(conn: Connection) -> set[str]:
    """The words of MAILS the index finds."""
    return {word for word in MAILS
            if conn.execute(text("SELECT rowid FROM messages_fts WHERE messages_fts MATCH :w"),
                            {"w": word}).first() is not None}


def check_integrity(conn: Connection) -> None:
    # Rank 0: the index's own structure only (our own mail is, on purpose, not in it).
    conn.execute(text("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 0)"))


def test_only_the_mail_search_counts_is_indexed_through_insert_update_and_delete(
    store: Store
) -> None:
    with store.engine.begin() as conn:
        ids = add_mails(conn)
        assert indexed(conn) == SEARCHED
        conn.execute(text("UPDATE messages SET text = 'The tunnel holds: wombatian', "
                          "new_text = 'wombatian' WHERE id = :id"), {"id": ids["zebracorn"]})
        conn.execute(text("UPDATE messages SET text = 'capybarine' WHERE id = :id"),
                     {"id": ids["quokkaform"]})
        found = conn.execute(text("SELECT rowid FROM messages_fts WHERE messages_fts MATCH :w"),
                             {"w": "wombatian"}).scalars().all()
        assert found == [ids["zebracorn"]]
        assert indexed(conn) == {"narwhalish"}
        assert conn.execute(text("SELECT count(*) FROM messages_fts WHERE messages_fts "
                                 "MATCH 'capybarine'")).scalar_one() == 0
        conn.execute(text("DELETE FROM messages WHERE id IN (:a, :b)"),
                     {"a": ids["narwhalish"], "b": ids["quokkaform"]})
        assert indexed(conn) == set()
        check_integrity(conn)


def test_0011_drops_our_own_mail_from_an_older_index_and_its_downgrade_restores_it(
    store: Store
) -> None:
    config = alembic_config(store.engine)
    command.downgrade(config, "0010")
    with store.engine.begin() as conn:
        add_mails(conn)
        assert indexed(conn) == set(MAILS)
    upgrade(store.engine, "0011")
    with store.engine.begin() as conn:
        assert indexed(conn) == SEARCHED
        check_integrity(conn)
    command.downgrade(config, "0010")
    with store.engine.begin() as conn:
        assert indexed(conn) == set(MAILS)
        check_integrity(conn)
