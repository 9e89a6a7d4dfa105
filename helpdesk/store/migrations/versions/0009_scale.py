"""scale: list indexes, timer deadlines and firings, daemon heartbeats

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

* `tickets list` narrows by one column and orders by (updated_at, id): one
  composite index per filter replaces the single-column ones. On PostgreSQL,
  `--subject` (a substring) is served by a trigram index when the pg_trgm
  extension can be had; without it the filter reads the table.
* `tickets.timer_due_at`: the next time the timer pass must look at a ticket,
  kept stale-on-change by triggers (below) so that no writer can forget it.
* `timer_firings`: a timer fires once per ticket state.
* `daemons`: heartbeats, so that daemons share the mailbox leases fairly.
"""

from alembic import op
import sqlalchemy as sa


revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)
_LIST_INDEXES = {
    "ix_tickets_updated": ["updated_at", "id"],
    "ix_tickets_status_updated": ["status", "updated_at", "id"],
    "ix_tickets_priority_updated": ["priority", "updated_at", "id"],
    "ix_tickets_team_updated": ["team_id", "updated_at", "id"],
    "ix_tickets_assignee_updated": ["assignee_id", "updated_at", "id"],
    "ix_tickets_requester_updated": ["requester_id", "updated_at", "id"],
}
_REPLACED = {
    "ix_tickets_status": "status",
    "ix_tickets_team_id": "team_id",
    "ix_tickets_assignee_id": "assignee_id",
    "ix_tickets_requester_id": "requester_id",
}

