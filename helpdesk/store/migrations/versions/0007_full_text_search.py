"""full-text search over messages

SQLite: an FTS5 external-content table kept in step by triggers, built from
the messages already stored. PostgreSQL: a generated tsvector column with a
GIN index (the ALTER rewrites the messages table once). See
helpdesk/store/search.py for how they are queried.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from alembic import op
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from helpdesk.errors import HelpdeskError

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The columns searched, in the order of the FTS5 table (bm25 weights follow it).
_COLUMNS = "subject, new_text, text, from_address, from_name"
_NEW = ", ".join(f"new.{c}" for c in _COLUMNS.split(", "))
_OLD = ", ".join(f"old.{c}" for c in _COLUMNS.split(", "))

_SQLITE_UP = [
    # External content: the text stays in `messages`; unicode61 keeps diacritics, so
    # Nordic å/ä/ö are letters of their own, as with PostgreSQL's `simple`.
    f"""CREATE VIRTUAL TABLE messages_fts USING fts5(
        {_COLUMNS}, content='messages', content_rowid='id',
        tokenize='unicode61 remove_diacritics 0')""",
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
    # The messages stored before this migration.
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
]

_SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS messages_fts_update",
    "DROP TRIGGER IF EXISTS messages_fts_delete",
    "DROP TRIGGER IF EXISTS messages_fts_insert",
    "DROP TABLE IF EXISTS messages_fts",
]

FTS5_MISSING = (
    "this Python's SQLite library has no FTS5 extension, which helpdesk needs for "
    "`tickets search`; use a Python built with a standard SQLite (Debian, Ubuntu, Fedora, "
    "python.org and Homebrew builds have it), or PostgreSQL"
)


def _pg_vector(lower: str) -> str:
    """The tsvector expression; `lower` wraps a text in the lower-casing to use."""
    sender = ("from_name || ' ' || from_address || ' ' || translate(from_address, '@.-_+', "
              "'     ') || ' ' || split_part(from_address, '@', 2)")
    # Bounded parts of long bodies: a tsvector holds at most 1 MB, and a mail whose text
    # overflowed it would not be stored at all.
    parts = [("subject", "A"), ("left(new_text, 50000)", "B"), (sender, "C"),
             ("left(text, 100000)", "D")]
    return " || ".join(
        f"setweight(to_tsvector('simple'::regconfig, {lower.format(expr)}), '{weight}')"
        for expr, weight in parts
    )


def _require_fts5() -> None:
    bind = op.get_bind()
    try:
        bind.execute(text("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(x)"))
    except OperationalError as exc:
        if "fts5" in str(exc.orig):
            raise HelpdeskError(FTS5_MISSING) from exc
        raise
    bind.execute(text("DROP TABLE temp.fts5_probe"))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _require_fts5()
        for statement in _SQLITE_UP:
            op.execute(statement)
        return
    # ICU lower-cases every script whatever the database's locale (a C-locale database
    # lower-cases ASCII only); without ICU the database's own rules apply.
    icu = bind.execute(text("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'")).first()
    lower = "lower(({}) COLLATE \"und-x-icu\")" if icu else "lower({})"
    op.execute(f"ALTER TABLE messages ADD COLUMN search tsvector "
               f"GENERATED ALWAYS AS ({_pg_vector(lower)}) STORED")
    op.execute("CREATE INDEX ix_messages_search ON messages USING gin (search)")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in _SQLITE_DOWN:
            op.execute(statement)
        return
    op.execute("DROP INDEX IF EXISTS ix_messages_search")
    op.execute("ALTER TABLE messages DROP COLUMN IF EXISTS search")
