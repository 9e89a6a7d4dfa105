"""mailbox health and IMAP fetch failures

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from alembic import op
import sqlalchemy as sa



revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mailbox_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("health", sa.String(length=30), nullable=False,
                                      server_default="ok"))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("problem_since", sa.DateTime(timezone=True), nullable=True))

    op.create_table(
        "imap_fetch_failures",
        sa.Column("mailbox", sa.String(length=200), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("mailbox", "uidvalidity", "uid",
                                name=op.f("pk_imap_fetch_failures")),
    )


def downgrade() -> None:
    op.drop_table("imap_fetch_failures")
    with op.batch_alter_table("mailbox_state", schema=None) as batch_op:
        batch_op.drop_column("problem_since")
        batch_op.drop_column("last_error")
        batch_op.drop_column("health")
