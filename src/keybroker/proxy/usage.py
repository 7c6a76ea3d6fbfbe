"""Usage: token counts read from JSON answers and SSE streams, recorded off the hot path.

The proxy hands each finished request to ``Recorder.record``; a background task writes them
in batches, and the in-memory monthly spend used for budget checks moves at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from keybroker.models import UsageRecord, utcnow
from keybroker.proxy.limits import Limits
from keybroker.proxy.pricing import PriceTable
from keybroker.proxy.usage_writer import UsageRow, WriterGone, WriterProcess

logger = logging.getLogger("keybroker.usage")
USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
BATCH = 500
# Rows wait this long to be written together: at low load one write per request would cost
# more than the request itself. Budget checks use the in-memory spend, which moves at once.
GATHER_SECONDS = 0.05


def month_of(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def tokens_of(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    inp = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    out = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return (inp if isinstance(inp, int) else 0), (out if isinstance(out, int) else 0)


@dataclass
class Seen:
    """What one response told us about its usage."""

    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    reported: bool = False
    deltas: int = 0  # content chunks seen, for an estimate when a stream is cut short

    def take(self, data: dict[str, Any]) -> None:
        usage = data.get("usage")
        if usage is None and isinstance(data.get("response"), dict):
            # Responses API streams: response.completed carries response.usage.
            usage = data["response"].get("usage")
            data = data["response"]
        if isinstance(usage, dict):
            self.input_tokens, self.output_tokens = tokens_of(usage)
            self.reported = True
        model = data.get("model")
        if isinstance(model, str) and model:
            self.model = model


def json_usage(body: bytes, seen: Seen) -> None:
    if not USAGE_OBJECT.search(body):
        return
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return
    if isinstance(data, dict):
        seen.take(data)


def event_usage(event: bytes, seen: Seen) -> bool:
    """Read one SSE event; True when it is the usage-only chunk of a chat stream."""
    if b'"delta"' in event:
        seen.deltas += 1
    if not USAGE_OBJECT.search(event):
        return False
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                data = json.loads(line[5:])
            except (ValueError, UnicodeDecodeError):
                return False
            if isinstance(data, dict):
                seen.take(data)
                return data.get("choices") == [] and data.get("object") == "chat.completion.chunk"
    return False


class Finished(NamedTuple):
    """One proxied request, as the recorder needs it (a tuple: cheap on the hot path)."""

    grant_id: str
    user_id: str
    method: str
    path: str
    model: str
    status: int
    input_tokens: int
    output_tokens: int
    latency_ms: int
    interrupted: bool
    at: datetime


class Recorder:
    def __init__(self, engine: Engine, limits: Limits, prices: PriceTable) -> None:
        self.limits = limits
        self.prices = prices
        self.writer = WriterProcess(engine.url.render_as_string(hide_password=False))
        # A plain list and two events rather than an asyncio.Queue: appending is all the hot
        # path does; the writer takes everything gathered at once.
        self._rows: list[UsageRow] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.write_errors = 0

    @property
    def pending(self) -> int:
        return len(self._rows)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-recorder")

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
        await self.writer.close()

    async def flush(self) -> None:
        """Wait until every row recorded so far is written (or its write failed)."""
        await self._idle.wait()

    async def record(self, done: Finished) -> None:
        cost = self.prices.cost(done.model, done.input_tokens, done.output_tokens)
        if cost.microusd:
            await self.limits.add_spent(done.grant_id, month_of(done.at), cost.microusd)
        # A NamedTuple: cheap to build here, and a plain JSON array on the way to the writer.
        self._rows.append(
            UsageRow(
                grant_id=done.grant_id,
                user_id=done.user_id,
                at=done.at,
                method=done.method,
                path=done.path[:300],
                model=done.model[:100],
                status=done.status,
                input_tokens=done.input_tokens,
                output_tokens=done.output_tokens,
                cost_microusd=cost.microusd,
                latency_ms=done.latency_ms,
                unknown_model=not cost.known and bool(done.model),
                interrupted=done.interrupted,
            )
        )
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(GATHER_SECONDS)
            self._wake.clear()
            rows, self._rows = self._rows, []
            for start in range(0, len(rows), BATCH):
                await self._write(rows[start : start + BATCH])
            if not self._rows:
                self._idle.set()

    async def _write(self, batch: list[UsageRow]) -> None:
        try:
            try:
                written = await self.writer.write(batch)
            except WriterGone:
                # The writer ended (killed, crashed): a new one takes the batch, so nothing is
                # lost. Had it committed and died before answering, the rows count twice; that
                # window is one byte written to a pipe.
                logger.warning("the usage writer ended; starting another")
                written = await self.writer.write(batch)
        except Exception:
            logger.exception("could not record usage for %d request(s)", len(batch))
            written = False
        if not written:
            self.write_errors += 1


def monthly_spend(engine: Engine, grant_id: str, now: datetime | None = None) -> int:
    start = month_start(now or utcnow())
    with Session(engine) as db:
        total = db.execute(
            select(func.coalesce(func.sum(UsageRecord.cost_microusd), 0)).where(
                col(UsageRecord.grant_id) == grant_id, col(UsageRecord.at) >= start
            )
        ).scalar_one()
    return int(total)
