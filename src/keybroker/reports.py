"""Numbers for the settings page: totals and charts from the daily rollups, logs by keyset."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, func, select
from sqlmodel import Session, col

from keybroker import rollups
from keybroker.models import AuditEvent, UsageRecord, utcnow

PAGE = 50


@dataclass(frozen=True)
class Totals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_microusd: int = 0


@dataclass(frozen=True)
class Day:
    day: date
    cost_microusd: int
    requests: int


def month_totals(engine: Engine, user_id: str, now: datetime | None = None) -> dict[str, Totals]:
    """Per grant, this UTC calendar month's totals: one query over at most 31 rows a grant."""
    found: dict[str, list[int]] = {}
    for row in rollups.days_of(engine, user_id, rollups.month_first_day(now or utcnow())):
        sums = found.setdefault(row.grant_id, [0, 0, 0, 0])
        sums[0] += row.requests
        sums[1] += row.input_tokens
        sums[2] += row.output_tokens
        sums[3] += row.cost_microusd
    return {grant_id: Totals(*sums) for grant_id, sums in found.items()}


def daily(
    engine: Engine, user_id: str, days: int = 30, now: datetime | None = None
) -> dict[str, list[Day]]:
    """Per grant, one entry per UTC day for the last ``days`` days (zeros included)."""
    first, _ = rollups.window(now or utcnow(), days)
    found: dict[str, dict[date, tuple[int, int]]] = {}
    for row in rollups.days_of(engine, user_id, first):
        found.setdefault(row.grant_id, {})[row.day] = (row.cost_microusd, row.requests)
    return {
        grant_id: [
            Day(first + timedelta(days=i), *per_day.get(first + timedelta(days=i), (0, 0)))
            for i in range(days)
        ]
        for grant_id, per_day in found.items()
    }


def _page_of(query: Select[Any], engine: Engine, page: int) -> tuple[list[Any], bool]:
    """One page of ``query``'s rows, newest first, and whether an older page exists."""
    with Session(engine) as db:
        rows = list(db.execute(query.offset(page * PAGE).limit(PAGE + 1)).scalars())
    return rows[:PAGE], len(rows) > PAGE


def requests_page(
    engine: Engine, grant_id: str, before: int | None = None
) -> tuple[list[UsageRecord], bool]:
    """Up to PAGE of a grant's requests with ids below ``before``, newest first, and whether
    older ones exist. A keyset: each page costs the same however far back it is (no OFFSET)."""
    query = select(UsageRecord).where(col(UsageRecord.grant_id) == grant_id)
    if before is not None:
        query = query.where(col(UsageRecord.id) < before)
    with Session(engine) as db:
        rows = list(
            db.execute(query.order_by(col(UsageRecord.id).desc()).limit(PAGE + 1)).scalars()
        )
    return rows[:PAGE], len(rows) > PAGE


def oldest_request(engine: Engine, grant_id: str) -> datetime | None:
    """When the grant's oldest kept request was made (older ones were deleted by retention)."""
    with Session(engine) as db:
        first = db.execute(
            select(func.min(UsageRecord.id)).where(col(UsageRecord.grant_id) == grant_id)
        ).scalar_one()
        if first is None:
            return None
        at: datetime = db.execute(
            select(col(UsageRecord.at)).where(col(UsageRecord.id) == first)
        ).scalar_one()
    return at


def activity_page(engine: Engine, user_id: str, page: int) -> tuple[list[AuditEvent], bool]:
    return _page_of(
        select(AuditEvent)
        .where(col(AuditEvent.user_id) == user_id)
        .order_by(col(AuditEvent.id).desc()),
        engine,
        page,
    )


def spend_chart(days: list[Day], *, width: int = 300, height: int = 60) -> str:
    """An inline SVG bar chart of daily spend (no script, no CDN), with a text alternative."""
    peak = max((d.cost_microusd for d in days), default=0) or 1
    bar = width / max(len(days), 1)
    bars = []
    for i, d in enumerate(days):
        h = 0 if d.cost_microusd == 0 else max(1.0, d.cost_microusd / peak * (height - 2))
        bars.append(
            f'<rect x="{i * bar:.1f}" y="{height - h:.1f}" width="{max(bar - 1, 1):.1f}" '
            f'height="{h:.1f}"><title>{d.day.isoformat()}: ${d.cost_microusd / 1e6:.4f}, '
            f"{d.requests} requests</title></rect>"
        )
    total = sum(d.cost_microusd for d in days) / 1e6
    label = (
        f"Spend per day over the last {len(days)} days, ${total:.4f} in all; "
        f"highest day ${peak / 1e6 if peak > 1 else 0:.4f}"
    )
    return (
        f'<svg class="chart" role="img" aria-label="{label}" viewBox="0 0 {width} {height}" '
        f'preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">'
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" class="axis"/>'
        + "".join(bars)
        + "</svg>"
    )
