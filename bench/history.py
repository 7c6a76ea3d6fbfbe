"""``make bench-history``: the owner's pages and a grant's first checks over a long usage history.

Builds the history once per backend and keeps it (SQLite: a file under ``.bench-history/``;
PostgreSQL: the database ``kb_bench_history_<rows>``), at the schema before the rollups
(migration 0007), by SQL alone (a recursive CTE on SQLite, ``generate_series`` on PostgreSQL),
then upgrades it to the current schema: that upgrade builds the daily rollups from the rows
and is timed. Then it starts ``keybroker serve`` on the history again and again and measures:

- ``/settings`` for the owner of every grant (p50 of warm requests, and the first one);
- ``/api/grant``, the first one of a grant after a start (cold caches and spend counter);
- the first proxied request of a grant after a start (against a canned upstream);

and checks the month's spend ``/api/grant`` reports against a SUM over the raw rows.
Writes docs/benchmarks-history.md. Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import Engine, text

from bench.__main__ import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
SECRET = "bench-history-" + "s" * 40
RING = "k1:" + base64.b64encode(b"bench-history-master-key-32byte!").decode()
OWNER_KEY = "sk-bench-owner-key-0000000000"
BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
COLUMNS = (
    "grant_id, user_id, at, method, path, model, status, input_tokens, output_tokens, "
    "cost_microusd, latency_ms, unknown_model, interrupted"
)


@dataclass(frozen=True)
class Plan:
    backend: str
    url: str
    rows: int
    grants: int
    days: int


def plans(args: argparse.Namespace) -> list[Plan]:
    wanted = []
    if args.sqlite_rows:
        path = ROOT / ".bench-history" / f"sqlite-{args.sqlite_rows}.db"
        wanted.append(Plan("SQLite", f"sqlite:///{path}", args.sqlite_rows, 3, 30))
    if args.postgres_rows:
        name = f"kb_bench_history_{args.postgres_rows}"
        wanted.append(Plan("PostgreSQL", f"{POSTGRES}/{name}", args.postgres_rows, 100, 365))
    if args.postgres_rows and args.baseline:  # the same 100 grants, no history at all
        wanted.append(Plan("PostgreSQL", f"{POSTGRES}/kb_bench_history_0", 0, 100, 365))
    return wanted


def broker_env(plan: Plan, port: int, upstream: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBROKER_")}
    env.update(
        {
            "KEYBROKER_ENV": "production",
            "KEYBROKER_PUBLIC_URL": f"https://localhost:{port}",
            "KEYBROKER_SECRET_KEY": SECRET,
            "KEYBROKER_MASTER_KEYS": RING,
            "KEYBROKER_DATABASE_URL": plan.url,
            "KEYBROKER_UPSTREAM_URL": upstream,
            "KEYBROKER_DATA_DIR": str(ROOT / ".bench-history"),
            # Keep the history: retention would delete most of it on the first write.
            "KEYBROKER_USAGE_RETENTION_DAYS": "0",
        }
    )
    return env


def ensure_database(plan: Plan, fresh: bool) -> None:
    if plan.backend == "PostgreSQL":
        from sqlalchemy import create_engine

        admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
        name = plan.url.rsplit("/", 1)[1]
        with admin.connect() as conn:
            if fresh:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}):
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    else:
        path = Path(plan.url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            for stale in path.parent.glob(path.name + "*"):
                stale.unlink()


def built(engine: Engine, plan: Plan) -> bool:
    from keybroker import db

    try:
        with engine.connect() as conn:
            count = conn.scalar(text("SELECT count(*) FROM usage"))
            grants = conn.scalar(text("SELECT count(*) FROM bench_tokens"))
    except Exception:
        return False
    # Each run adds its proxied requests' rows.
    return count >= plan.rows and grants == plan.grants and not db.pending_migrations(engine)


def build(engine: Engine, plan: Plan) -> dict[str, float]:
    """The history at migration 0007, then the upgrade to head (which builds the rollups)."""
    from alembic import command

    from keybroker import db, grants, provider_keys
    from keybroker.crypto import tokens
    from keybroker.crypto.keyring import KeyRing
    from keybroker.models import User

    command.upgrade(db._alembic_config(engine), "0007")
    ring = KeyRing.parse(RING)
    with db.session_scope(engine) as session:
        session.add(User(id="owner", webauthn_handle="owner", name="bench owner"))
    provider_keys.save_key(engine, ring, user_id="owner", key=OWNER_KEY)
    choices = grants.Choices(
        scopes=("chat", "models"), models=(), budget_usd=1_000_000, rpm=1, days=365
    )
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE bench_tokens "
                "(n INTEGER PRIMARY KEY, id VARCHAR(32), token VARCHAR(200))"
            )
        )
    for n in range(plan.grants):
        token = tokens.new_token(tokens.new_grant_id())
        grants.create_grant(
            engine,
            ring,
            token=token,
            user_id="owner",
            client_id=f"https://app{n}.example",
            client_name=f"https://app{n}.example",
            web_origin=None,
            choices=choices,
            provider_key=OWNER_KEY,
        )
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO bench_tokens VALUES (:n, :id, :t)"),
                {"n": n, "id": token.grant_id, "t": str(token)},
            )
    with engine.begin() as conn:  # a rate limit checked on every request, never reached
        conn.execute(text("UPDATE grants SET rpm = 100000000"))
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=plan.days)
    step_us = int((now - start).total_seconds() * 1e6 // max(plan.rows, 1))
    began = time.perf_counter()
    chunk = 1_000_000
    for low in range(0, plan.rows, chunk):
        high = min(plan.rows, low + chunk)
        with engine.begin() as conn:
            if plan.backend == "PostgreSQL":
                # Foreign keys are checked per row by triggers; the bench's grants exist.
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                conn.execute(
                    text(
                        f"INSERT INTO usage ({COLUMNS}) SELECT b.id, 'owner', "
                        ":start + (i::float8 * :step / 1e6) * interval '1 second', 'POST', "
                        "'/chat/completions', 'gpt-4o-mini', 200, 10 + i % 90, 5 + i % 40, "
                        "1 + i % 300, 5, false, false FROM generate_series(:low, :high - 1) "
                        "AS i JOIN bench_tokens b ON b.n = i % :grants"
                    ),
                    {
                        "start": start,
                        "step": step_us,
                        "low": low,
                        "high": high,
                        "grants": plan.grants,
                    },
                )
            else:
                conn.execute(
                    text(
                        "WITH RECURSIVE n(i) AS (SELECT :low UNION ALL SELECT i + 1 FROM n "
                        f"WHERE i < :high - 1) INSERT INTO usage ({COLUMNS}) SELECT b.id, "
                        "'owner', strftime('%Y-%m-%d %H:%M:%S', :start + i * :step / 1000000.0, "
                        "'unixepoch') || '.000000', 'POST', '/chat/completions', 'gpt-4o-mini', "
                        "200, 10 + i % 90, 5 + i % 40, 1 + i % 300, 5, 0, 0 FROM n "
                        "JOIN bench_tokens b ON b.n = i % :grants"
                    ),
                    {
                        "start": int(start.timestamp()),
                        "step": step_us,
                        "low": low,
                        "high": high,
                        "grants": plan.grants,
                    },
                )
        print(f"  {plan.backend}: {high:,} of {plan.rows:,} rows", flush=True)
    rows_seconds = time.perf_counter() - began
    if plan.backend == "PostgreSQL":  # as autovacuum would, before the upgrade reads them
        with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text("VACUUM ANALYZE usage"))
    began = time.perf_counter()
    db.upgrade(engine)
    return {"rows_seconds": rows_seconds, "upgrade_seconds": time.perf_counter() - began}


def session_cookie(engine: Engine) -> str:
    """A signed-in browser session of the owner, made as keybroker's sessions.py makes one."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sessions (id, user_id, created_at, expires_at, verified_at) "
                "VALUES (:id, 'owner', :now, :until, :now)"
            ),
            {
                "id": hashlib.sha256(token.encode()).hexdigest(),
                "now": now,
                "until": now + timedelta(days=1),
            },
        )
    signed = URLSafeTimedSerializer(SECRET, salt="keybroker.session").dumps(token)
    return f"__Host-kb_session={signed}"


