"""messages.raw becomes the last column on SQLite

SQLite builds a whole row in memory when it writes one, and only a trailing
zeroblob is left out of that build: with `raw` in the middle of `messages`,
storing a 34 MB mail held it in memory about twice more than with `raw` last
(the ingest process grew 3.2x the mail instead of 1.9x; issue 12 item 10).
`helpdesk.store.blobs` writes large values as a zeroblob and then in chunks,
which needs the column last.

The column is moved without rebuilding the table: add a new column (added
columns go last), copy, drop the old one, rename. Rebuilding (create, copy,
drop, rename) would drop `messages` under live foreign keys, and SQLite's
DROP TABLE deletes the rows first, cascading into attachments and events.
Nothing that references `raw` (no index, trigger or view) stands in the way
of DROP COLUMN (SQLite 3.35; 3.25 for RENAME COLUMN). The copy rewrites every
stored mail once: on a big store this upgrade takes a while and needs free
disk about the size of the stored mail. PostgreSQL keeps large values out of
the row (TOAST): nothing to do there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from alembic import op


revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("ALTER TABLE messages ADD COLUMN raw_last BLOB")
    op.execute("UPDATE messages SET raw_last = raw")
    op.execute("ALTER TABLE messages DROP COLUMN raw")
    op.execute("ALTER TABLE messages RENAME COLUMN raw_last TO raw")


def downgrade() -> None:
    # The column's place carries no meaning: nothing to undo.
    pass
