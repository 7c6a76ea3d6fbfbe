"""Retention: raw usage rows older than ``KEYBROKER_USAGE_RETENTION_DAYS`` are deleted.

Off the hot path: the usage writer process runs ``Pruner.loop`` in a thread of its own. Each
batch is one short transaction (on SQLite, the write lock is held for that long), sized so
that it takes about ``TARGET_SECONDS``, with a pause between batches in which other writers
take the lock. Only raw rows go: the daily rollups (every total, chart and the month's
spend) and the audit log are kept.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select
from sqlmodel import col

from keybroker.models import UsageRecord, utcnow

logger = logging.getLogger("keybroker.retention")

TARGET_SECONDS = 0.004  # per batch: well under the 10 ms a waiting request may be held
PAUSE_SECONDS = 0.02  # between batches: other writers get the lock
EVERY_SECONDS = 600.0
MIN_BATCH, MAX_BATCH = 50, 5000


def cutoff(days: int, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(days=days)


def delete_batch(engine: Engine, before: datetime, size: int) -> int:
    """Delete up to ``size`` of the oldest rows made before ``before``; how many went."""
    oldest = (
        select(col(UsageRecord.id))
        .where(col(UsageRecord.at) < before)
        .order_by(col(UsageRecord.at))
        .limit(size)
    )
    with engine.begin() as conn:
        result = conn.execute(delete(UsageRecord).where(col(UsageRecord.id).in_(oldest)))
    return int(result.rowcount)


class Pruner:
    def __init__(self, engine: Engine, days: int) -> None:
        self.engine = engine
        self.days = days
        self.batch = 500
        self.durations: list[float] = []  # of the last run's batches, for tests and logs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: datetime | None = None) -> int:
        """Delete every row older than the setting, batch by batch; how many went."""
        before = cutoff(self.days, now)
        self.durations = []
        total = 0
        while not self._stop.is_set():
            began = time.perf_counter()
            gone = delete_batch(self.engine, before, self.batch)
            took = time.perf_counter() - began
            self.durations.append(took)
            total += gone
            if gone < self.batch:
                break
            # Aim each transaction at TARGET_SECONDS, whatever the machine and the indexes.
            if took > TARGET_SECONDS:
                self.batch = max(MIN_BATCH, self.batch // 2)
            elif took < TARGET_SECONDS / 2:
                self.batch = min(MAX_BATCH, self.batch * 2)
            self._stop.wait(PAUSE_SECONDS)
        if total:
            logger.info("retention: deleted %d usage row(s) from before %s", total, before)
        return total

    def loop(self) -> None:
        """Run now and every EVERY_SECONDS until stopped (the writer's retention thread)."""
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                logger.exception("retention: could not delete old usage rows")
            self._stop.wait(EVERY_SECONDS)

    def stop(self) -> None:
        self._stop.set()