def p50(values: list[float]) -> float:
    return statistics.median(values)


def proxy(client: httpx.Client, token: str) -> float:
    """One proxied chat completion; its time in ms."""
    began = time.perf_counter()
    answer = client.post(
        "/v1/chat/completions",
        content=BODY,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    took = (time.perf_counter() - began) * 1000
    assert answer.status_code == 200, answer.text
    return took


def measure(engine: Engine, plan: Plan, restarts: int, runs: int) -> dict[str, object]:
    with engine.connect() as conn:
        tokens = [t for (t,) in conn.execute(text("SELECT token FROM bench_tokens ORDER BY n"))]
        ids = [i for (i,) in conn.execute(text("SELECT id FROM bench_tokens ORDER BY n"))]
    cookie = session_cookie(engine)
    up_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBROKER_")}
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", "--port", str(up_port)], cwd=ROOT, env=env
    )
    wait_port(up_port)
    settings: list[float] = []
    settings_first: list[float] = []
    api_first: list[float] = []
    proxy_first: list[float] = []
    process_first: list[float] = []
    spent: dict[str, int] = {}
    try:
        for r in range(restarts):
            port = free_port()
            broker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "keybroker",
                    "serve",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                cwd=ROOT / ".bench-history",
                env=broker_env(plan, port, f"http://127.0.0.1:{up_port}/v1"),
            )
            try:
                wait_port(port, timeout=120)
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                    # Three grants per start: the first request of the process, then a
                    # grant's first /api/grant and first proxied request in a warm process.
                    first, asked, proxied = ((3 * r + i) % len(tokens) for i in range(3))
                    process_first.append(proxy(client, tokens[first]))
                    # That request started the usage writer (a Python process): let its
                    # start-up, which takes a CPU for a while, end before measuring.
                    time.sleep(3)
                    began = time.perf_counter()
                    info = client.get(
                        "/api/grant", headers={"authorization": f"Bearer {tokens[asked]}"}
                    )
                    api_first.append((time.perf_counter() - began) * 1000)
                    spent[ids[asked]] = round(info.json()["spent_this_month_usd"] * 1_000_000)
                    proxy_first.append(proxy(client, tokens[proxied]))
                    began = time.perf_counter()
                    page = client.get("/settings", headers={"cookie": cookie})
                    settings_first.append((time.perf_counter() - began) * 1000)
                    assert page.status_code == 200, page.text
                    assert "Apps with access" in page.text, page.text
                    for _ in range(runs if r == 0 else 0):
                        began = time.perf_counter()
                        client.get("/settings", headers={"cookie": cookie})
                        settings.append((time.perf_counter() - began) * 1000)
            finally:
                broker.terminate()
                broker.wait(timeout=30)
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    bound = month if plan.backend == "PostgreSQL" else month.strftime("%Y-%m-%d %H:%M:%S")
    with engine.connect() as conn:
        summed = {
            gid: int(
                conn.scalar(
                    text(
                        "SELECT coalesce(sum(cost_microusd), 0) FROM usage "
                        "WHERE grant_id = :g AND at >= :m"
                    ),
                    {"g": gid, "m": bound},
                )
            )
            for gid in spent
        }
        rows = conn.scalar(text("SELECT count(*) FROM usage"))
        this_month = conn.scalar(text("SELECT count(*) FROM usage WHERE at >= :m"), {"m": bound})
        rollups = conn.scalar(text("SELECT count(*) FROM usage_days"))
    return {
        "rows": rows,
        "this_month": this_month,
        "rollups": rollups,
        "settings_p50": p50(settings),
        "settings_first_p50": p50(settings_first),
        "api_first_p50": p50(api_first),
        "proxy_first_p50": p50(proxy_first),
        "process_first_p50": p50(process_first),
        "match": summed == spent,
        "restarts": restarts,
        "runs": runs,
    }


