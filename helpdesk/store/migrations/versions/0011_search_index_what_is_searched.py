"""SQLite's search index holds only the mail `tickets search` can find

`tickets search` counts incoming mail and agents' replies only (the mail we
write ourselves repeats the customer's words or boilerplate), but the FTS5
triggers of 0007 indexed every message, our acknowledgements and
notifications too: about half of the index, and a third of the cost of
storing a mail's rows, for entries no search returns. The triggers now skip
them, and their entries already in the index are deleted (with the values
they were indexed with, as an external-content FTS5 table requires).

FTS5's 'rebuild' command would index every message again; use the 'delete'
form below to drop the others afterwards.

PostgreSQL: unchanged (its tsvector is a generated column; changing its
expression would rewrite the messages table).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_COLUMNS = "subject, new_text, text, from_address, from_name"
_NEW = ", ".join(f"new.{c}" for c in _COLUMNS.split(", "))
_OLD = ", ".join(f"old.{c}" for c in _COLUMNS.split(", "))
# What helpdesk.store.search counts as a hit, for a row called `row`.
_SEARCHED = "({row}.direction = 'in' OR {row}.kind = 'agent_reply')"

_DROP = [
    "DROP TRIGGER IF EXISTS messages_fts_insert",
    "DROP TRIGGER IF EXISTS messages_fts_delete",
    "DROP TRIGGER IF EXISTS messages_fts_update",
]

_UP = [
    *_DROP,
    f"""CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
        WHEN {_SEARCHED.format(row="new")} BEGIN
        INSERT INTO messages_fts(rowid, {_COLUMNS}) VALUES (new.id, {_NEW});
    END""",
    f"""CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
        WHEN {_SEARCHED.format(row="old")} BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, {_COLUMNS})
        VALUES ('delete', old.id, {_OLD});
    END""",
    # Each half on its own condition: a row leaves or enters the index as it is searched.
    f"""CREATE TRIGGER messages_fts_update AFTER UPDATE OF {_COLUMNS}, direction, kind
        ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, {_COLUMNS})
        SELECT 'delete', old.id, {_OLD} WHERE {_SEARCHED.format(row="old")};
        INSERT INTO messages_fts(rowid, {_COLUMNS})
        SELECT new.id, {_NEW} WHERE {_SEARCHED.format(row="new")};
    END""",
    f"""INSERT INTO messages_fts(messages_fts, rowid, {_COLUMNS})
        SELECT 'delete', id, {_COLUMNS} FROM messages
        WHERE NOT {_SEARCHED.format(row="messages")}""",
]

_DOWN = [
    *_DROP,
    f"""CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, {_COLUMNS}) VALUES (new.id, {_NEW});
    END""",
    f"""CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, {_COLUMNS})
        VALUES ('delete', old.id, {_OLD});
    END""",
    f"""CREATE TRIGGER messages_fts_update AFTER UPDATE OF {_COLUMNS} ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, {_COLUMNS})
        VALUES ('delete', old.id, {_OLD});
        INSERT INTO messages_fts(rowid, {_COLUMNS}) VALUES (new.id, {_NEW});
    END""",
    f"""INSERT INTO messages_fts(rowid, {_COLUMNS})
        SELECT id, {_COLUMNS} FROM messages WHERE NOT {_SEARCHED.format(row="messages")}""",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in _UP:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in _DOWN:
            op.execute(statement)
