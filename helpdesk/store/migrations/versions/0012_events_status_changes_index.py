"""events: a partial index of status changes by time, for the backlog in `stats`

`helpdesk stats` at a terminal, `--json` and `--html` draw the backlog day by
day from the window's status changes. Without an index on them PostgreSQL
read every event (and every ticket) for it: at a million tickets that took
0.9 of the command's 1.7 s. The index holds status changes only, so storing
the other events (most of them) costs nothing more.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_ONLY = sa.text("kind = 'status.changed'")


def upgrade() -> None:
    op.create_index("ix_events_status_changes", "events", ["created_at", "ticket_id"],
                    postgresql_where=_ONLY, sqlite_where=_ONLY)


def downgrade() -> None:
    op.drop_index("ix_events_status_changes", table_name="events")
