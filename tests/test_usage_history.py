"""Usage history at scale: daily rollups equal the raw rows' sums, pages make a bounded number
of queries whatever the history, the request log pages by keyset, retention deletes only old
raw rows, and a request in flight across midnight at a month's end stays in its month."""

from __future__ import annotations

import random
import re
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, func, insert, select
from sqlmodel import col

from keybroker import reports, rollups
from keybroker.crypto import tokens
from keybroker.db import make_engine, upgrade
from keybroker.models import UsageDay, UsageRecord, utcnow
from keybroker.proxy.usage_writer import UsageRow, write_rows
from keybroker.retention import Pruner
from tests.conftest import database_backend
from tests.live import Live, wait_for

APP_A = "http://127.0.0.1:5555"
APP_B = "http://127.0.0.1:6666"
APP_C = "http://127.0.0.1:7777"


def grant_id(token: str) -> str:
    return tokens.parse_token(token).grant_id


def owner_of(live: Live, gid: str) -> str:
    from keybroker.grants import get_grant

    grant = get_grant(live.ctx.engine, gid)
    assert grant is not None
    return grant.user_id


def one_app(live: Live) -> tuple[httpx.Client, str, str, str]:
    """A new owner's browser, one app's token, its grant id and the owner's id."""
    web, authn = live.owner()
    token = live.grant_for(web, authn, APP_A)
    return web, token, grant_id(token), owner_of(live, grant_id(token))


