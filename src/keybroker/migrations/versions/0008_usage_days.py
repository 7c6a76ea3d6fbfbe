"""usage rollups per grant and UTC day, built from the existing rows in batches

The rollups are built in short transactions of BATCH usage ids each (autocommit), so a
database with millions of rows upgrades without holding SQLite's write lock, or a lock on
PostgreSQL's usage table, for more than a fraction of a second at a time; the index the
request log's keyset needs on PostgreSQL is built CONCURRENTLY. The upgrade catches up with
rows written meanwhile; rows that a broker of the previous version writes after it ended
are not rolled up, so restart every instance on the new version after `keybroker db upgrade`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BATCH = 20_000
COUNTS = ("requests", "input_tokens", "output_tokens", "cost_microusd")


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if "usage_days" not in sa.inspect(bind).get_table_names():
        op.create_table(
            "usage_days",
            sa.Column("grant_id", sa.String(length=32), nullable=False),
            sa.Column("day", sa.Date(), nullable=False),
            sa.Column("user_id", sa.String(length=32), nullable=False),
            *(sa.Column(name, sa.BigInteger(), nullable=False) for name in COUNTS),
            sa.ForeignKeyConstraint(["grant_id"], ["grants.id"], ondelete="CASCADE"),
            sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("grant_id", "day"),
        )
        op.create_index("ix_usage_days_user_id_day", "usage_days", ["user_id", "day"])
    with op.get_context().autocommit_block():
        if postgres:
            # The request log's keyset (grant_id, id < before) in index order; SQLite's index
            # on grant_id holds the rowid (id) already.
            op.execute(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_usage_grant_id_id "
                "ON usage (grant_id, id)"
            )
        _build_rollups(postgres)


def _build_rollups(postgres: bool) -> None:
    bind = op.get_bind()
    day = "(at AT TIME ZONE 'UTC')::date" if postgres else "date(at)"
    added = ", ".join(f"{name} = usage_days.{name} + excluded.{name}" for name in COUNTS)
    # Built from this module's constants only; the ids are bound parameters.
    batch = sa.text(
        f"INSERT INTO usage_days (grant_id, day, user_id, {', '.join(COUNTS)}) "  # noqa: S608
        f"SELECT grant_id, {day}, user_id, count(*), sum(input_tokens), sum(output_tokens), "
        f"sum(cost_microusd) FROM usage WHERE id >= :low AND id < :high "
        f"GROUP BY grant_id, {day}, user_id "
        f"ON CONFLICT (grant_id, day) DO UPDATE SET {added}"
    )
    # A run cut short (each batch commits) left part of the sums: start again from nothing.
    bind.execute(sa.text("DELETE FROM usage_days"))
    low = bind.execute(sa.text("SELECT min(id) FROM usage")).scalar()
    if low is None:
        return
    while True:
        high = bind.execute(sa.text("SELECT max(id) FROM usage")).scalar()
        if high is None or low > high:
            return
        while low <= high:
            bind.execute(batch, {"low": low, "high": low + BATCH})
            low += BATCH


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_usage_grant_id_id", table_name="usage")
    op.drop_index("ix_usage_days_user_id_day", table_name="usage_days")
    op.drop_table("usage_days")
