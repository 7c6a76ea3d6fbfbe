"""Grant lookups for the proxy, cached briefly and dropped at once when a grant changes."""

from __future__ import annotations

import time

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from keybroker.events import GRANT_CHANGES
from keybroker.grants import GrantView, get_grant

TTL_SECONDS = 5.0  # a missed change notification is healed within this time
MAX_ENTRIES = 100_000


class GrantCache:
    def __init__(self, engine: Engine, ttl: float = TTL_SECONDS) -> None:
        self.engine = engine
        self.ttl = ttl
        self._entries: dict[str, tuple[GrantView | None, float]] = {}
        GRANT_CHANGES.subscribe(self.invalidate)

    def close(self) -> None:
        GRANT_CHANGES.unsubscribe(self.invalidate)

    @property
    def size(self) -> int:
        return len(self._entries)

    def invalidate(self, grant_id: str) -> None:
        self._entries.pop(grant_id, None)

    async def get(self, grant_id: str) -> GrantView | None:
        now = time.monotonic()
        entry = self._entries.get(grant_id)
        if entry is not None and now - entry[1] < self.ttl:
            return entry[0]
        grant = await run_in_threadpool(get_grant, self.engine, grant_id)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        # Unknown ids are cached too, so a flood of well-formed fake tokens costs one read each.
        self._entries[grant_id] = (grant, now)
        return grant
