"""The usage writer: a process of its own that writes batches of usage rows to the database.

Why a process and not a thread: a batch's transaction holds the interpreter for a millisecond
or more, and every request waiting for the event loop meanwhile waits too; that was most of the
proxy's 1-connection p99 (docs/benchmarks.md). Rows reach the writer over its stdin and each
batch is answered on its stdout, so the proxy learns of every write that failed.

Frames on stdin: a 4-byte big-endian length, then the payload. The first payload is the
database URL, then optionally a newline and the retention in days (``keybroker.retention``:
a thread of the writer deletes raw rows older than that; absent or 0, none); every later
one is a JSON array of rows (each a ``UsageRow`` as an array, its time in ISO 8601),
answered by one byte: ``1`` written, ``0`` failed (the writer has logged why). The writer
exits at the end of its stdin, so it never outlives the broker.

Where Linux lets the broker take it back out again, the writer runs under ``SCHED_IDLE``: on a
machine whose cores are all busy, a writer at normal priority delays a woken request by its
scheduler slice (milliseconds); an idle-class one gives way at once. If a batch waits more
than ``PATIENCE`` seconds (cores never idle), the writer is lifted to normal priority until
that batch is written, so rows cannot pile up.

Each batch adds to the daily rollups (``keybroker.rollups``) in the transaction that inserts
its rows, so totals never count a row that was not written, nor miss one that was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import IO, NamedTuple

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from keybroker import rollups
from keybroker.models import Grant, UsageRecord
from keybroker.retention import Pruner

logger = logging.getLogger("keybroker.usage")


class UsageRow(NamedTuple):
    """One request's usage: a UsageRecord's columns, sent to the writer as a JSON array."""

    grant_id: str
    user_id: str
    at: datetime
    method: str
    path: str
    model: str
    status: int
    input_tokens: int
    output_tokens: int
    cost_microusd: int
    latency_ms: int
    unknown_model: bool
    interrupted: bool


WRITTEN, FAILED = b"1", b"0"
PATIENCE = 0.5
SCHED_IDLE: int | None = getattr(os, "SCHED_IDLE", None)  # Linux only
CAP_SYS_NICE = 23


class WriterGone(Exception):
    """The writer process ended before answering; the batch may or may not have been written."""


def write_rows(engine: Engine, rows: list[UsageRow]) -> None:
    """One transaction: the rows, their days' rollups, and each grant's last use."""
    try:
        _insert(engine, rows)
    except IntegrityError:
        # A grant deleted with its owner's account while its last request was in flight has
        # nowhere to put its rows; the other grants' rows must not be lost with them.
        with engine.connect() as conn:
            alive = set(
                conn.scalars(
                    select(col(Grant.id)).where(col(Grant.id).in_({row.grant_id for row in rows}))
                )
            )
        kept = [row for row in rows if row.grant_id in alive]
        if len(kept) == len(rows):
            raise
        logger.warning("usage of %d request(s) of deleted grants dropped", len(rows) - len(kept))
        if kept:
            _insert(engine, kept)


def _insert(engine: Engine, rows: list[UsageRow]) -> None:
    last: dict[str, datetime] = {}
    for row in rows:
        last[row.grant_id] = max(row.at, last.get(row.grant_id, row.at))
    with engine.begin() as conn:
        conn.execute(insert(UsageRecord), [row._asdict() for row in rows])
        rollups.add(conn, rows)
        for grant_id, at in last.items():
            conn.execute(update(Grant).where(col(Grant.id) == grant_id).values(last_used_at=at))


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    payload = stream.read(int.from_bytes(head, "big"))
    return payload if len(payload) == int.from_bytes(head, "big") else None


def may_leave_idle() -> bool:
    """Whether a process of ours put under SCHED_IDLE may be lifted back out of it.

    sched(7): leaving SCHED_IDLE needs CAP_SYS_NICE, or an RLIMIT_NICE that allows nice 0 (20).
    Without either (a non-root service, or root in a container without CAP_SYS_NICE) the
    writer stays at normal priority: slower answers beat rows piling up behind a busy machine.
    """
    if SCHED_IDLE is None:
        return False
    caps = re.search(r"^CapEff:\s*([0-9a-f]+)$", Path("/proc/self/status").read_text(), re.M)
    if caps and int(caps.group(1), 16) >> CAP_SYS_NICE & 1:
        return True
    return resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20


def set_idle(pid: int, idle: bool) -> None:
    assert SCHED_IDLE is not None
    policy = SCHED_IDLE if idle else os.SCHED_OTHER
    with contextlib.suppress(ProcessLookupError):  # it has just ended; the next write notices
        os.sched_setscheduler(pid, policy, os.sched_param(0))


def normal_priority() -> None:
    """Take the calling thread out of SCHED_IDLE, where it may leave it.

    For the retention thread: a batch holds SQLite's write lock, and an idle-class thread can
    be kept off a busy CPU for long with the lock held while every other writer waits. At
    normal priority a batch ends within its few milliseconds, and its pauses keep its share
    of a CPU small. sched(7): with pid 0 the call applies to the calling thread only.
    """
    if SCHED_IDLE is not None and os.sched_getscheduler(0) == SCHED_IDLE and may_leave_idle():
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


class WriterProcess:
    """The broker's side: starts the writer when first needed, and again if it has ended."""

    def __init__(self, database_url: str, retention_days: int = 0) -> None:
        self._url = database_url
        self.retention_days = retention_days
        self._proc: asyncio.subprocess.Process | None = None
        self.idle_class = may_leave_idle()
        self.lifted = 0  # batches that waited PATIENCE and were written at normal priority

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def _running(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            # The writer has no use for the broker's secrets; it gets the database URL on stdin.
            env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBROKER_")}
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
            if self.idle_class:
                set_idle(self._proc.pid, True)
            assert self._proc.stdin is not None
            self._proc.stdin.write(frame(f"{self._url}\n{self.retention_days}".encode()))
        return self._proc

    async def write(self, rows: list[UsageRow]) -> bool:
        """True once the rows are committed, False if the writer could not write them."""
        proc = await self._running()
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write(frame(json.dumps(rows, default=datetime.isoformat).encode()))
            await proc.stdin.drain()
            answer = await self._answer(proc, proc.stdout)
        except (BrokenPipeError, ConnectionResetError):
            answer = b""
        if not answer:
            # Its exit may not have been reaped yet: forget it, so the next write starts anew.
            self._proc = None
            if proc.returncode is None:
                proc.kill()
            raise WriterGone
        return answer == WRITTEN

    async def _answer(self, proc: asyncio.subprocess.Process, out: asyncio.StreamReader) -> bytes:
        if not self.idle_class:
            return await out.read(1)
        reading = asyncio.ensure_future(out.read(1))
        done, _ = await asyncio.wait({reading}, timeout=PATIENCE)
        if done:
            return reading.result()
        # No core was idle for PATIENCE seconds: write this batch at normal priority.
        self.lifted += 1
        set_idle(proc.pid, False)
        try:
            return await reading
        finally:
            set_idle(proc.pid, True)

    async def close(self, timeout: float = 10) -> None:
        """End the writer's input and wait for it to finish the batch it may be writing."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        if self.idle_class:
            set_idle(proc.pid, False)  # shutting down: finish promptly
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def main() -> None:
    from keybroker.db import make_engine

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    first = read_frame(stdin)
    if first is None:
        return
    url, _, days = first.decode().partition("\n")
    engine = make_engine(url)
    pruner = Pruner(engine, int(days or 0))
    pruning = threading.Thread(target=_prune, args=(pruner,), name="retention", daemon=True)
    if pruner.days:
        pruning.start()
    while (payload := read_frame(stdin)) is not None:
        # JSON carried each row's time as ISO 8601 text.
        rows = [
            row._replace(at=datetime.fromisoformat(str(row.at)))
            for row in map(UsageRow._make, json.loads(payload))
        ]
        try:
            write_rows(engine, rows)
            answer = WRITTEN
        except Exception:
            logger.exception("could not record usage for %d request(s)", len(rows))
            answer = FAILED
        stdout.write(answer)
        stdout.flush()
    pruner.stop()
    if pruning.is_alive():
        pruning.join(timeout=10)
    engine.dispose()


def _prune(pruner: Pruner) -> None:
    normal_priority()
    pruner.loop()


if __name__ == "__main__":
    main()
