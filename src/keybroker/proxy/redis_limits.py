"""Limits shared by every instance through Redis: one atomic Lua script per check.

If Redis cannot be reached, checks fail closed (the proxy answers 503 with a clear message)
rather than letting requests past limits nobody is counting.
"""

from __future__ import annotations

import contextlib
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from keybroker.proxy.limits import Decision, LimitsUnavailable

# GCRA as in MemoryLimits: KEYS[1] = the grant's TAT key; ARGV = now (ms), interval (ms),
# burst window (ms). Returns {allowed, retry_after_ms}. Redis TIME keeps instances' clocks out.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - window + interval
if now < allow_at then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], tat + interval, 'PX', window + interval)
return {1, 0}
"""


class RedisLimits:
    def __init__(self, client: Redis, prefix: str = "kb") -> None:
        self.redis = client
        self.prefix = prefix
        self._gcra: Any = client.register_script(GCRA)

    async def hit(self, grant_id: str, rpm: int) -> Decision:
        interval = 60_000 / rpm
        try:
            allowed, wait_ms = await self._gcra(
                keys=[f"{self.prefix}:rate:{grant_id}"], args=[interval, 60_000]
            )
        except RedisError as exc:
            raise LimitsUnavailable(str(exc)) from None
        return Decision(bool(allowed), 0 if allowed else max(1, -(-int(wait_ms) // 1000)))

    def _spent_key(self, grant_id: str, month: str) -> str:
        return f"{self.prefix}:spent:{grant_id}:{month}"

    async def spent(self, grant_id: str, month: str) -> int | None:
        try:
            value = await self.redis.get(self._spent_key(grant_id, month))
        except RedisError as exc:
            raise LimitsUnavailable(str(exc)) from None
        return None if value is None else int(value)

    async def set_spent(self, grant_id: str, month: str, microusd: int) -> None:
        # NX: another instance may have started counting already; its number wins.
        try:
            await self.redis.set(self._spent_key(grant_id, month), microusd, nx=True, ex=40 * 86400)
        except RedisError as exc:
            raise LimitsUnavailable(str(exc)) from None

    async def add_spent(self, grant_id: str, month: str, microusd: int) -> None:
        key = self._spent_key(grant_id, month)
        try:
            # Only a counter that exists moves: a missing one is loaded from the database,
            # which already holds this request's cost by then or will at the next write.
            await self.redis.eval(
                "if redis.call('EXISTS', KEYS[1]) == 1 then "
                "return redis.call('INCRBY', KEYS[1], ARGV[1]) end return nil",
                1,
                key,
                microusd,
            )
        except RedisError:
            # The database is the record; the counter is rebuilt from it when Redis is back.
            await self._forget_quietly(key)

    async def _forget_quietly(self, key: str) -> None:
        with contextlib.suppress(RedisError):
            await self.redis.delete(key)

    async def forget(self, grant_id: str) -> None:
        with contextlib.suppress(RedisError):
            await self.redis.delete(f"{self.prefix}:rate:{grant_id}")
