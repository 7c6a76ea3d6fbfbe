"""Limits shared by every instance through Redis: one Lua script per request does the rate
check and the spend reservation together, in one round trip, atomically (Redis runs a script
to its end before anything else). The rules are limits.py's, written again in Lua.

If Redis cannot be reached, checks fail closed (the proxy answers 503 with a clear message)
rather than letting requests past limits nobody is counting.

Keys, per grant: ``rate`` (a hash: tat ms, remainder, the rpm it was kept in), ``spent:<month>``
(micro-USD, loaded once from the database and then only incremented), ``held`` (a sorted set of
reservations "<id>:<amount>" scored by when their lease ends) and ``reserved`` (their sum).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from keybroker.proxy.limits import (
    HOLD_SECONDS,
    LEASE_MS,
    MINUTE_MS,
    Ask,
    Decision,
    LimitsUnavailable,
    Reservation,
    SpendUnknown,
    reservation_id,
)

# KEYS: rate, spent, held, reserved. ARGV: rpm, budget, amount, floor, reservation id,
# lease ms, and (tests only) now in ms; otherwise Redis TIME keeps instances' clocks out.
# Returns {1, reserved amount} admitted, {0, wait ms} rate, {2} spend not loaded, {3} budget.
# Lua numbers are doubles: every value here stays far below 2^53 (ms since 1970, and leads of
# at most 60,000 * 10,001), so the arithmetic is exact.
# The GCRA step of limits.gcra on KEYS[1], at ``now`` for ARGV[1] requests a minute: leaves
# ``lead`` (1/rpm ms) for the commit below, or returns {0, wait ms}.
RATE_STEP = f"""
local rpm = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 't', 'r', 'n')
local lead = 0
if state[1] then
  local rem = tonumber(state[2])
  local was = tonumber(state[3])
  if was ~= rpm then rem = math.floor(rem * rpm / was) end
  lead = (tonumber(state[1]) - now) * rpm + rem
  if lead < 0 then lead = 0 end
end
if lead > {MINUTE_MS} * (rpm - 1) then
  return {{0, math.floor((lead - {MINUTE_MS} * (rpm - 1) + rpm - 1) / rpm)}}
end
"""
RATE_COMMIT = f"""
lead = lead + {MINUTE_MS}
redis.call('HSET', KEYS[1], 't', now + math.floor(lead / rpm), 'r', lead % rpm, 'n', rpm)
redis.call('PEXPIRE', KEYS[1], math.floor(lead / rpm) + 1000)
"""


def _now(index: int) -> str:
    return f"""
local now
if ARGV[{index}] then
  now = tonumber(ARGV[{index}])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""


# KEYS: rate. ARGV: rpm, (tests only) now. The rate alone (sign-in attempts, key checks).
RATE = _now(2) + RATE_STEP + RATE_COMMIT + "return {1, 0}"

# KEYS: rate, spent, held, reserved. ARGV: rpm, budget, amount, floor, reservation id,
# lease ms, and (tests only) now in ms; otherwise Redis TIME keeps instances' clocks out.
# Returns {1, reserved amount} admitted, {0, wait ms} rate, {2} spend not loaded, {3} budget.
# Lua numbers are doubles: every value here stays far below 2^53 (ms since 1970, and leads of
# at most 60,000 * 10,001), so the arithmetic is exact.
ADMIT = (
    _now(7)
    + RATE_STEP
    + """
local spent = redis.call('GET', KEYS[2])
if not spent then return {2, 0} end
local left = tonumber(ARGV[2]) - tonumber(spent)
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, member in ipairs(stale) do
  redis.call('DECRBY', KEYS[4], string.match(member, ':(%d+)$'))
end
if #stale > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now) end
local reserved = tonumber(redis.call('GET', KEYS[4]) or '0')
local amount = tonumber(ARGV[3])
local take = -1
if left > 0 then
  if reserved + amount <= left then
    take = amount
  elseif reserved <= 0 and tonumber(ARGV[4]) <= left then
    take = left
  end
end
if take < 0 then return {3, 0} end
"""
    + RATE_COMMIT
    + """
if take > 0 then
  local lease = tonumber(ARGV[6])
  redis.call('ZADD', KEYS[3], now + lease, ARGV[5] .. ':' .. take)
  redis.call('INCRBY', KEYS[4], take)
  redis.call('PEXPIRE', KEYS[3], 2 * lease)
  redis.call('PEXPIRE', KEYS[4], 2 * lease)
end
return {1, take}
"""
)

