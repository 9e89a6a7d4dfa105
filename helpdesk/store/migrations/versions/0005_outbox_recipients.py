"""outbox: per-recipient state, attempts, subject; relay state

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

Rows that are still to be sent (pending) or failed get one recipient row per
envelope address in the row's state, so the sender and `outbox retry` work on
them as on new rows. Sent rows of the past keep no recipient rows: they are
shown from `envelope_to` (`helpdesk.delivery.outbox.recipient_views`).
"""

from alembic import op
import sqlalchemy as sa


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.Text(), nullable=True))
    op.create_table(
        "outbox_recipients",
        sa.Column("id", ID, nullable=False),
        sa.Column("outbox_id", ID, nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("permanent_failures", sa.Integer(), nullable=False),
        sa.Column("last_reply", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["outbox_id"], ["outbox.id"],
            name=op.f("fk_outbox_recipients_outbox_id_outbox"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_recipients")),
        sa.UniqueConstraint("outbox_id", "address", name=op.f("uq_outbox_recipients_outbox_id")),
    )
    op.create_table(
        "outbox_attempts",
        sa.Column("id", ID, nullable=False),
        sa.Column("outbox_id", ID, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["outbox_id"], ["outbox.id"],
            name=op.f("fk_outbox_attempts_outbox_id_outbox"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_attempts")),
    )
    with op.batch_alter_table("outbox_attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_attempts_outbox_id"), ["outbox_id"],
                              unique=False)
    op.create_table(
        "relay_state",
        sa.Column("relay", sa.String(length=300), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("problem", sa.String(length=50), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("relay", name=op.f("pk_relay_state")),
    )
    _backfill()


def _backfill() -> None:
    bind = op.get_bind()
    outbox = sa.table(
        "outbox",
        sa.column("id", ID), sa.column("envelope_to", sa.JSON()), sa.column("state", sa.String()),
        sa.column("attempts", sa.Integer()), sa.column("permanent_failures", sa.Integer()),
        sa.column("last_error", sa.Text()), sa.column("message_id", sa.String()),
        sa.column("subject", sa.Text()),
    )
    recipients = sa.table(
        "outbox_recipients",
        sa.column("outbox_id", ID), sa.column("address", sa.String()),
        sa.column("state", sa.String()), sa.column("attempts", sa.Integer()),
        sa.column("permanent_failures", sa.Integer()), sa.column("last_reply", sa.Text()),
    )
    rows = bind.execute(
        sa.select(outbox.c.id, outbox.c.envelope_to, outbox.c.state, outbox.c.attempts,
                  outbox.c.permanent_failures, outbox.c.last_error)
        .where(outbox.c.state != "sent")
    ).all()
    values = [
        {"outbox_id": row.id, "address": address, "state": row.state,
         "attempts": row.attempts, "permanent_failures": row.permanent_failures,
         "last_reply": row.last_error}
        for row in rows
        for address in dict.fromkeys(row.envelope_to or [])
    ]
    if values:
        bind.execute(recipients.insert(), values)
    # The subject of mail on a ticket is on its message row.
    messages = sa.table("messages", sa.column("message_id", sa.String()),
                        sa.column("subject", sa.Text()), sa.column("direction", sa.String()))
    subject = (
        sa.select(messages.c.subject)
        .where(messages.c.message_id == outbox.c.message_id, messages.c.direction == "out")
        .limit(1)
        .scalar_subquery()
    )
    bind.execute(sa.update(outbox).values(subject=subject))


def downgrade() -> None:
    op.drop_table("relay_state")
    with op.batch_alter_table("outbox_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_attempts_outbox_id"))
    op.drop_table("outbox_attempts")
    op.drop_table("outbox_recipients")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("subject")
