"""Spend reservations and rate limits as units: GCRA in integers against an exact model of
it (both backends, every rate from 1 to 10,000 a minute), admission under concurrency, leases
of dead workers, what each route reserves, and usage read from answers of any size."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from fractions import Fraction
from typing import Any, TypeVar

import pytest
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.proxy.limits import (
    LEASE_MS,
    MINUTE_MS,
    Ask,
    Decision,
    Limits,
    MemoryLimits,
    admission,
    gcra,
)
from keybroker.proxy.pricing import PriceTable, PriceTableError, Tokens
from keybroker.proxy.redis_limits import RedisLimits
from keybroker.proxy.spend import CostUnknown, NotPriced, Spend, estimate_tokens, route_kind
from keybroker.proxy.usage import Seen, Tail, event_usage
from tests.conftest import REDIS
from tests.net import require_service
from tests.upstream import english_tokens

T = TypeVar("T")
PRICES = PriceTable.load()
MONTH = "2026-12"
START = 1_790_000_000_000  # ms since 1970, as Redis TIME would give


class Reference:
    """GCRA with exact fractions: the rate as specified, with no rounding anywhere."""

    def __init__(self, rpm: int) -> None:
        self.interval = Fraction(MINUTE_MS, rpm)
        self.tat: Fraction | None = None

    def hit(self, now: int) -> tuple[bool, int]:
        tat = max(self.tat if self.tat is not None else Fraction(now), Fraction(now))
        allow_at = tat - MINUTE_MS + self.interval
        if now < allow_at:
            return False, math.ceil(allow_at - now)
        self.tat = tat + self.interval
        return True, 0


gaps = st.lists(
    st.one_of(st.just(0), st.integers(0, 50), st.integers(0, 5_000), st.integers(0, 120_000)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(rpm=st.integers(1, 10_000), steps=gaps)
def test_integer_gcra_is_exact_for_every_rate(rpm: int, steps: list[int]) -> None:
    reference = Reference(rpm)
    tat, rem, now = 0, 0, START
    for gap in steps:
        now += gap
        allowed, new_tat, new_rem, wait = gcra(now, tat, rem, rpm)
        assert (allowed, wait) == reference.hit(now)
        if allowed:
            tat, rem = new_tat, new_rem
            assert reference.tat == tat + Fraction(rem, rpm)


@settings(max_examples=40, deadline=None)
@given(rpm=st.integers(1, 10_000))
def test_a_burst_of_rpm_then_the_steady_rate(rpm: int) -> None:
    now = [START / 1000]
    limits = MemoryLimits(clock=lambda: now[0])
    burst = [limits.check("g", rpm).allowed for _ in range(rpm + 1)]
    assert burst == [True] * rpm + [False]
    # A minute later exactly rpm more fit again (the due time moved one interval per request).
    now[0] += 60
    assert sum(limits.check("g", rpm).allowed for _ in range(rpm + 1)) == rpm


def redis_run(scenario: Callable[[RedisLimits, list[float]], Awaitable[T]]) -> T:
    """Run a scenario against the real Redis with a clock of the test's own."""
    require_service("Redis", "127.0.0.1", 6379)

    async def run() -> T:
        client = redis.asyncio.Redis.from_url(REDIS)
        clock = [START / 1000]
        limits = RedisLimits(client, prefix=f"kbtest{id(clock)}", clock=lambda: clock[0])
        try:
            return await scenario(limits, clock)
        finally:
            keys = [k async for k in client.scan_iter(f"{limits.prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    return asyncio.run(run())


@pytest.mark.redis
@settings(max_examples=60, deadline=None)
@given(rpm=st.integers(1, 10_000), steps=gaps)
def test_redis_gcra_matches_the_exact_rate_for_every_rate(rpm: int, steps: list[int]) -> None:
    async def scenario(limits: RedisLimits, clock: list[float]) -> None:
        reference = Reference(rpm)
        now = START
        await limits.load_spent("g", MONTH, 0)
        for i, gap in enumerate(steps):
            now += gap
            clock[0] = now / 1000
            # Both of the backend's scripts: the proxy's (rate with reservation) and the
            # rate alone (sign-in attempts); they keep one state.
            if i % 2:
                decision = await limits.admit("g", rpm, MONTH, 10**9, Ask())
            else:
                decision = await limits.hit("g", rpm)
            allowed, wait = reference.hit(now)
            assert decision.allowed == allowed
            if not allowed:
                assert decision.retry_after == max(1, math.ceil(wait / 1000))

    redis_run(scenario)


@pytest.mark.redis
def test_redis_rate_of_45_a_minute_works() -> None:
    # 60,000 / 45 ms is not whole: once a fractional PX made every request a 503.
    async def scenario(limits: RedisLimits, clock: list[float]) -> list[Decision]:
        await limits.load_spent("g", MONTH, 0)
        return [await limits.admit("g", 45, MONTH, 10**9, Ask(5, 1)) for _ in range(46)]

    decisions = redis_run(scenario)
    assert [d.allowed for d in decisions] == [True] * 45 + [False]
    assert decisions[-1].retry_after == 2  # 1.33 s, rounded up


def test_admission_rules() -> None:
    assert admission(100, 0, 0, Ask(30, 1)) == 30
    assert admission(100, 0, 90, Ask(30, 1)) is None  # does not fit beside others
    assert admission(100, 80, 0, Ask(30, 1)) == 20  # alone: what is left
    assert admission(100, 80, 0, Ask(30, 25)) is None  # even its input does not fit
    assert admission(100, 100, 0, Ask(0, 0)) is None  # spent: nothing more, free or not
    assert admission(100, 99, 0, Ask(0, 0)) == 0


async def twenty_at_once(limits: Limits) -> list[Decision]:
    await limits.load_spent("g", MONTH, 0)
    return list(
        await asyncio.gather(
            *(limits.admit("g", 10_000, MONTH, 10_000, Ask(3_000, 10)) for _ in range(20))
        )
    )


def test_twenty_parallel_admissions_against_a_budget_for_three_in_memory() -> None:
    decisions = asyncio.run(twenty_at_once(MemoryLimits()))
    assert sum(d.allowed for d in decisions) == 3
    assert all(d.over_budget for d in decisions if not d.allowed)


@pytest.mark.redis
def test_twenty_parallel_admissions_against_a_budget_for_three_in_redis() -> None:
    async def scenario(limits: RedisLimits, clock: list[float]) -> tuple[list[Decision], Any]:
        decisions = await twenty_at_once(limits)
        return decisions, await limits.state("g", MONTH)

    decisions, state = redis_run(scenario)
    assert sum(d.allowed for d in decisions) == 3
    assert state == (0, 9_000)


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_settling_moves_spend_and_a_dead_workers_reservation_expires(backend: str) -> None:
    async def scenario(limits: Limits, clock: list[float]) -> list[Any]:
        await limits.load_spent("g", MONTH, 1_000)
        first = await limits.admit("g", 10_000, MONTH, 10_000, Ask(4_000, 10))
        second = await limits.admit("g", 10_000, MONTH, 10_000, Ask(4_000, 10))
        seen: list[Any] = [await limits.state("g", MONTH)]
        await limits.settle("g", MONTH, first.reservation, 2_500)
        await limits.settle("g", MONTH, first.reservation, 0)  # twice: the second is a no-op
        seen.append(await limits.state("g", MONTH))
        # The second's worker dies: nothing settles it; its lease ends.
        assert not (await limits.admit("g", 10_000, MONTH, 10_000, Ask(4_000, 9_000))).allowed
        clock[0] += LEASE_MS / 1000 + 1
        third = await limits.admit("g", 10_000, MONTH, 10_000, Ask(4_000, 10))
        seen.append(await limits.state("g", MONTH))
        assert second.allowed
        assert third.reservation is not None
        return seen

    if backend == "redis":
        states = redis_run(scenario)
    else:
        clock = [START / 1000]
        states = asyncio.run(scenario(MemoryLimits(clock=lambda: clock[0]), clock))
    assert states == [(1_000, 8_000), (3_500, 4_000), (3_500, 4_000)]


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_background_charge_is_released_once(backend: str) -> None:
    async def scenario(limits: Limits, clock: list[float]) -> list[int | None]:
        await limits.hold("resp_1", "g", 700)
        return [
            await limits.release("resp_1", "other-grant"),
            await limits.release("resp_1", "g"),
            await limits.release("resp_1", "g"),
        ]

    if backend == "redis":
        found = redis_run(scenario)
    else:
        found = asyncio.run(scenario(MemoryLimits(), [0.0]))
    assert found == [None, 700, None]


ENGLISH = (
    "The monthly budget an owner sets on the consent screen is a promise that an app cannot "
    "drain their account. When several requests arrive at the same moment, each of them must "
    "reserve what it may cost before it is sent, and settle to its real cost when it ends. "
)


def test_input_estimate_is_conservative_and_within_a_quarter_for_english() -> None:
    for repeat in (1, 10, 1_000):
        text = ENGLISH * repeat
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
        estimate, truth = estimate_tokens(body.encode()), english_tokens(text)
        assert truth <= estimate <= 1.25 * truth + 25, (estimate, truth)
    cjk = "預算" * 1000  # 2,000 characters, about 2,000-3,000 tokens
    assert estimate_tokens(cjk.encode()) >= 3_000


def plan(path: str, body: dict[str, Any] | None = None, **form: list[str]) -> Any:
    spend = Spend(MemoryLimits(), PRICES, None)  # type: ignore[arg-type]
    raw = json.dumps(body).encode() if body is not None else b"x" * 1_200_000
    return spend.plan("POST", path, raw, body, form or None)


def test_what_each_route_reserves() -> None:
    chat = plan("/chat/completions", {"model": "gpt-4o", "messages": [], "max_tokens": 1000})
    assert 10_000 <= chat.ask.amount <= 10_200  # 1,000 output tokens at $10/1M, plus input
    # No limit named: the model's own maximum output.
    assert (
        plan("/chat/completions", {"model": "gpt-4o-mini", "messages": []}).ask.amount
        >= 16_384 * 0.6
    )
    assert plan("/responses", {"model": "o1-pro", "input": "x"}).ask.amount >= 100_000 * 600
    following = plan("/responses", {"model": "gpt-4o", "input": "x", "previous_response_id": "r"})
    assert following.ask.amount >= 128_000 * 2.5  # earlier turns are input too
    assert plan("/embeddings", {"model": "text-embedding-3-small", "input": "abc"}).ask.amount < 10
    images = plan(
        "/images/generations",
        {"model": "dall-e-3", "prompt": "a cat", "n": 2, "size": "1792x1024", "quality": "hd"},
    )
    assert images.units == 2 * 120_000
    auto = plan("/images/generations", {"model": "gpt-image-1", "prompt": "a cat"})
    assert auto.units == 250_000  # "auto" is reserved as the dearest it can be
    speech = plan("/audio/speech", {"model": "tts-1", "input": "hello world", "voice": "alloy"})
    assert (speech.units, speech.ask.amount) == (11 * 15, 11 * 15)
    heard = plan("/audio/transcriptions", None, model=["whisper-1"])
    assert heard.units == 10 * 6_000  # 1.2 MB at 16 kbit/s is 10 minutes at $0.006
    assert plan("/moderations", {"model": "omni-moderation-latest", "input": "x"}).ask == Ask()
    for path, body in [
        ("/chat/completions", {"model": "o1-pro-2099", "messages": []}),
        ("/chat/completions", {"model": "gpt-5-pro-max", "messages": []}),
        ("/chat/completions", {"model": "gpt-4o-search", "messages": []}),
    ]:
        with pytest.raises(NotPriced):
            plan(path, body)
    with pytest.raises(CostUnknown):
        plan("/chat/completions", {"messages": []})  # no model: no price
    with pytest.raises(CostUnknown):
        plan("/responses", {"model": "gpt-4o", "tools": [{"type": "image_generation"}]})
    for path in ("/threads/thread_1/runs", "/realtime/client_secrets"):
        with pytest.raises(CostUnknown):
            plan(path, {"model": "gpt-4o"})


def test_route_kinds() -> None:
    assert route_kind("GET", "/responses/resp_1") == "retrieve"
    assert route_kind("POST", "/responses/resp_1/cancel") == "retrieve"
    assert route_kind("POST", "/responses/resp_1/other") == "free"
    assert route_kind("POST", "/files") == "free"
    assert route_kind("POST", "/threads/t/runs/r/submit_tool_outputs") == "unknown"
    assert route_kind("GET", "/chat/completions") == "free"


def test_usage_is_read_from_the_tail_of_an_answer_of_any_size() -> None:
    content = "word " * 2_000_000  # 10 MB
    body = json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-2024-08-06",
            "choices": [{"message": {"content": content + '"usage": {"prompt_tokens": 1}'}}],
            "usage": {
                "prompt_tokens": 11,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens": 2_000_000,
            },
        }
    ).encode()
    tail, seen = Tail(), Seen()
    for start in range(0, len(body), 65536):
        tail.add(body[start : start + 65536])
    assert tail.kept < Tail.TAIL + 65536
    tail.read(seen)
    assert seen.reported
    assert (seen.tokens.input, seen.tokens.cached, seen.tokens.output) == (11, 4, 2_000_000)
    assert seen.model == "gpt-4o-2024-08-06"
    assert PRICES.cost(seen.model, seen.tokens) == math.ceil(7 * 2.5 + 4 * 1.25 + 2_000_000 * 10)


