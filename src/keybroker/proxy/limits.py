"""Per-grant limits: requests per minute and the month's spend, with reservations.

``Limits`` is the interface; ``MemoryLimits`` keeps state in this process (one worker), and
``redis_limits.RedisLimits`` does the same in one Lua script per request for several instances.
Both make the same decisions, from the same rules written once here:

- The rate is GCRA (the generic cell rate algorithm) in integers: ``rpm`` requests may come at
  once, then one every 60,000/rpm ms. That interval is rarely a whole number of milliseconds
  (45 a minute: 1,333.3 ms), so the theoretical arrival time is kept as whole milliseconds
  plus a remainder in 1/rpm ms: every step is exact, for every rate from 1 to 10,000.
- Admission (``admission``): a request reserves what it may cost at worst; it is admitted when
  the month's spend plus every reservation in flight plus its own stays within the budget. When
  it does not fit and nothing else is in flight, it is admitted alone with what is left, if
  its least cost (its input) fits: one request at a time when the budget is nearly spent, so
  an app is not refused while its requests fit, and only that one request can overrun.
- Counters move only by increments: a reservation adds, settling takes it away and adds the
  real cost to the spend. A reservation not settled within ``LEASE_MS`` (its worker died)
  expires and stops counting.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

MINUTE_MS = 60_000
# A request slower than this (a reasoning model's long answer) stops holding its reservation;
# a dead worker's reservations hold the budget no longer than this.
LEASE_MS = 30 * MINUTE_MS
# Background responses charged at creation, waiting for the app to fetch the real usage.
HOLD_SECONDS = 30 * 86_400


class LimitsUnavailable(Exception):
    """The shared limit store cannot be reached; the proxy fails closed."""


class SpendUnknown(Exception):
    """This backend has not counted the grant's spend this month yet: load it and retry."""


@dataclass(frozen=True)
class Ask:
    """What a request asks to reserve, in micro-USD."""

    amount: int = 0  # its worst case
    floor: int = 0  # what it costs at least (its input): when even that does not fit, refuse


FREE = Ask()


@dataclass(frozen=True)
class Reservation:
    id: str
    grant_id: str
    amount: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int = 0  # seconds, for a refusal by rate
    over_budget: bool = False  # refused because the budget cannot take it
    reservation: Reservation | None = None


