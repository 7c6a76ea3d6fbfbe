"""Per-grant limits: requests per minute and a monthly budget.

``Limits`` is the interface; ``MemoryLimits`` keeps state in this process (one worker), and a
Redis backend can implement the same methods for several instances.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol


class LimitsUnavailable(Exception):
    """The shared limit store cannot be reached; the proxy fails closed."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int = 0


class Limits(Protocol):
    async def hit(self, grant_id: str, rpm: int) -> Decision: ...

    async def spent(self, grant_id: str, month: str) -> int | None:
        """Micro-USD spent this month, or None when this backend has not seen the grant yet."""
        ...

    async def set_spent(self, grant_id: str, month: str, microusd: int) -> None: ...

    async def add_spent(self, grant_id: str, month: str, microusd: int) -> None: ...

    async def forget(self, grant_id: str) -> None: ...


class MemoryLimits:
    """GCRA (the generic cell rate algorithm): ``rpm`` requests may come at once, then one every
    60/rpm seconds. O(1) memory per grant."""

    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._spent: dict[tuple[str, str], int] = {}

    async def hit(self, grant_id: str, rpm: int) -> Decision:
        return self.check(grant_id, rpm)

    def check(self, grant_id: str, rpm: int) -> Decision:
        now: float = self._clock()  # type: ignore[operator]
        interval = 60.0 / rpm
        tat = max(self._tat.get(grant_id, now), now)
        allow_at = tat - 60.0 + interval  # a burst of rpm requests fits in one minute
        if now < allow_at:
            return Decision(False, max(1, math.ceil(allow_at - now)))
        self._tat[grant_id] = tat + interval
        return Decision(True)

    async def spent(self, grant_id: str, month: str) -> int | None:
        return self._spent.get((grant_id, month))

    async def set_spent(self, grant_id: str, month: str, microusd: int) -> None:
        self._spent[(grant_id, month)] = microusd

    async def add_spent(self, grant_id: str, month: str, microusd: int) -> None:
        key = (grant_id, month)
        if key in self._spent:
            self._spent[key] += microusd

    async def forget(self, grant_id: str) -> None:
        self._tat.pop(grant_id, None)
        for key in [k for k in self._spent if k[0] == grant_id]:
            del self._spent[key]
