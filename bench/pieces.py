"""What each special piece of the relay gains now: an interleaved A/B of keybroker with and
without it (issue #24's rule: a special mechanism that no longer gains 10% on some benchmark
target is removed, but not on noisy evidence alone).

Arms, each a `keybroker serve` of its own on the same canned upstream, taken in turn within
every round so that the machine's slow and fast spells fall on all of them:
- **all**: the default (server_protocol.JoinedWritesProtocol with send_now, http1 client);
- **stock server**: `KEYBROKER_SERVER_PROTOCOL=stock` (uvicorn's own protocol: no joined
  writes, no send_now);
- **aiohttp client**: `KEYBROKER_UPSTREAM_CLIENT=aiohttp` (the stand-by client, instead of
  http1).
``python -m bench --pieces-only`` runs just this; ``make bench`` runs it after the main table.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ARMS = {
    "all": {},
    "stock server": {"KEYBROKER_SERVER_PROTOCOL": "stock"},
    "aiohttp client": {"KEYBROKER_UPSTREAM_CLIENT": "aiohttp"},
}
PIECES = {  # the piece, and the arm that lacks it
    "server protocol subclass + send_now (server_protocol.py, send_now.py)": "stock server",
    "own HTTP/1.1 client (proxy/http1.py) instead of aiohttp": "aiohttp client",
}


@dataclass
class Figures:
    p50_1: list[float] = field(default_factory=list)  # ms, one connection
    rps_32: list[float] = field(default_factory=list)
    cpu_us_32: list[float] = field(default_factory=list)  # broker CPU per request
    first_ms: list[float] = field(default_factory=list)
    transit_ms: list[float] = field(default_factory=list)


def start_arms(tmp: Path, upstream: str, env: dict[str, str]) -> dict[str, tuple[str, str, int]]:
    """Each arm's broker: (base URL, token, pid); their processes are left to the caller."""
    from bench.__main__ import free_port, seed, wait_port

    started: dict[str, tuple[str, str, int]] = {}
    tmp.mkdir()
    for arm, extra in ARMS.items():
        port = free_port()
        data = tmp / arm.replace(" ", "-")
        data.mkdir()
        kb_env = {
            **{k: v for k, v in env.items() if not k.startswith("KEYBROKER_")},
            **extra,
            "KEYBROKER_ENV": "production",
            "KEYBROKER_PUBLIC_URL": f"https://localhost:{port}",
            "KEYBROKER_SECRET_KEY": "s" * 48,
            "KEYBROKER_MASTER_KEYS": "k1:" + "QUFB" * 10 + "QUE=",
            "KEYBROKER_DATA_DIR": str(data),
            "KEYBROKER_UPSTREAM_URL": upstream,
        }
        token = seed(kb_env)
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "keybroker", "serve", "--port", str(port)),
                *("--log-level", "warning", "--no-access-log"),
            ],
            cwd=data,
            env=kb_env,
        )
        wait_port(port)
        started[arm] = (f"http://127.0.0.1:{port}/v1", token, proc.pid)
    return started


def measure(
    arms: dict[str, tuple[str, str, int]], direct: str, rounds: int, seconds: int, streams: int
) -> tuple[dict[str, Figures], Figures]:
    from bench.__main__ import cpu_seconds, stream_once, wrk

    figures = {arm: Figures() for arm in arms}
    base = Figures()
    for url, token, _ in arms.values():  # warm up
        wrk(url, token, 8, 2)
    for _ in range(rounds):
        base.p50_1.append(wrk(direct, "sk-direct", 1, seconds).p50)
        for arm, (url, token, pid) in arms.items():
            figures[arm].p50_1.append(wrk(url, token, 1, seconds).p50)
            before = cpu_seconds(pid)
            result = wrk(url, token, 32, seconds)
            figures[arm].rps_32.append(result.rps)
            spent = cpu_seconds(pid) - before
            figures[arm].cpu_us_32.append(spent * 1e6 / max(1.0, result.rps * seconds))

    async def stream_all() -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(streams):
                run = await stream_once(session, direct, "sk-direct", 64, 20)
                base.first_ms.append(run.first_ms)
                base.transit_ms += run.transits_ms
                for arm, (url, token, _) in arms.items():
                    run = await stream_once(session, url, token, 64, 20)
                    figures[arm].first_ms.append(run.first_ms)
                    figures[arm].transit_ms += run.transits_ms

    asyncio.run(stream_all())
    return figures, base


def render(figures: dict[str, Figures], base: Figures, rounds: int, streams: int) -> str:
    med = statistics.median
    rows = []
    for arm, f in figures.items():
        rows.append(
            f"| {arm} | {med(f.p50_1) - med(base.p50_1):.3f} ms | {med(f.rps_32):,.0f} | "
            f"{med(f.cpu_us_32):.0f} µs | {med(f.first_ms) - med(base.first_ms):.3f} ms | "
            f"{med(f.transit_ms) - med(base.transit_ms):.3f} ms |"
        )
    gains = []
    full = figures["all"]
    for piece, without in PIECES.items():
        w = figures[without]

        def added(values: list[float], direct: list[float]) -> float:
            return med(values) - med(direct)

        def less(ours: float, theirs: float) -> str:
            return f"{(theirs - ours) / theirs:+.0%}" if theirs > 0 else "—"

        cells = [
            less(added(full.p50_1, base.p50_1), added(w.p50_1, base.p50_1)),
            f"{med(full.rps_32) / med(w.rps_32) - 1:+.0%}",
            less(med(full.cpu_us_32), med(w.cpu_us_32)),
            less(added(full.first_ms, base.first_ms), added(w.first_ms, base.first_ms)),
            less(added(full.transit_ms, base.transit_ms), added(w.transit_ms, base.transit_ms)),
        ]
        gains.append(f"| {piece} | " + " | ".join(cells) + " |")
    return "\n".join(
        [
            "## What each special piece gains (interleaved A/B)",
            "",
            f"{rounds} rounds of wrk (one connection, then 32) and {streams} 64-chunk streams "
            "per arm, every arm in turn within each round, on the same canned upstream; "
            "medians. The machine is shared with other developers' test runs, so single "
            "figures move by tens of percent between runs: read the gains as the direction "
            "and rough size, and compare several runs before removing anything.",
            "",
            "| arm | 1 conn: added p50 | 32 conn: req/s | 32 conn: broker CPU per request "
            "| stream: added first chunk | stream: added transit per chunk |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Gain of each piece (its arm against the arm without it; positive is better: less "
            "added latency or CPU, more throughput):",
            "",
            "| piece | 1 conn: added p50 | 32 conn: req/s | CPU per request | first chunk "
            "| transit per chunk |",
            "|---|---|---|---|---|---|",
            *gains,
            "",
        ]
    )
