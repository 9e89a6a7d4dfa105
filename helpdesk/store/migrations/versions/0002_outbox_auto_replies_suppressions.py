"""Outbox kinds, message classes, auto-reply log, suppressions, store values

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_values",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_store_values")),
    )
    op.create_table(
        "auto_replies",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("ticket_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ticket_id"],
            ["tickets.id"],
            name=op.f("fk_auto_replies_ticket_id_tickets"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auto_replies")),
    )
    with op.batch_alter_table("auto_replies", schema=None) as batch_op:
        batch_op.create_index("ix_auto_replies_address_sent", ["address", "sent_at"], unique=False)

    op.create_table(
        "suppressions",
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("ticket_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ticket_id"],
            ["tickets.id"],
            name=op.f("fk_suppressions_ticket_id_tickets"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_suppressions")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("mail_class", sa.String(length=20), nullable=False, server_default="human")
        )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        # Defaults so that rows queued before this migration stay valid.
        batch_op.add_column(
            sa.Column("kind", sa.String(length=20), nullable=False, server_default="system")
        )
        batch_op.add_column(
            sa.Column("permanent_failures", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("correlation_id", sa.String(length=998), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("correlation_id")
        batch_op.drop_column("permanent_failures")
        batch_op.drop_column("kind")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("mail_class")

    op.drop_table("suppressions")
    with op.batch_alter_table("auto_replies", schema=None) as batch_op:
        batch_op.drop_index("ix_auto_replies_address_sent")

    op.drop_table("auto_replies")
    op.drop_table("store_values")