def test_usage_of_completions_and_responses_streams() -> None:
    seen = Seen()
    assert event_usage(
        b'data: {"object":"text_completion","choices":[],"usage":{"prompt_tokens":3,'
        b'"completion_tokens":4}}',
        seen,
    )
    assert seen.tokens == Tokens(input=3, output=4)
    for kind in ("completed", "incomplete", "failed"):
        other = Seen()
        event_usage(
            f'event: response.{kind}\ndata: {{"type":"response.{kind}","response":'
            f'{{"object":"response","id":"resp_9","status":"{kind}","model":"gpt-4o",'
            f'"output":[{{"type":"web_search_call"}},{{"type":"message"}}],'
            f'"usage":{{"input_tokens":5,"output_tokens":6}}}}}}'.encode(),
            other,
        )
        assert (other.tokens.input, other.tokens.output, other.status) == (5, 6, kind)
        assert other.tool_calls == {"web_search_call": 1}


def test_the_operators_price_file_keeps_working(tmp_path: Any) -> None:
    old = tmp_path / "old.json"  # the format before exact ids: [input, output] per 1M tokens
    old.write_text(json.dumps({"models": {"my-model": [1.0, 2.0], "gpt-4o": [3.0, 12.0]}}))
    table = PriceTable.load(old)
    assert table.cost("my-model", Tokens(input=10, output=10)) == 30
    # Its entry replaces the shipped one, and the shipped snapshots follow it.
    assert table.cost("gpt-4o-2024-08-06", Tokens(input=1, output=1)) == 15
    assert table.price("o1-pro") is not None  # the rest of the shipped table stays
    assert "operator's old.json" in table.date
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"date": "2027-01-01", "models": {"m": {"input": 1, "output": 1}}}))
    assert PriceTable.load(new).date.startswith("2027-01-01")
    broken = tmp_path / "broken.json"
    broken.write_text('{"models": {"m": {"input": "cheap"}}}')
    with pytest.raises(PriceTableError, match="'m'"):
        PriceTable.load(broken)