# KEYS: held, reserved, spent. ARGV: member ("" for none), amount, cost. The spend moves only
# while it is counted: a missing counter is loaded from the database, which holds this cost.
SETTLE = """
if ARGV[1] ~= '' and redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('DECRBY', KEYS[2], ARGV[2])
end
if ARGV[3] ~= '0' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('INCRBY', KEYS[3], ARGV[3])
end
return 1
"""

SPENT_TTL_SECONDS = 40 * 86_400


class RedisLimits:
    def __init__(
        self, client: Redis, prefix: str = "kb", clock: Callable[[], float] | None = None
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self._clock = clock  # tests only: production uses Redis's own clock
        self._admit: Any = client.register_script(ADMIT)
        self._rate: Any = client.register_script(RATE)
        self._settle: Any = client.register_script(SETTLE)

    def _keys(self, grant_id: str, month: str) -> list[str]:
        p = f"{self.prefix}:{grant_id}"
        return [f"{p}:rate", f"{p}:spent:{month}", f"{p}:held", f"{p}:reserved"]

    async def admit(self, grant_id: str, rpm: int, month: str, budget: int, ask: Ask) -> Decision:
        rid = reservation_id()
        args: list[Any] = [rpm, budget, ask.amount, ask.floor, rid, LEASE_MS]
        if self._clock is not None:
            args.append(int(self._clock() * 1000))
        try:
            found = await self._admit(keys=self._keys(grant_id, month), args=args)
        except RedisError as exc:
            raise LimitsUnavailable(str(exc)) from None
        code, value = int(found[0]), int(found[1])
        if code == 1:
            reservation = Reservation(rid, grant_id, value) if value else None
            return Decision(True, reservation=reservation)
        if code == 0:
            return Decision(False, retry_after=max(1, -(-value // 1000)))
        if code == 2:
            raise SpendUnknown
        return Decision(False, over_budget=True)

    async def hit(self, key: str, rpm: int) -> Decision:
        args: list[Any] = [rpm]
        if self._clock is not None:
            args.append(int(self._clock() * 1000))
        try:
            allowed, wait_ms = await self._rate(keys=[f"{self.prefix}:{key}:rate"], args=args)
        except RedisError as exc:
            raise LimitsUnavailable(str(exc)) from None
        return Decision(bool(allowed), 0 if allowed else max(1, -(-int(wait_ms) // 1000)))

    async def load_spent(self, grant_id: str, month: str, microusd: int) -> None:
        try:
            await self.redis.set(
                self._keys(grant_id, month)[1], microusd, nx=True, ex=SPENT_TTL_SECONDS
            )
        except RedisError as exc:
            raise LimitsUnavailable(str(exc)) from None

    async def settle(
        self, grant_id: str, month: str, reservation: Reservation | None, cost: int
    ) -> None:
        _, spent, held, reserved = self._keys(grant_id, month)
        member = f"{reservation.id}:{reservation.amount}" if reservation is not None else ""
        amount = reservation.amount if reservation is not None else 0
        try:
            await self._settle(keys=[held, reserved, spent], args=[member, amount, cost])
        except RedisError:
            # The database is the record; the counter is rebuilt from it when Redis is back.
            # The reservation ends with its lease.
            with contextlib.suppress(RedisError):
                await self.redis.delete(spent)

    async def state(self, grant_id: str, month: str) -> tuple[int, int] | None:
        _, spent, _, reserved = self._keys(grant_id, month)
        try:
            values = await self.redis.mget([spent, reserved])
        except RedisError as exc:
            raise LimitsUnavailable(str(exc)) from None
        if values[0] is None:
            return None
        return int(values[0]), max(0, int(values[1] or 0))

    async def hold(self, key: str, grant_id: str, microusd: int) -> None:
        with contextlib.suppress(RedisError):  # without it the charge simply stays
            await self.redis.set(f"{self.prefix}:{grant_id}:bg:{key}", microusd, ex=HOLD_SECONDS)

    async def release(self, key: str, grant_id: str) -> int | None:
        try:
            value = await self.redis.getdel(f"{self.prefix}:{grant_id}:bg:{key}")
        except RedisError:
            return None
        return None if value is None else int(value)