# Any change to a ticket that does not itself write timer_due_at, and any tag added
# or removed, makes the deadline stale (1970-01-01): the next timer pass recomputes
# it. Triggers rather than code in each writer: the writers are many (ingest's Core
# statements, the ORM in tickets/actions/relay/timers, raw SQL by an admin) and a
# forgotten one would silently keep a ticket from its timers.
_PG_TRIGGERS = [
    """
    CREATE FUNCTION helpdesk_timer_stale() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.timer_due_at IS NOT DISTINCT FROM OLD.timer_due_at THEN
            NEW.timer_due_at := TIMESTAMPTZ '1970-01-01 00:00:00+00';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER tickets_timer_stale BEFORE UPDATE ON tickets
    FOR EACH ROW EXECUTE FUNCTION helpdesk_timer_stale()
    """,
    """
    CREATE FUNCTION helpdesk_tag_timer_stale() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE tickets SET timer_due_at = TIMESTAMPTZ '1970-01-01 00:00:00+00'
        WHERE id = (CASE WHEN TG_OP = 'DELETE' THEN OLD.ticket_id ELSE NEW.ticket_id END);
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER ticket_tags_timer_stale AFTER INSERT OR DELETE ON ticket_tags
    FOR EACH ROW EXECUTE FUNCTION helpdesk_tag_timer_stale()
    """,
]
# SQLite keeps timestamps as text in SQLAlchemy's format; recursive triggers are off,
# so the inner UPDATE does not fire the trigger again.
_SQLITE_STALE = "'1970-01-01 00:00:00.000000'"
_SQLITE_TRIGGERS = [
    f"""
    CREATE TRIGGER tickets_timer_stale AFTER UPDATE ON tickets
    WHEN NEW.timer_due_at IS OLD.timer_due_at
    BEGIN
        UPDATE tickets SET timer_due_at = {_SQLITE_STALE} WHERE id = NEW.id;
    END
    """,
    f"""
    CREATE TRIGGER ticket_tags_insert_timer_stale AFTER INSERT ON ticket_tags
    BEGIN
        UPDATE tickets SET timer_due_at = {_SQLITE_STALE} WHERE id = NEW.ticket_id;
    END
    """,
    f"""
    CREATE TRIGGER ticket_tags_delete_timer_stale AFTER DELETE ON ticket_tags
    BEGIN
        UPDATE tickets SET timer_due_at = {_SQLITE_STALE} WHERE id = OLD.ticket_id;
    END
    """,
]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    # New tickets start stale; existing ones have no deadline until the first timer
    # pass, which (no stored timer signature yet) marks every ticket a timer could
    # apply to as stale itself.
    op.add_column("tickets", sa.Column("timer_due_at", _WHEN, nullable=True))
    for name, column in _REPLACED.items():
        op.drop_index(name, table_name="tickets")
    for name, columns in _LIST_INDEXES.items():
        op.create_index(name, "tickets", columns, unique=False)
    where = sa.text("timer_due_at IS NOT NULL")
    op.create_index("ix_tickets_timer_due_at", "tickets", ["timer_due_at", "id"], unique=False,
                    postgresql_where=where, sqlite_where=where)
    op.drop_index("ix_ticket_tags_tag", table_name="ticket_tags")
    op.create_index("ix_ticket_tags_tag_ticket", "ticket_tags", ["tag", "ticket_id"],
                    unique=False)

    op.create_table(
        "timer_firings",
        sa.Column("ticket_id", _ID, nullable=False),
        sa.Column("timer", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=200), nullable=False),
        sa.Column("left_state", sa.String(length=200), nullable=True),
        sa.Column("fired_at", _WHEN, nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"],
                                name=op.f("fk_timer_firings_ticket_id_tickets"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("ticket_id", "timer", name=op.f("pk_timer_firings")),
    )
    op.create_table(
        "daemons",
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("pool", sa.String(length=64), nullable=False),
        sa.Column("started_at", _WHEN, nullable=False),
        sa.Column("seen_at", _WHEN, nullable=False),
        sa.Column("expires_at", _WHEN, nullable=False),
        sa.Column("wants_at", _WHEN, nullable=True),
        sa.PrimaryKeyConstraint("holder", name=op.f("pk_daemons")),
    )
    op.create_index(op.f("ix_daemons_expires_at"), "daemons", ["expires_at"], unique=False)

    for statement in _PG_TRIGGERS if dialect == "postgresql" else _SQLITE_TRIGGERS:
        op.execute(statement)
    if dialect == "postgresql":
        _subject_trigrams()


def _subject_trigrams() -> None:
    """A trigram index for `--subject` (lower(subject) LIKE '%...%'), if pg_trgm is there.

    pg_trgm is a trusted extension (PostgreSQL 13+): the database's owner may
    create it. A server without the contrib files, or a user without the right,
    is not an error: the filter still works by reading the table. Not in the
    models: an expression index on one dialect only (autogenerate skips it).
    """
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError:
        return
    op.execute("CREATE INDEX ix_tickets_subject_trgm ON tickets "
               "USING gin (lower(subject) gin_trgm_ops)")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_tickets_subject_trgm")
        op.execute("DROP TRIGGER ticket_tags_timer_stale ON ticket_tags")
        op.execute("DROP FUNCTION helpdesk_tag_timer_stale()")
        op.execute("DROP TRIGGER tickets_timer_stale ON tickets")
        op.execute("DROP FUNCTION helpdesk_timer_stale()")
    else:
        for name in ("ticket_tags_delete_timer_stale", "ticket_tags_insert_timer_stale",
                     "tickets_timer_stale"):
            op.execute(f"DROP TRIGGER {name}")
    op.drop_index(op.f("ix_daemons_expires_at"), table_name="daemons")
    op.drop_table("daemons")
    op.drop_table("timer_firings")
    op.drop_index("ix_ticket_tags_tag_ticket", table_name="ticket_tags")
    op.create_index("ix_ticket_tags_tag", "ticket_tags", ["tag"], unique=False)
    op.drop_index("ix_tickets_timer_due_at", table_name="tickets")
    for name in _LIST_INDEXES:
        op.drop_index(name, table_name="tickets")
    for name, column in _REPLACED.items():
        op.create_index(name, "tickets", [column], unique=False)
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_column("timer_due_at")