def bare_grants(engine: Engine, *ids: str) -> None:
    """An owner ``u`` and grants with these ids, as rows only (for tests of storage alone)."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO users (id, webauthn_handle, name, created_at) "
            "VALUES ('u', 'h', 'n', '2026-01-01')"
        )
        for gid in ids:
            conn.exec_driver_sql(
                "INSERT INTO grants (id, user_id, client_id, client_name, scopes, models, "
                "budget_microusd, rpm, expires_at, created_at, secret_hash) "
                f"VALUES ('{gid}', 'u', 'c', 'c', 'chat', '[]', 0, 1, '2030-01-01', "
                "'2026-01-01', 'x')"
            )


def history(
    gid: str, user_id: str, count: int, *, since: datetime, until: datetime, seed: int
) -> list[UsageRow]:
    """``count`` rows spread at random between two moments, with random tokens and costs."""
    rng = random.Random(seed)
    span = (until - since).total_seconds()
    rows = []
    for _ in range(count):
        inp, out = rng.randint(0, 5000), rng.randint(0, 2000)
        rows.append(
            UsageRow(
                gid,
                user_id,
                since + timedelta(seconds=rng.uniform(0, span)),
                "POST",
                "/chat/completions",
                "gpt-4o-mini",
                200,
                inp,
                out,
                rng.randint(0, 3000),
                5,
                False,
                False,
            )
        )
    return rows


def write(engine: Engine, rows: list[UsageRow]) -> None:
    for start in range(0, len(rows), 500):  # as the recorder sends them
        write_rows(engine, rows[start : start + 500])


def raw_sums(engine: Engine, gid: str, since: date) -> dict[date, tuple[int, int, int, int]]:
    """What summing the raw rows gives, per UTC day."""
    found: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    with engine.connect() as conn:
        for at, inp, out, cost in conn.execute(
            select(
                col(UsageRecord.at),
                col(UsageRecord.input_tokens),
                col(UsageRecord.output_tokens),
                col(UsageRecord.cost_microusd),
            ).where(col(UsageRecord.grant_id) == gid)
        ):
            day = rollups.day_of(at)
            if day >= since:
                sums = found[day]
                sums[0] += 1
                sums[1] += inp
                sums[2] += out
                sums[3] += cost
    return {day: (s[0], s[1], s[2], s[3]) for day, s in found.items()}


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        if "OFFSET" in sql.upper() and isinstance(params, tuple | list):
            sql = f"{sql} {params[-1]}"  # SQLite: the offset is the last parameter
        seen.append(sql)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def test_every_figure_equals_the_raw_rows_sum(live: Live) -> None:
    web, authn = live.owner()
    tokens_issued = [live.grant_for(web, authn, app) for app in (APP_A, APP_B, APP_C)]
    gids = [grant_id(t) for t in tokens_issued]
    user_id = owner_of(live, gids[0])
    now = utcnow()
    month = rollups.month_first_day(now)
    month_began = datetime(month.year, month.month, 1, tzinfo=UTC)
    rows: list[UsageRow] = []
    for seed, gid in enumerate(gids[:2]):
        # Last month and this one, edges included: the first and last moments of the month.
        rows += history(gid, user_id, 700, since=now - timedelta(days=45), until=now, seed=seed)
        rows += [
            history(gid, user_id, 1, since=month_began, until=month_began, seed=9)[0],
            history(
                gid,
                user_id,
                1,
                since=month_began - timedelta(microseconds=1),
                until=month_began - timedelta(microseconds=1),
                seed=8,
            )[0],
        ]
    random.Random(3).shuffle(rows)  # batches that mix grants and days
    write(live.ctx.engine, rows)

    totals = reports.month_totals(live.ctx.engine, user_id, now)
    charts = reports.daily(live.ctx.engine, user_id, now=now)
    first_chart_day, _ = rollups.window(now, 30)
    for gid in gids:
        raw = raw_sums(live.ctx.engine, gid, min(month, first_chart_day))
        in_month = [s for day, s in raw.items() if day >= month]
        expected = reports.Totals(*(sum(s[i] for s in in_month) for i in range(4)))
        assert totals.get(gid, reports.Totals()) == expected
        assert rollups.month_spend(live.ctx.engine, gid, now) == expected.cost_microusd
        chart = charts.get(gid, [])
        assert [d.day for d in chart] == (
            [first_chart_day + timedelta(days=i) for i in range(30)] if raw else []
        )
        for d in chart:
            assert (d.requests, d.cost_microusd) == (
                raw.get(d.day, (0, 0, 0, 0))[0],
                raw.get(d.day, (0, 0, 0, 0))[3],
            )
        # /api/grant, from a cold counter (as after a start).
        live.ctx.proxy.limits._spent.clear()  # type: ignore[attr-defined]
        info = httpx.get(
            f"{live.url}/api/grant",
            headers={"authorization": f"Bearer {tokens_issued[gids.index(gid)]}"},
        ).json()
        assert info["spent_this_month_usd"] == expected.cost_microusd / 1_000_000
    # The page shows the same figures.
    page = web.get("/settings").text
    expected_a = totals[gids[0]]
    assert f"{expected_a.input_tokens} tokens in, {expected_a.output_tokens} out" in page
    assert f'<span class="requests">{expected_a.requests}</span>' in page
    assert "calendar month in UTC" in page


def test_pages_make_a_bounded_number_of_queries(live: Live) -> None:
    web, token, gid, user_id = one_app(live)
    now = utcnow()

    def counts() -> tuple[int, int, int]:
        live.ctx.proxy.limits._spent.clear()  # type: ignore[attr-defined]
        live.ctx.proxy.grants.clear()
        with statements(live.ctx.engine) as seen:
            assert web.get("/settings").status_code == 200
            settings = len(seen)
            bearer = {"authorization": f"Bearer {token}"}
            assert httpx.get(f"{live.url}/api/grant", headers=bearer).status_code == 200
            info = len(seen) - settings
            assert web.get(f"/settings/grants/{gid}/requests").status_code == 200
            log = len(seen) - settings - info
        return settings, info, log

    write(
        live.ctx.engine, history(gid, user_id, 10, since=now - timedelta(days=2), until=now, seed=1)
    )
    small = counts()
    write(
        live.ctx.engine,
        history(gid, user_id, 3000, since=now - timedelta(days=80), until=now, seed=2),
    )
    assert counts() == small
    assert small[1] <= 2  # /api/grant: the grant, the month's spend


def test_the_request_log_pages_by_keyset(live: Live) -> None:
    web, _token, gid, user_id = one_app(live)
    now = utcnow()
    write(
        live.ctx.engine,
        history(gid, user_id, 120, since=now - timedelta(days=3), until=now, seed=4),
    )
    ids = [r.id for r in reversed(live.usage(gid))]
    shown: list[int] = []
    url = f"/settings/grants/{gid}/requests"
    pages = 0
    with statements(live.ctx.engine) as seen:
        while url:
            page = web.get(url).text
            pages += 1
            older = re.search(r'href="\?before=(\d+)">Older', page)
            found = reports.requests_page(
                live.ctx.engine, gid, int(url.split("=")[1]) if "before=" in url else None
            )[0]
            shown += [r.id for r in found]  # type: ignore[misc]
            url = f"/settings/grants/{gid}/requests?before={older.group(1)}" if older else ""
    assert pages == 3
    assert shown == ids
    # SQLAlchemy writes "LIMIT ? OFFSET ?" on SQLite with an offset of 0: no row is skipped.
    assert [sql for sql in seen if "OFFSET" in sql.upper() and not sql.endswith(" 0")] == []
    assert "This log goes back to" in page
    assert "listed for 90 days" in page
    # Garbage and hostile values fall back to the newest page.
    for bad in ("-1", "x", "9" * 40, "1e3"):
        assert web.get(f"/settings/grants/{gid}/requests?before={bad}").status_code == 200


def test_retention_deletes_only_old_rows_and_keeps_every_total(live: Live) -> None:
    web, _token, gid, user_id = one_app(live)
    now = utcnow()
    old = history(
        gid, user_id, 300, since=now - timedelta(days=200), until=now - timedelta(days=91), seed=5
    )
    kept = history(gid, user_id, 300, since=now - timedelta(days=89), until=now, seed=6)
    write(live.ctx.engine, sorted(old + kept, key=lambda r: r.at))  # ids in time order
    with live.ctx.engine.connect() as conn:
        before_days = set(conn.execute(select(UsageDay.__table__)).all())  # type: ignore[attr-defined]
    spend = rollups.month_spend(live.ctx.engine, gid, now)
    totals = reports.month_totals(live.ctx.engine, user_id, now)

    pruner = Pruner(live.ctx.engine, 90)
    assert pruner.run_once(now) == 300
    left = live.usage(gid)
    assert len(left) == 300
    assert min(aware(r.at) for r in left) >= now - timedelta(days=90)
    assert sorted(aware(r.at) for r in left) == sorted(r.at for r in kept)
    with live.ctx.engine.connect() as conn:
        assert set(conn.execute(select(UsageDay.__table__)).all()) == before_days  # type: ignore[attr-defined]
    assert rollups.month_spend(live.ctx.engine, gid, now) == spend
    assert reports.month_totals(live.ctx.engine, user_id, now) == totals
    assert pruner.run_once(now) == 0  # nothing more to do
    # The owner's log says how far back it goes.
    page = web.get(f"/settings/grants/{gid}/requests").text
    oldest = min(rollups.day_of(r.at) for r in kept)
    assert f"This log goes back to {oldest.isoformat()}" in page


def test_the_writer_process_applies_retention(live: Live) -> None:
    import asyncio

    from keybroker.proxy.usage import Finished, Recorder

    _web, _token, gid, user_id = one_app(live)
    now = utcnow()
    write(
        live.ctx.engine,
        history(
            gid, user_id, 50, since=now - timedelta(days=40), until=now - timedelta(days=31), seed=7
        ),
    )
    days_before = reports.daily(live.ctx.engine, user_id, days=60, now=now)

    async def run() -> None:
        recorder = Recorder(live.ctx.engine, retention_days=30)
        recorder.start()
        await recorder.record(
            Finished(
                gid,
                user_id,
                "POST",
                "/chat/completions",
                "gpt-4o-mini",
                200,
                1,
                1,
                1,
                1,
                False,
                now,
            )
        )
        await recorder.flush()
        assert wait_for(lambda: len(live.usage(gid)) == 1, timeout=20)
        await recorder.stop()

    asyncio.run(run())
    after = reports.daily(live.ctx.engine, user_id, days=60, now=now)
    # The new request added one to today; the deleted rows' days are still counted.
    assert [d.requests for d in after[gid][:-1]] == [d.requests for d in days_before[gid][:-1]]
    assert after[gid][-1].requests == days_before[gid][-1].requests + 1


@pytest.mark.skipif(
    database_backend() == "postgres", reason="SQLite's write lock: runs in the SQLite pass"
)
def test_retention_never_holds_the_write_lock_long(tmp_path: Any) -> None:
    """While a big backlog is deleted, another writer (a sign-in, a settings change, the usage
    writer) gets SQLite's write lock within 10 ms: each batch is one short transaction."""
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    upgrade(engine)
    bare_grants(engine, "g")
    now = utcnow()
    backlog = history(
        "g", "u", 10_000, since=now - timedelta(days=300), until=now - timedelta(days=100), seed=8
    )
    with engine.begin() as conn:  # raw rows only: this test is about deleting them
        conn.execute(insert(UsageRecord), [row._asdict() for row in backlog])
    pruner = Pruner(engine, 90)
    waits: list[float] = []
    done = threading.Event()
    probe = make_engine(f"sqlite:///{tmp_path / 'r.db'}")

    def prune() -> None:
        try:
            pruner.run_once(now)
        finally:
            done.set()

    thread = threading.Thread(target=prune)
    thread.start()
    while not done.is_set():
        began = time.perf_counter()
        with probe.begin() as conn:
            conn.exec_driver_sql("UPDATE users SET name = 'n' WHERE id = 'u'")
        waits.append(time.perf_counter() - began)
        time.sleep(0.002)
    thread.join()
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(UsageRecord)) == 0
    assert len(pruner.durations) > 20
    assert statistics.median(pruner.durations) <= 0.010
    assert statistics.median(waits) <= 0.010
    assert statistics.quantiles(waits, n=20)[-1] <= 0.010  # the 95th percentile
    probe.dispose()
    engine.dispose()


