"""Usage: token counts read from JSON answers and SSE streams, recorded off the hot path.

The proxy hands each finished request, its cost settled (spend.py), to ``Recorder.record``; a
background task writes them in batches. Usage is read from answers of any size: JSON answers
from their tail (``Tail``), streams event by event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine

from keybroker.proxy.pricing import Tokens
from keybroker.proxy.usage_writer import UsageRow, WriterGone, WriterProcess

logger = logging.getLogger("keybroker.usage")
USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([A-Za-z0-9._:/-]{1,100})"')
DECODER = json.JSONDecoder()
USAGE_CHUNKS = ("chat.completion.chunk", "text_completion")
BATCH = 500
# Rows wait this long to be written together: at low load one write per request would cost
# more than the request itself. Budget checks use the in-memory spend, which moves at once.
GATHER_SECONDS = 0.05


def month_of(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def tokens_of(usage: dict[str, Any]) -> Tokens:
    """Chat's prompt/completion names, the Responses, images and transcription input/output
    names, and the details each splits them by (cached, audio, image tokens)."""
    inp = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    out = usage.get("completion_tokens", usage.get("output_tokens", 0))
    details: Any = (
        usage.get("prompt_tokens_details")
        or usage.get("input_tokens_details")
        or usage.get("input_token_details")  # transcriptions spell it so
        or {}
    )
    out_details: Any = (
        usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    )
    if not isinstance(details, dict):
        details = {}
    if not isinstance(out_details, dict):
        out_details = {}
    return Tokens(
        input=_count(inp),
        cached=_count(details.get("cached_tokens")),
        audio_input=_count(details.get("audio_tokens")),
        image_input=_count(details.get("image_tokens")),
        output=_count(out),
        audio_output=_count(out_details.get("audio_tokens")),
    )


@dataclass
class Seen:
    """What one response told us about its usage."""

    model: str = ""
    tokens: Tokens = field(default_factory=Tokens)
    reported: bool = False  # token usage arrived
    seconds: float = 0.0  # audio duration an answer reported (transcriptions)
    deltas: int = 0  # content chunks relayed, for an estimate when a stream is cut short
    status: str = ""  # a Responses object's status
    response_id: str = ""
    tool_calls: dict[str, int] = field(default_factory=dict)

    @property
    def input_tokens(self) -> int:
        return self.tokens.input

    @property
    def output_tokens(self) -> int:
        return self.tokens.output

    def take(self, data: dict[str, Any]) -> None:
        usage = data.get("usage")
        if usage is None and isinstance(data.get("response"), dict):
            # Responses API streams: response.completed / incomplete / failed carry
            # response.usage (and the created event a null one).
            data = data["response"]
            usage = data.get("usage")
        self.take_usage(usage)
        if isinstance(data.get("duration"), (int, float)) and not self.seconds:
            self.seconds = max(0.0, float(data["duration"]))  # verbose_json transcriptions
        model = data.get("model")
        if isinstance(model, str) and model:
            self.model = model[:100]
        if data.get("object") == "response":
            if isinstance(data.get("id"), str):
                self.response_id = data["id"][:100]
            if isinstance(data.get("status"), str):
                self.status = data["status"]
            output = data.get("output")
            if isinstance(output, list):
                counts: dict[str, int] = {}
                for item in output:
                    kind = item.get("type") if isinstance(item, dict) else None
                    if isinstance(kind, str) and kind.endswith("_call"):
                        counts[kind] = counts.get(kind, 0) + 1
                self.tool_calls = counts

    def take_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        if usage.get("type") == "duration":  # transcriptions billed by the second
            seconds = usage.get("seconds")
            if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
                self.seconds = max(0.0, float(seconds))
            return
        self.tokens = tokens_of(usage)
        self.reported = True


class Tail:
    """The first and last bytes of an answer of any size: usage is read from its end (where
    every OpenAI object puts it) and the model and id from its start, never skipped for size
    and never holding more than ``HEAD + TAIL`` bytes."""

    HEAD = 16 * 1024
    TAIL = 256 * 1024

    def __init__(self) -> None:
        self.head = b""
        self.chunks: list[bytes] = []
        self.kept = 0
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if len(self.head) < self.HEAD:
            self.head += chunk[: self.HEAD - len(self.head)]
        self.chunks.append(chunk)
        self.kept += len(chunk)
        while self.kept - len(self.chunks[0]) >= self.TAIL:
            self.kept -= len(self.chunks.pop(0))

    def read(self, seen: Seen) -> None:
        tail = b"".join(self.chunks)
        if self.size == len(tail):  # the whole answer
            json_usage(tail, seen)
            return
        # The last usage key: the top-level usage ends every OpenAI object, and text in a
        # string cannot fake the key (its quotes are escaped there).
        found = None
        for found in USAGE_OBJECT.finditer(tail):  # noqa: B007
            continue
        if found is not None:
            try:
                usage, _ = DECODER.raw_decode(tail[found.end() - 1 :].decode("utf-8", "replace"))
            except ValueError:
                usage = None
            seen.take_usage(usage)
        if not seen.model and (model := MODEL_FIELD.search(self.head)):
            seen.model = model.group(1).decode("ascii", "replace")[:100]


def json_usage(body: bytes, seen: Seen) -> None:
    if b'"usage"' not in body and b'"duration"' not in body:
        return  # nothing to read (a background response's is "usage": null, still read)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return
    if isinstance(data, dict):
        seen.take(data)


def event_usage(event: bytes, seen: Seen) -> bool:
    """Read one SSE event; True when it is the usage-only chunk of a chat or completions
    stream (the one keybroker may have asked for)."""
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
                return data.get("choices") == [] and data.get("object") in USAGE_CHUNKS
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
    cost_microusd: int
    latency_ms: int
    interrupted: bool  # cut, timed out or failed mid-way: its cost is an estimate
    at: datetime
    unknown_model: bool = False


class Recorder:
    def __init__(self, engine: Engine, *, retention_days: int = 0) -> None:
        self.writer = WriterProcess(
            engine.url.render_as_string(hide_password=False), retention_days
        )
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
                cost_microusd=done.cost_microusd,
                latency_ms=done.latency_ms,
                unknown_model=done.unknown_model,
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