def gcra(now: int, tat: int, rem: int, rpm: int) -> tuple[bool, int, int, int]:
    """One GCRA step in integers: (allowed, new tat ms, new remainder, wait ms when refused).

    ``tat`` + ``rem``/rpm ms is when the grant's next request is due at its steady rate. A
    burst of ``rpm`` fits in one minute: a request is allowed while the due time is at most
    (rpm - 1) intervals ahead of now. Scaled by rpm, one interval is exactly 60,000.
    """
    lead = max(0, (tat - now) * rpm + rem)  # how far ahead the due time is, in 1/rpm ms
    limit = MINUTE_MS * (rpm - 1)
    if lead > limit:
        return False, tat, rem, -(-(lead - limit) // rpm)
    lead += MINUTE_MS
    return True, now + lead // rpm, lead % rpm, 0


def rescale(rem: int, was: int, rpm: int) -> int:
    """A remainder kept in 1/``was`` ms, in 1/``rpm`` ms (the owner changed the rate)."""
    return rem * rpm // was


def admission(budget: int, spent: int, reserved: int, ask: Ask) -> int | None:
    """What to reserve for ``ask``, or None to refuse it (see the module's docstring)."""
    left = budget - spent
    if left <= 0:
        return None
    if reserved + ask.amount <= left:
        return ask.amount
    if reserved == 0 and ask.floor <= left:
        return left  # alone: everything that is left
    return None


_ids = itertools.count()
_PREFIX = os.urandom(6).hex()


def reservation_id() -> str:
    return f"{_PREFIX}{next(_ids):x}"


class Limits(Protocol):
    async def hit(self, key: str, rpm: int) -> Decision:
        """The rate alone, for ``key`` (sign-in attempts, key checks)."""
        ...

    async def admit(
        self, grant_id: str, rpm: int, month: str, budget: int, ask: Ask
    ) -> Decision: ...

    async def load_spent(self, grant_id: str, month: str, microusd: int) -> None:
        """Start counting the month from ``microusd`` (the database's sum), unless another
        request or instance has started meanwhile: its count wins."""
        ...

    async def settle(
        self, grant_id: str, month: str, reservation: Reservation | None, cost: int
    ) -> None:
        """End a reservation (if any) and add the request's real cost (which may be negative: a
        correction) to the month's spend."""
        ...

    async def state(self, grant_id: str, month: str) -> tuple[int, int] | None:
        """(spent, reserved in flight) in micro-USD, or None before the month is counted."""
        ...

    async def hold(self, key: str, grant_id: str, microusd: int) -> None:
        """Remember what a background response was charged when it was created."""
        ...

    async def release(self, key: str, grant_id: str) -> int | None:
        """What ``hold`` remembered, forgotten at once (only one caller gets it)."""
        ...


@dataclass
class _Grant:
    tat: int = 0
    rem: int = 0
    rpm: int = 0
    reserved: int = 0
    held: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (amount, until)


class MemoryLimits:
    """The limits of one process. Every method runs without an await inside, so each is atomic
    on the event loop; O(1) memory per grant plus its requests in flight."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._grants: dict[str, _Grant] = {}
        self._spent: dict[tuple[str, str], int] = {}
        self._holds: dict[str, tuple[str, int]] = {}

    def _now(self) -> int:
        return int(self._clock() * 1000)

    async def hit(self, key: str, rpm: int) -> Decision:
        return self.check(key, rpm)

    def check(self, grant_id: str, rpm: int) -> Decision:
        """The rate alone (no budget): one GCRA step."""
        g, _, (allowed, tat, rem, wait) = self._rate(grant_id, rpm)
        if not allowed:
            return Decision(False, retry_after=max(1, -(-wait // 1000)))
        g.tat, g.rem, g.rpm = tat, rem, rpm
        return Decision(True)

    def _rate(self, grant_id: str, rpm: int) -> tuple[_Grant, int, tuple[bool, int, int, int]]:
        g = self._grants.setdefault(grant_id, _Grant())
        now = self._now()
        rem = rescale(g.rem, g.rpm, rpm) if g.rpm and g.rpm != rpm else g.rem
        return g, now, gcra(now, g.tat, rem, rpm)

    async def admit(self, grant_id: str, rpm: int, month: str, budget: int, ask: Ask) -> Decision:
        spent = self._spent.get((grant_id, month))
        if spent is None:
            raise SpendUnknown
        g, now, (allowed, tat, rem, wait) = self._rate(grant_id, rpm)
        if not allowed:
            return Decision(False, retry_after=max(1, -(-wait // 1000)))
        if g.held:
            for stale in [k for k, (_, until) in g.held.items() if until <= now]:
                g.reserved -= g.held.pop(stale)[0]
        take = admission(budget, spent, g.reserved, ask)
        if take is None:
            return Decision(False, over_budget=True)
        g.tat, g.rem, g.rpm = tat, rem, rpm
        if not take:
            return Decision(True)
        reservation = Reservation(reservation_id(), grant_id, take)
        g.held[reservation.id] = (take, now + LEASE_MS)
        g.reserved += take
        return Decision(True, reservation=reservation)

    async def load_spent(self, grant_id: str, month: str, microusd: int) -> None:
        self._spent.setdefault((grant_id, month), microusd)

    async def settle(
        self, grant_id: str, month: str, reservation: Reservation | None, cost: int
    ) -> None:
        if reservation is not None:
            g = self._grants.get(grant_id)
            if g is not None and g.held.pop(reservation.id, None) is not None:
                g.reserved -= reservation.amount
        if cost and (grant_id, month) in self._spent:
            self._spent[(grant_id, month)] += cost

    async def state(self, grant_id: str, month: str) -> tuple[int, int] | None:
        spent = self._spent.get((grant_id, month))
        if spent is None:
            return None
        g = self._grants.get(grant_id)
        return spent, (g.reserved if g is not None else 0)

    async def hold(self, key: str, grant_id: str, microusd: int) -> None:
        self._holds[key] = (grant_id, microusd)

    async def release(self, key: str, grant_id: str) -> int | None:
        found = self._holds.get(key)
        if found is None or found[0] != grant_id:
            return None
        del self._holds[key]
        return found[1]
