"""Grant lookups for the proxy, cached briefly and dropped at once when a grant changes."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from keybroker.crypto import tokens, vault
from keybroker.crypto.keyring import KeyRing
from keybroker.events import GRANT_CHANGES
from keybroker.grants import GrantView, get_grant

# How long an entry is trusted without a read. Every change in this process drops its entry
# at once (events.GRANT_CHANGES); the TTL only bounds what nobody announced here: with Redis,
# a change message lost while the channel was down; without it, a row edited by another
# process (the CLI). A short TTL costs every app that calls less often than that a database
# read and a thread hop on its next request (docs/benchmarks.md: time to first chunk).
SHARED_TTL_SECONDS = 5.0
LOCAL_TTL_SECONDS = 60.0
MAX_ENTRIES = 100_000


@dataclass
class _Entry:
    grant: GrantView | None
    at: float
    inner: vault.ParsedRecord | None = None  # the grant copy's outer layer, opened


class GrantCache:
    def __init__(self, engine: Engine, ring: KeyRing, *, ttl: float) -> None:
        self.engine = engine
        self.ring = ring
        self.ttl = ttl
        self._entries: dict[str, _Entry] = {}
        GRANT_CHANGES.subscribe(self.invalidate)

    def close(self) -> None:
        GRANT_CHANGES.unsubscribe(self.invalidate)

    @property
    def size(self) -> int:
        return len(self._entries)

    def invalidate(self, grant_id: str) -> None:
        self._entries.pop(grant_id, None)

    def clear(self) -> None:
        self._entries.clear()

    async def get(self, grant_id: str) -> GrantView | None:
        now = time.monotonic()
        entry = self._entries.get(grant_id)
        if entry is not None and now - entry.at < self.ttl:
            return entry.grant
        grant = await run_in_threadpool(get_grant, self.engine, grant_id)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        # Unknown ids are cached too, so a flood of well-formed fake tokens costs one read each.
        self._entries[grant_id] = _Entry(grant, now)
        return grant

    def open_key(self, grant: GrantView, token: tokens.AppToken) -> str:
        """The provider key for one request, from a grant whose token was verified.

        The outer layer is under the master key, which this process holds anyway, so it is
        opened once per cache entry; the inner layer, under a key derived from the app's
        token, is opened on every request: no usable key outlives its request (DESIGN.md,
        Key custody). Raises SealedRecordError or UnknownKidError.
        """
        assert grant.sealed_copy is not None
        entry = self._entries.get(grant.id)
        if entry is None or entry.grant is not grant:  # dropped or refreshed meanwhile
            inner = tokens.open_outer_layer(grant.sealed_copy, grant.id, self.ring)
        else:
            if entry.inner is None:
                entry.inner = tokens.open_outer_layer(grant.sealed_copy, grant.id, self.ring)
            inner = entry.inner
        return tokens.open_inner_layer(inner, token)
