"""quarantine decisions: discarded/released, by whom and when, and the released copy

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa


revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.add_column(sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("decided_by", sa.String(length=320), nullable=True))
        batch_op.add_column(
            sa.Column("decision_note", sa.Text(), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column(
                "released_message_row_id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                nullable=True,
            )
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_quarantine_released_message_row_id_messages"),
            "messages",
            ["released_message_row_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index(
            "ix_quarantine_state_decided_at", ["state", "decided_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_index("ix_quarantine_state_decided_at")
        batch_op.drop_constraint(
            batch_op.f("fk_quarantine_released_message_row_id_messages"), type_="foreignkey"
        )
        batch_op.drop_column("released_message_row_id")
        batch_op.drop_column("decision_note")
        batch_op.drop_column("decided_by")
        batch_op.drop_column("decided_at")
