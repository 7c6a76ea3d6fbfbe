"""Daily usage rollups: per grant and UTC day, the requests, tokens and cost of its usage rows.

Month totals, charts and the month's spend are read from here, never summed from the raw rows
(issue 28: at 1,000,000 rows, summing took a second). The usage writer adds each batch in the
transaction that inserts its rows, so a rollup and its rows are committed together or not at
all; retention deletes raw rows and leaves rollups alone.

The budget month is the calendar month in UTC; a request counts on the UTC day of its usage
row's ``at``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col

from keybroker.models import UsageDay, utcnow

COUNTS = ("requests", "input_tokens", "output_tokens", "cost_microusd")


class Usage(Protocol):
    """What a rollup needs of one usage row (a UsageRow or a UsageRecord)."""

    @property
    def grant_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cost_microusd(self) -> int: ...


def day_of(moment: datetime) -> date:
    """The UTC day of a moment (a naive one is taken as UTC, as SQLite hands them back)."""
    return (moment.astimezone(UTC) if moment.tzinfo else moment).date()


def month_first_day(moment: datetime) -> date:
    return day_of(moment).replace(day=1)


def add(conn: Connection, rows: Iterable[Usage]) -> None:
    """Add rows to their days' rollups: one atomic upsert per (grant, day), in key order."""
    sums: dict[tuple[str, date], list[Any]] = {}
    for row in rows:
        key = (row.grant_id, day_of(row.at))
        entry = sums.setdefault(key, [row.user_id, 0, 0, 0, 0])
        entry[1] += 1
        entry[2] += row.input_tokens
        entry[3] += row.output_tokens
        entry[4] += row.cost_microusd
    if not sums:
        return
    # Key order: two writers (two instances) that take the same days' row locks in one order
    # cannot deadlock each other on PostgreSQL.
    values = [
        {"grant_id": g, "day": d, "user_id": e[0], **dict(zip(COUNTS, e[1:], strict=True))}
        for (g, d), e in sorted(sums.items())
    ]
    conn.execute(upsert(conn), values)


def upsert(conn: Connection) -> Any:
    """INSERT ... ON CONFLICT (grant_id, day) DO UPDATE SET n = n + excluded.n.

    The addition happens in the database, under the row's lock, so concurrent writers add
    rather than overwrite (SQLite ≥ 3.24 and PostgreSQL ≥ 9.5 both have this upsert).
    """
    table: Any = UsageDay.__table__  # type: ignore[attr-defined]
    dialect = conn.dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table)
    elif dialect == "sqlite":
        statement = sqlite.insert(table)
    else:  # pragma: no cover - keybroker supports these two (DESIGN.md)
        raise NotImplementedError(f"rollups on {dialect}")
    return statement.on_conflict_do_update(
        index_elements=["grant_id", "day"],
        set_={name: table.c[name] + statement.excluded[name] for name in COUNTS},
    )


def month_spend(engine: Engine, grant_id: str, now: datetime | None = None) -> int:
    """Micro-USD a grant spent in the UTC calendar month of ``now``: at most 31 rollup rows.

    The cold-start value of the month's spend counter (a start, or a counter that expired).
    """
    first = month_first_day(now or utcnow())
    with engine.connect() as conn:
        total = conn.execute(
            select(func.coalesce(func.sum(UsageDay.cost_microusd), 0)).where(
                col(UsageDay.grant_id) == grant_id, col(UsageDay.day) >= first
            )
        ).scalar_one()
    return int(total)


class DayRow(NamedTuple):
    grant_id: str
    day: date
    requests: int
    input_tokens: int
    output_tokens: int
    cost_microusd: int


def days_of(engine: Engine, user_id: str, since: date) -> list[DayRow]:
    """Every rollup of a user's grants from ``since`` on: one query, at most grants times days."""
    columns = [col(UsageDay.grant_id), col(UsageDay.day)]
    columns += [col(getattr(UsageDay, name)) for name in COUNTS]
    with engine.connect() as conn:
        rows = conn.execute(
            select(*columns).where(col(UsageDay.user_id) == user_id, col(UsageDay.day) >= since)
        ).all()
    return [DayRow._make(row) for row in rows]


def window(now: datetime, days: int) -> tuple[date, date]:
    """The first and last day of the ``days`` days ending today (UTC)."""
    today = day_of(now)
    return today - timedelta(days=days - 1), today