def test_month_edges_are_utc() -> None:
    last = datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC)
    assert rollups.month_first_day(last) == date(2026, 11, 1)
    assert rollups.month_first_day(last + timedelta(microseconds=1)) == date(2026, 12, 1)
    # 20:00 on 30 November in New York is already 1 December in UTC.
    from zoneinfo import ZoneInfo

    new_york = datetime(2026, 11, 30, 20, tzinfo=ZoneInfo("America/New_York"))
    assert rollups.day_of(new_york) == date(2026, 12, 1)
    assert rollups.month_first_day(new_york) == date(2026, 12, 1)


def test_the_migration_builds_rollups_that_keep_every_total(database_url: str) -> None:
    """A database of the previous schema with rows over several months (more than one batch
    of the migration) upgrades to rollups whose every figure is what the raw rows sum to."""
    from alembic import command

    from keybroker.db import _alembic_config

    engine = make_engine(database_url)
    command.upgrade(_alembic_config(engine), "0007")  # the schema before the rollups
    bare_grants(engine, "g1", "g2")
    now = utcnow()
    rows = history("g1", "u", 25_000, since=now - timedelta(days=120), until=now, seed=10)
    rows += history("g2", "u", 20_000, since=now - timedelta(days=120), until=now, seed=11)
    random.Random(12).shuffle(rows)
    with engine.begin() as conn:
        conn.execute(insert(UsageRecord), [row._asdict() for row in rows])
    upgrade(engine)
    with engine.connect() as conn:
        days = {
            (r.grant_id, r.day): (r.requests, r.input_tokens, r.output_tokens, r.cost_microusd)
            for r in conn.execute(select(UsageDay.__table__))  # type: ignore[attr-defined]
        }
    expected = {
        (gid, day): sums
        for gid in ("g1", "g2")
        for day, sums in raw_sums(engine, gid, date.min).items()
    }
    assert days == expected
    assert sum(s[0] for s in days.values()) == 45_000
    for gid in ("g1", "g2"):
        in_month = [
            s for (g, d), s in expected.items() if g == gid and d >= now.date().replace(day=1)
        ]
        assert rollups.month_spend(engine, gid, now) == sum(s[3] for s in in_month)
    # New writes add to the built rollups.
    write(engine, history("g1", "u", 1, since=now, until=now, seed=13))
    this_month = raw_sums(engine, "g1", now.date().replace(day=1))
    assert rollups.month_spend(engine, "g1", now) == sum(s[3] for s in this_month.values())
    engine.dispose()
