"""device authorization grant (RFC 8628): device clients and device codes

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("device", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "device_codes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("device_code_hash", sa.String(length=64), nullable=False),
        sa.Column("user_code_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=300), nullable=False),
        sa.Column("scope", sa.String(length=500), nullable=False),
        sa.Column("hints", sa.String(length=2000), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("interval", sa.Integer(), nullable=False),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=True),
        sa.Column("choices", sa.String(length=4000), nullable=True),
        sa.Column("consent_key", sa.String(length=64), nullable=True),
        sa.Column("sealed_key", sa.String(length=4000), nullable=True),
        sa.Column("grant_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_code_hash"),
        sa.UniqueConstraint("user_code_hash"),
    )
    with op.batch_alter_table("device_codes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_device_codes_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("device_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_codes_expires_at"))
    op.drop_table("device_codes")
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.drop_column("device")
