"""The grant-change channel: a (re)subscription drops the whole cache, a message one entry."""

from __future__ import annotations

import asyncio

import redis.asyncio

from keybroker.proxy.redis_events import CHANNEL, RedisGrantBridge
from tests.conftest import REDIS
from tests.net import require_service


async def _until(check: object, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_resubscribing_drops_everything_a_message_drops_one() -> None:
    require_service("Redis", "127.0.0.1", 6379)

    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(REDIS)
        changed: list[str] = []
        resets: list[int] = []
        bridge = RedisGrantBridge(client, changed.append, on_reset=lambda: resets.append(1))
        bridge.start()
        try:
            await _until(lambda: len(resets) == 1)
            for _ in range(200):  # subscribed before the reset, but give the message time
                await client.publish(CHANNEL, "g-1")
                if "g-1" in changed:
                    break
                await asyncio.sleep(0.05)
            assert set(changed) == {"g-1"}
            assert len(resets) == 1
            # The channel's connection dies: messages published meanwhile would be lost, so
            # the bridge clears the cache again once it has subscribed anew.
            await client.client_kill_filter(_type="pubsub")
            await _until(lambda: len(resets) == 2)
        finally:
            await bridge.stop()
            await client.aclose()

    asyncio.run(scenario())
