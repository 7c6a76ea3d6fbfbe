"""passkey key slots: vault format 2 (content key + slots), strict custody

Existing vault entries stay format 1 (the key under a master key) and are moved to format 2
the next time the owner saves the key or confirms with a passkey.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vault_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("format", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("content", sa.String(length=4000), nullable=True))
        batch_op.add_column(
            sa.Column("strict", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.alter_column("sealed", existing_type=sa.String(length=4000), nullable=True)
        batch_op.alter_column("kid", existing_type=sa.String(length=32), nullable=True)
    op.create_table(
        "key_slots",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("passkey_id", sa.String(length=32), nullable=False),
        sa.Column("wrapped", sa.String(length=2000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["passkey_id"], ["passkeys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("passkey_id"),
    )
    with op.batch_alter_table("key_slots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_key_slots_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("key_slots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_key_slots_user_id"))
    op.drop_table("key_slots")
    with op.batch_alter_table("vault_entries", schema=None) as batch_op:
        batch_op.alter_column("kid", existing_type=sa.String(length=32), nullable=False)
        batch_op.alter_column("sealed", existing_type=sa.String(length=4000), nullable=False)
        batch_op.drop_column("strict")
        batch_op.drop_column("content")
        batch_op.drop_column("format")
