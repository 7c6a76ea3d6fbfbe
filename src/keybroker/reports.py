"""Numbers for the settings page, all from recorded usage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, func, select
from sqlmodel import Session, col

from keybroker.models import AuditEvent, UsageRecord, utcnow
from keybroker.proxy.usage import month_start

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
    start = month_start(now or utcnow())
    with Session(engine) as db:
        rows = db.execute(
            select(
                col(UsageRecord.grant_id),
                func.count(),
                func.sum(UsageRecord.input_tokens),
                func.sum(UsageRecord.output_tokens),
                func.sum(UsageRecord.cost_microusd),
            )
            .where(col(UsageRecord.user_id) == user_id, col(UsageRecord.at) >= start)
            .group_by(col(UsageRecord.grant_id))
        ).all()
    return {r[0]: Totals(int(r[1]), int(r[2] or 0), int(r[3] or 0), int(r[4] or 0)) for r in rows}


def daily(
    engine: Engine, user_id: str, days: int = 30, now: datetime | None = None
) -> dict[str, list[Day]]:
    """Per grant, one entry per day for the last ``days`` days (zeros included)."""
    today = (now or utcnow()).date()
    first = today - timedelta(days=days - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=(now or utcnow()).tzinfo)
    day_of = func.date(UsageRecord.at)
    with Session(engine) as db:
        rows = db.execute(
            select(
                col(UsageRecord.grant_id), day_of, func.sum(UsageRecord.cost_microusd), func.count()
            )
            .where(col(UsageRecord.user_id) == user_id, col(UsageRecord.at) >= start)
            .group_by(col(UsageRecord.grant_id), day_of)
        ).all()
    found: dict[str, dict[date, tuple[int, int]]] = {}
    for grant_id, day, cost, count in rows:
        day = day if isinstance(day, date) else date.fromisoformat(str(day)[:10])
        found.setdefault(grant_id, {})[day] = (int(cost or 0), int(count))
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


def requests_page(engine: Engine, grant_id: str, page: int) -> tuple[list[UsageRecord], bool]:
    return _page_of(
        select(UsageRecord)
        .where(col(UsageRecord.grant_id) == grant_id)
        .order_by(col(UsageRecord.id).desc()),
        engine,
        page,
    )


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