def main() -> None:
    from keybroker import db

    parser = argparse.ArgumentParser(prog="make bench-history")
    parser.add_argument("--sqlite-rows", type=int, default=1_000_000, help="0: skip SQLite")
    parser.add_argument("--postgres-rows", type=int, default=10_000_000, help="0: skip")
    parser.add_argument("--restarts", type=int, default=7, help="broker starts per backend")
    parser.add_argument("--runs", type=int, default=30, help="warm /settings requests")
    parser.add_argument("--rebuild", action="store_true", help="build the history again")
    parser.add_argument(
        "--baseline", action="store_true", help="also PostgreSQL's 100 grants with no usage"
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-history.md"))
    args = parser.parse_args()
    lines = []
    for plan in plans(args):
        ensure_database(plan, fresh=False)
        engine = db.make_engine(plan.url)
        timing: dict[str, float] = {}
        if args.rebuild or not built(engine, plan):
            engine.dispose()
            ensure_database(plan, fresh=True)
            engine = db.make_engine(plan.url)
            print(f"building {plan.rows:,} usage rows on {plan.backend}...", flush=True)
            timing = build(engine, plan)
        print(f"measuring on {plan.backend}...", flush=True)
        result = measure(engine, plan, args.restarts, args.runs)
        engine.dispose()
        made = (
            f"{timing['rows_seconds']:.0f} s rows, {timing['upgrade_seconds']:.0f} s upgrade"
            if timing
            else "kept from an earlier run"
        )
        lines.append(
            f"| {plan.backend} | {result['rows']:,} ({result['this_month']:,} this month) "
            f"over {plan.days} days | {plan.grants} | {result['rollups']:,} | {made} | "
            f"{result['settings_p50']:.1f} ({result['settings_first_p50']:.1f}) | "
            f"{result['api_first_p50']:.1f} | {result['proxy_first_p50']:.1f} "
            f"({result['process_first_p50']:.1f}) | "
            f"{'yes' if result['match'] else 'NO'} |"
        )
        print(lines[-1], flush=True)
    report = "\n".join(
        [
            "# Usage history benchmark",
            "",
            f"Made by `make bench-history` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
            f"({os.cpu_count()} CPUs, shared). Targets (issue #28): /settings ≤ 100 ms p50; "
            "/api/grant and the first proxied request of a grant after a start ≤ 20 ms p50 each.",
            "",
            "The history is built at the schema before the rollups (migration 0007) by SQL "
            "alone, then upgraded: the upgrade builds the daily rollups from the rows, in "
            "batches. Each "
            f"figure is a p50 in ms: /settings over {args.runs} warm requests (in brackets: the "
            f"first request after each of {args.restarts} starts); /api/grant and the proxied "
            "request: the first of a grant (cold grant cache and month's-spend counter) "
            f"after each of {args.restarts} starts of `keybroker serve`, once the process has "
            "served another grant's request (in brackets: the process's very first request, "
            "which also opens the upstream connection and starts the usage writer). "
            '"Match": the month\'s spend /api/grant reported equals a SUM over the raw rows. '
            f"Load average while measuring: {os.getloadavg()[0]:.1f}.",
            "",
            "| database | usage rows | grants | rollup rows | built in | /settings | "
            "/api/grant first | first proxied | match |",
            "|---|---|---|---|---|---|---|---|---|",
            *lines,
            "",
        ]
    )
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
