"""Grant changes across instances: publish on revoke or limit change, every instance drops
its cached copy. On every (re)subscription the whole cache goes, since messages may have been
missed meanwhile; entries also expire within seconds, for a publish that failed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from keybroker.events import GRANT_CHANGES

CHANNEL = "keybroker:grant-changes"
logger = logging.getLogger("keybroker.redis")


class RedisGrantBridge:
    def __init__(
        self, client: Redis, on_change: Callable[[str], None], *, on_reset: Callable[[], None]
    ) -> None:
        self.redis = client
        self.on_change = on_change
        self.on_reset = on_reset
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        GRANT_CHANGES.subscribe(self._publish)
        self._task = asyncio.create_task(self._listen(), name="grant-changes")

    async def stop(self) -> None:
        GRANT_CHANGES.unsubscribe(self._publish)
        if self._task is not None:
            self._task.cancel()

    def _publish(self, grant_id: str) -> None:
        # Called from request threads (sync settings code) or the loop itself.
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._send(grant_id), self._loop) if not _in_loop(
            self._loop
        ) else self._loop.create_task(self._send(grant_id))

    async def _send(self, grant_id: str) -> None:
        try:
            await self.redis.publish(CHANNEL, grant_id)
        except RedisError as exc:
            logger.warning("could not publish a grant change (caches expire in seconds): %s", exc)

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(CHANNEL)
                self.on_reset()  # whatever was published while we were not listening
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        grant_id = message["data"]
                        self.on_change(
                            grant_id.decode() if isinstance(grant_id, bytes) else grant_id
                        )
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("grant change channel lost (%s); reconnecting", exc)
                await asyncio.sleep(0.5)


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
