"""``make bench``: proxy overhead, streaming and memory, against a direct arm and a floor.

Starts a canned upstream, a bare aiohttp passthrough (the floor) and keybroker in its
production configuration (a real grant and token, rate limit and usage recording on), and,
where this machine's PostgreSQL and Redis answer, keybroker's scale-out configuration beside
them (the same on PostgreSQL and Redis: a budget reserved and settled and the rate checked in
Redis on every request); then measures them interleaved with wrk and an asyncio stream client,
and writes docs/benchmarks.md. Loopback only; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/14"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass
class Arms:
    direct: str
    keybroker: str
    floor: str
    token: str
    broker_pid: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    scaleout: str = ""  # "" when PostgreSQL or Redis is not there
    scaleout_token: str = ""
    scaleout_pid: int = 0
    database: str = ""  # the scale-out arm's own PostgreSQL database, dropped at the end

    @property
    def names(self) -> tuple[str, ...]:
        return ("direct", "keybroker", "scaleout", "floor") if self.scaleout else WRK_ARMS

    def auth(self, arm: str) -> str:
        return {"keybroker": self.token, "scaleout": self.scaleout_token}.get(arm, "sk-direct")

    def url(self, arm: str) -> str:
        return {
            "direct": self.direct,
            "keybroker": self.keybroker,
            "scaleout": self.scaleout,
            "floor": self.floor,
        }[arm]

    def pid(self, arm: str) -> int:
        return {
            "direct": self.procs[0].pid,
            "floor": self.procs[1].pid,
            "scaleout": self.scaleout_pid,
        }.get(arm, self.broker_pid)


WRK_ARMS = ("direct", "keybroker", "floor")


def start(tmp: Path) -> Arms:
    # KEYBROKER_SERVER_PROTOCOL=stock benchmarks uvicorn's own protocol (docs/benchmarks.md).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KEYBROKER_") or k == "KEYBROKER_SERVER_PROTOCOL"
    }
    up_port, floor_port, kb_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.upstream", "--port", str(up_port)], cwd=ROOT, env=env
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.floor",
                "--port",
                str(floor_port),
                "--upstream",
                upstream,
            ],
            cwd=ROOT,
            env=env,
        ),
    ]
    kb_env = {
        **env,
        "KEYBROKER_ENV": "production",
        "KEYBROKER_PUBLIC_URL": f"https://localhost:{kb_port}",
        "KEYBROKER_SECRET_KEY": secrets.token_urlsafe(48),
        "KEYBROKER_MASTER_KEYS": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "KEYBROKER_DATA_DIR": str(tmp),
        "KEYBROKER_UPSTREAM_URL": upstream,
    }
    token = seed(kb_env)
    broker = serve(kb_env, kb_port, tmp)
    procs.append(broker)
    for port in (up_port, floor_port, kb_port):
        wait_port(port)
    arms = Arms(
        upstream,
        f"http://127.0.0.1:{kb_port}/v1",
        f"http://127.0.0.1:{floor_port}/v1",
        token,
        broker.pid,
        procs,
    )
    database = new_database()
    if database:
        so_port = free_port()
        (tmp / "scaleout").mkdir()
        so_env = {
            **kb_env,
            "KEYBROKER_PUBLIC_URL": f"https://localhost:{so_port}",
            "KEYBROKER_DATA_DIR": str(tmp / "scaleout"),
            "KEYBROKER_DATABASE_URL": f"{POSTGRES}/{database}",
            "KEYBROKER_REDIS_URL": REDIS,
        }
        arms.database = database
        arms.scaleout_token = seed(so_env, budget_usd=10_000)
        scaleout = serve(so_env, so_port, tmp / "scaleout")
        procs.append(scaleout)
        wait_port(so_port)
        arms.scaleout, arms.scaleout_pid = f"http://127.0.0.1:{so_port}/v1", scaleout.pid
    return arms


def serve(env: dict[str, str], port: int, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
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
        cwd=cwd,
        env=env,
    )


def new_database() -> str:
    """A fresh PostgreSQL database for the scale-out arm, or "" without PostgreSQL or Redis."""
    import redis
    from sqlalchemy import create_engine, text

    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
        admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
        name = f"kb_bench_{secrets.token_hex(6)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:  # no server: the arm is left out, and the report says so
        print(f"scale-out arm left out: {type(exc).__name__}: {exc}", file=sys.stderr)
        return ""
    return name


def drop_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def seed(env: dict[str, str], budget_usd: int = 1_000_000) -> str:
    """A real account, vault entry and grant, made with keybroker's own code."""
    code = """
import sys
from keybroker import db, grants, provider_keys
from keybroker.crypto import tokens
from keybroker.crypto.keyring import KeyRing
from keybroker.models import User
from keybroker.settings import load_settings
s = load_settings(env_file=None)
engine = db.make_engine(s.database_url)
db.upgrade(engine)
ring = KeyRing.parse(s.master_keys)
with db.session_scope(engine) as session:
    session.add(User(id="bench", webauthn_handle="bench", name="bench"))
provider_keys.save_key(engine, ring, user_id="bench", key="sk-bench-owner-key-0000000000")
token = tokens.new_token(tokens.new_grant_id())
choices = grants.Choices(scopes=("chat", "models"), models=(), budget_usd=BUDGET,
                         rpm=1, days=30)
grants.create_grant(engine, ring, token=token, user_id="bench", client_id="bench",
                    client_name="bench", web_origin=None, choices=choices,
                    provider_key="sk-bench-owner-key-0000000000")
# A rate limit that is checked on every request but never reached during the run.
from sqlalchemy import update
from keybroker.models import Grant
with db.session_scope(engine) as session:
    session.execute(update(Grant).values(rpm=100_000_000))
print(str(token))
"""
    out = subprocess.run(
        [sys.executable, "-c", code.replace("BUDGET", str(budget_usd))],
        env=env,
        cwd=env["KEYBROKER_DATA_DIR"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class WrkResult:
    rps: float
    p50: float
    p99: float
    errors: int
    cpu_us: float = 0.0  # CPU time of the arm's own process per request: steadier than req/s


def family(pid: int) -> list[int]:
    """The process and its children (keybroker's usage writer is one)."""
    children = []
    with contextlib.suppress(FileNotFoundError):  # a child that has just ended
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    return [pid, *(p for c in children for p in family(c))]


def proc_file(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except FileNotFoundError:
        return ""  # a child that has just ended


def cpu_seconds(pid: int) -> float:
    total = 0
    for member in family(pid):
        if stat := proc_file(member, "stat"):
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wrk(url: str, auth: str, connections: int, seconds: int) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\n'
            f'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {auth}"\n'
        )
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            script.name,
            f"{url}/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    os.unlink(script.name)

    def pct(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        return float(match.group(1)) * UNITS[match.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(g) for g in match.groups())
    return WrkResult(rps, pct("50"), pct("99"), errors)


@dataclass
class StreamRun:
    first_ms: float
    gaps_ms: list[float]
    transits_ms: list[float]  # each chunk after the first: the upstream's send stamp to arrival
    bundled: int
    chunks: int


SENT = re.compile(rb'"bench_sent": ([0-9.]+)')


async def stream_once(
    session: aiohttp.ClientSession, url: str, auth: str, n: int, pace_ms: int
) -> StreamRun:
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "n_chunks": n,
        "pace_ms": pace_ms,
        "messages": [{"role": "user", "content": "hi"}],
    }
    started = time.perf_counter()
    arrivals: list[float] = []
    transits: list[float] = []
    async with session.post(
        f"{url}/chat/completions", json=body, headers={"authorization": f"Bearer {auth}"}
    ) as response:
        buffer = b""
        async for data in response.content.iter_any():
            now = time.perf_counter()
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if event.startswith(b"data: {") and b'"delta"' in event:
                    if arrivals and (sent := SENT.search(event)):
                        transits.append((now - float(sent[1])) * 1000)
                    arrivals.append(now)
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
    # A chunk held back shows as two events arriving together although paced apart upstream.
    bundled = sum(1 for g in gaps if g < pace_ms / 4)
    return StreamRun((arrivals[0] - started) * 1000, gaps, transits, bundled, len(arrivals))


async def streaming(arms: Arms, runs: int) -> dict[str, list[StreamRun]]:
    results: dict[str, list[StreamRun]] = {"direct": [], "keybroker": [], "floor": []}
    async with aiohttp.ClientSession() as session:
        for _ in range(runs):
            for arm in results:
                results[arm].append(
                    await stream_once(session, arms.url(arm), arms.auth(arm), 64, 20)
                )
    return results


def rss_mb(pid: int) -> float:
    total = 0
    for member in family(pid):
        for line in proc_file(member, "status").splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


async def many_streams(arms: Arms, count: int) -> tuple[int, float, float]:
    peak = rss_mb(arms.broker_pid)
    before = peak
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def one() -> None:
            nonlocal errors
            try:
                run = await stream_once(session, arms.keybroker, arms.token, 64, 100)
                if run.chunks != 64:
                    errors += 1
            except (TimeoutError, aiohttp.ClientError):
                errors += 1

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        while not all(t.done() for t in tasks):
            peak = max(peak, rss_mb(arms.broker_pid))
            await asyncio.sleep(0.1)
        await asyncio.gather(*tasks)
    return errors, before, peak


def p50(values: list[float]) -> float:
    return statistics.median(values)


@dataclass(frozen=True)
class Speed:
    """How fast this machine runs Python, to compare runs made on different machines."""

    loop_s: float  # 10 million empty loop iterations
    json_us: float  # one json.dumps + json.loads of the request body
    round_trip_us: float  # p50 of one byte to another process and back over loopback TCP
    idle_round_trip_us: float  # the same after 5 ms idle, as between a stream's chunks

    @classmethod
    def measure(cls) -> Speed:
        started = time.perf_counter()
        for _ in range(10_000_000):
            pass
        loop_s = time.perf_counter() - started
        body = json.loads(BODY)
        started = time.perf_counter()
        for _ in range(100_000):
            json.loads(json.dumps(body))
        json_us = (time.perf_counter() - started) / 100_000 * 1e6
        return cls(loop_s, json_us, round_trip_us(0, 3000), round_trip_us(0.005, 300))


def round_trip_us(pause: float, count: int) -> float:
    """Every request in the benchmark wakes processes on loopback; some machines of this kind
    do that several times slower than others whose Python runs as fast."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    child = os.fork()  # before any thread or arm exists
    if child == 0:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(1):
            conn.sendall(data)
        os._exit(0)
    with socket.create_connection(listener.getsockname()) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(count):
            time.sleep(pause)
            started = time.perf_counter()
            client.sendall(b"x")
            client.recv(1)
            times.append((time.perf_counter() - started) * 1e6)
    os.waitpid(child, 0)
    listener.close()
    return p50(times[count // 6 :])  # after the connection's warm-up


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--seconds", type=int, default=8, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per arm")
    # A p50 of 15 runs moved by ±0.15 ms between identical runs (bench/NOTES.md); 40 holds.
    parser.add_argument("--stream-runs", type=int, default=40, help="64-chunk streams per arm")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams for RSS")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--piece-rounds", type=int, default=3, help="A/B rounds (bench/pieces.py)")
    parser.add_argument("--piece-seconds", type=int, default=4, help="per A/B wrk run")
    parser.add_argument("--piece-streams", type=int, default=15, help="A/B streams per arm")
    parser.add_argument(
        "--pieces-only", action="store_true", help="only the A/B of the special pieces"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("make bench needs wrk: apt-get install wrk")
    speed = Speed.measure()  # before any arm starts, on an idle machine
    with tempfile.TemporaryDirectory() as tmp:
        arms = start(Path(tmp))
        try:
            report = "" if args.pieces_only else run(arms, args, speed)
            report += pieces_section(arms, args, Path(tmp))
        finally:
            for proc in arms.procs:
                proc.terminate()
            for proc in arms.procs:
                proc.wait(timeout=20)
            if arms.database:
                drop_database(arms.database)
    if not args.pieces_only:
        Path(args.out).write_text(report)
    print(report)


def pieces_section(arms: Arms, args: argparse.Namespace, tmp: Path) -> str:
    """The interleaved A/B of each special piece (bench/pieces.py), on the same upstream."""
    from bench import pieces

    started = pieces.start_arms(tmp / "pieces", arms.direct, dict(os.environ))
    try:
        figures, base = pieces.measure(
            started, arms.direct, args.piece_rounds, args.piece_seconds, args.piece_streams
        )
    finally:
        for _, _, pid in started.values():
            os.kill(pid, 15)
        for _, _, pid in started.values():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return "\n" + pieces.render(figures, base, args.piece_rounds, args.piece_streams)


def run(arms: Arms, args: argparse.Namespace, speed: Speed) -> str:
    for arm in arms.names:  # warm up connections and caches
        wrk(arms.url(arm), arms.auth(arm), 8, 2)
    table: dict[tuple[str, int], list[WrkResult]] = {}
    for _ in range(args.rounds):
        for connections in (1, 32):
            for arm in arms.names:
                before = cpu_seconds(arms.pid(arm))
                result = wrk(arms.url(arm), arms.auth(arm), connections, args.seconds)
                spent = cpu_seconds(arms.pid(arm)) - before
                result.cpu_us = spent * 1e6 / max(1.0, result.rps * args.seconds)
                table.setdefault((arm, connections), []).append(result)

    def agg(arm: str, conns: int) -> WrkResult:
        runs = table[(arm, conns)]
        return WrkResult(
            p50([r.rps for r in runs]),
            p50([r.p50 for r in runs]),
            p50([r.p99 for r in runs]),
            sum(r.errors for r in runs),
            p50([r.cpu_us for r in runs]),
        )

    streams = asyncio.run(streaming(arms, args.stream_runs))
    errors, rss_before, rss_peak = asyncio.run(many_streams(arms, args.streams))
    scaleout = (agg("scaleout", 1), agg("scaleout", 32)) if arms.scaleout else None
    return render(args, agg, streams, errors, rss_before, rss_peak, speed, scaleout)


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    limit: float
    keybroker: float
    floor: float | None = None  # the floor's same figure, where the goal is an absolute one
    at_least: bool = False
    fmt: str = "{:.3f} ms"

    def met(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit

    def cells(self) -> str:
        def judged(value: float) -> str:
            return f"{self.fmt.format(value)} ({'met' if self.met(value) else '**missed**'})"

        floor = "—" if self.floor is None else judged(self.floor)
        return f"| {self.name} | {self.goal} | {judged(self.keybroker)} | {floor} |"


def render(
    args: argparse.Namespace,
    agg: Callable[[str, int], WrkResult],
    streams: dict[str, list[StreamRun]],
    errors: int,
    rss_before: float,
    rss_peak: float,
    speed: Speed,
    scaleout: tuple[WrkResult, WrkResult] | None = None,
) -> str:
    d1, k1, f1 = agg("direct", 1), agg("keybroker", 1), agg("floor", 1)
    d32, k32, f32 = agg("direct", 32), agg("keybroker", 32), agg("floor", 32)
    ttfc = {a: p50([r.first_ms for r in runs]) for a, runs in streams.items()}
    gaps = {a: [g for r in runs for g in r.gaps_ms] for a, runs in streams.items()}
    gap = {a: p50(values) for a, values in gaps.items()}
    gap_mean = {a: statistics.fmean(values) for a, values in gaps.items()}
    transit = {a: p50([t for r in runs for t in r.transits_ms]) for a, runs in streams.items()}
    bundled = sum(r.bundled for r in streams["keybroker"])
    chunks_seen = sum(r.chunks for r in streams["keybroker"])
    targets = [
        Target(
            "1 connection: added latency p50", "≤ 0.5 ms", 0.5, k1.p50 - d1.p50, f1.p50 - d1.p50
        ),
        Target("1 connection: added latency p99", "≤ 2 ms", 2, k1.p99 - d1.p99, f1.p99 - d1.p99),
        Target("1 connection: keybroker minus floor p50", "≤ 0.3 ms", 0.3, k1.p50 - f1.p50),
        Target(
            "32 connections: throughput",
            "≥ 3,000 req/s",
            3000,
            k32.rps,
            f32.rps,
            at_least=True,
            fmt="{:,.0f} req/s",
        ),
        Target(
            "32 connections: share of the floor",
            "≥ 75%",
            0.75,
            k32.rps / f32.rps,
            at_least=True,
            fmt="{:.0%}",
        ),
        Target("32 connections: p99", "≤ 25 ms", 25, k32.p99, f32.p99, fmt="{:.2f} ms"),
        Target(
            "streaming: added time to first chunk p50",
            "≤ 1 ms",
            1,
            ttfc["keybroker"] - ttfc["direct"],
            ttfc["floor"] - ttfc["direct"],
        ),
        Target(
            "streaming: added gap per chunk p50",
            "≤ 0.2 ms",
            0.2,
            transit["keybroker"] - transit["direct"],
            transit["floor"] - transit["direct"],
        ),
        Target("streaming: chunks held back", "0", 0, bundled, fmt=f"{{:.0f}} of {chunks_seen:,}"),
        Target(f"{args.streams:,} concurrent streams: errors", "0", 0, errors, fmt="{:.0f}"),
        Target(
            f"{args.streams:,} concurrent streams: broker RSS peak",
            "≤ 300 MB",
            300,
            rss_peak,
            fmt="{:.0f} MB",
        ),
    ]
    if scaleout is not None:
        s1, s32 = scaleout
        targets += [
            Target(
                "scale-out, 1 connection: added latency p50",
                "≤ 0.5 ms",
                0.5,
                s1.p50 - d1.p50,
                f1.p50 - d1.p50,
            ),
            Target(
                "scale-out, 32 connections: share of the floor",
                "≥ 80%",
                0.8,
                s32.rps / f32.rps,
                at_least=True,
                fmt="{:.0%}",
            ),
        ]
    lines = [
        "# Benchmarks",
        "",
        "Made by `make bench` (`python -m bench`); numbers from one run, all arms interleaved.",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}; speed: {speed.loop_s:.2f} s for 10 million "
        f"empty loop iterations, {speed.json_us:.1f} µs per JSON encode and decode of the "
        f"request body, {speed.round_trip_us:.0f} µs for one byte to another process and back "
        f"over loopback, {speed.idle_round_trip_us:.0f} µs when both have idled 5 ms before it "
        "(p50s; all measured before the arms start: machines of this kind have differed by up "
        "to 3x between sessions, so compare runs by these figures).",
        "- Arms: **direct** = the canned aiohttp upstream itself; **keybroker** = `keybroker "
        "serve` (one worker, `KEYBROKER_ENV=production`, SQLite, a real grant and token, rate "
        "limit checked and usage recorded on every request, access log off); **floor** = a bare "
        "aiohttp passthrough with no checks; **scaleout** = the keybroker arm on PostgreSQL "
        "and Redis (a fresh database, Redis db 14): its grant has a $10,000 budget, and every "
        "request reserves its worst case and takes a rate slot in one Lua script, then settles "
        "in another"
        + ("" if scaleout else " (left out of this run: PostgreSQL or Redis did not answer)")
        + ".",
        f"- Load: wrk, POST /v1/chat/completions with a small JSON body, {args.seconds} s per run,"
        f" {args.rounds} interleaved rounds, medians shown; wrk, the upstream, the floor and "
        "the broker share the 2 cores. CPU µs/request is the CPU time of the arm's own process "
        "(the upstream for direct) divided by the requests it served: the steadiest figure on a "
        "shared machine, and the one that bounds throughput. CPU and RSS include the arm's child "
        "processes (keybroker's usage writer).",
        "",
        "| arm | conns | req/s | p50 ms | p99 ms | errors | CPU µs/request |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [
        ("direct", 1, d1),
        ("keybroker", 1, k1),
        ("floor", 1, f1),
        ("direct", 32, d32),
        ("keybroker", 32, k32),
        ("floor", 32, f32),
    ]
    if scaleout is not None:
        rows[2:2] = [("scaleout", 1, scaleout[0])]
        rows[6:6] = [("scaleout", 32, scaleout[1])]
    for name, conns, r in rows:
        lines.append(
            f"| {name} | {conns} | {r.rps:,.0f} | {r.p50:.3f} | {r.p99:.3f} | {r.errors} "
            f"| {r.cpu_us:.0f} |"
        )
    lines += [
        "",
        f"Streaming: 64 chunks paced 20 ms apart, {len(streams['direct'])} runs per arm; "
        f"time to first chunk p50 direct {ttfc['direct']:.2f} ms, keybroker "
        f"{ttfc['keybroker']:.2f} ms, floor {ttfc['floor']:.2f} ms. Each chunk after the "
        "first, from the upstream's send stamp to its arrival at the client, p50: direct "
        f"{transit['direct']:.3f} ms, keybroker {transit['keybroker']:.3f} ms, floor "
        f"{transit['floor']:.3f} ms; the added gap per chunk is an arm's figure minus "
        "direct's. The gaps between arrivals themselves, p50 (mean): direct "
        f"{gap['direct']:.3f} ({gap_mean['direct']:.3f}) ms, keybroker {gap['keybroker']:.3f} "
        f"({gap_mean['keybroker']:.3f}) ms, floor {gap['floor']:.3f} ({gap_mean['floor']:.3f}) "
        "ms; the upstream paces against the clock, so a delay the proxy adds to every chunk "
        "leaves them unchanged, and their medians differ only by how the timer's jitter is "
        "spread (bench/NOTES.md, seventh session).",
        "",
        f"Memory: {args.streams:,} concurrent streams through keybroker (64 chunks, 100 ms "
        f"apart): RSS {rss_before:.0f} MB before, {rss_peak:.0f} MB at peak, {errors} errors.",
        "",
        "## Targets",
        "",
        f"{sum(t.met(t.keybroker) for t in targets)} of {len(targets)} met. Where a goal is an "
        "absolute figure, the floor's same figure from this run is shown beside keybroker's: "
        "a goal the floor misses too is one this machine cannot reach with a Python relay.",
        "",
        "| target | goal | keybroker | floor |",
        "|---|---|---|---|",
    ]
    lines += [t.cells() for t in targets]
    lines += ["", "Command: `make bench` (options: `python -m bench --help`).", ""]
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
