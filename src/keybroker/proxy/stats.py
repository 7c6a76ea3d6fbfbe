"""Counters the proxy keeps for /metrics."""

from __future__ import annotations

from collections import Counter


class ProxyMetrics:
    """Counted on the hot path with plain dict increments: no locks, no labels beyond status."""

    def __init__(self) -> None:
        self.responses: Counter[int] = Counter()
        self.latency_ms_sum = 0
        self.usage_write_errors = 0

    def observe(self, status: int, latency_ms: int) -> None:
        self.responses[status] += 1
        self.latency_ms_sum += latency_ms
