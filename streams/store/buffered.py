"""A history-store wrapper that buffers and retries writes while the store is unreachable.

The stream worker must keep forecasting when InfluxDB (or the SQLite file) is down:
``BufferedStore.write`` never raises a :class:`StoreError`; it queues the points,
tries to flush them oldest first, and on failure keeps them for the next attempt
(after an exponential back-off) instead of dropping them. The queue is bounded by
``max_buffered_points``; past it the oldest points are dropped and counted, so
memory cannot grow without limit during a long outage and the loss is visible.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from streams.store.base import HistoryStore, Point

log = logging.getLogger(__name__)


class BufferedStore:
    """Wraps a :class:`HistoryStore`: bounded FIFO buffer, oldest-first retries, drop counter.

    Examples:
        >>> from streams.store.base import Point
        >>> from datetime import UTC, datetime
        >>> class Down:
        ...     def write(self, points): raise OSError("connection refused")
        >>> store = BufferedStore(Down(), max_buffered_points=10, clock=lambda: 0.0)
        >>> store.write([Point("gpu", {"server_id": "s"}, {"x": 1.0}, datetime(2026, 1, 1, tzinfo=UTC))])
        >>> store.pending, store.failed_attempts, store.dropped_points
        (1, 1, 0)
    """

    def __init__(self, inner: Any, *, max_buffered_points: int = 500_000, batch_size: int = 5000,
                 min_backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.max_buffered_points = max_buffered_points
        self.batch_size = batch_size
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._queue: deque[Point] = deque()
        self._lock = threading.Lock()
        self._backoff_s = 0.0
        self._next_try_at = 0.0
        self.written_points = 0
        self.dropped_points = 0
        self.failed_attempts = 0

    @property
    def pending(self) -> int:
        """Points accepted but not yet written."""
        return len(self._queue)

    @property
    def healthy(self) -> bool:
        """False while writes are failing (the last attempt failed)."""
        return self._backoff_s == 0.0

    def write(self, points: Sequence[Point]) -> None:
        """Accept ``points`` and flush what the store takes now; never raises for store failures."""
        with self._lock:
            self._queue.extend(points)
            overflow = len(self._queue) - self.max_buffered_points
            if overflow > 0:
                for _ in range(overflow):
                    self._queue.popleft()
                self.dropped_points += overflow
                log.error("event=store_buffer_overflow dropped=%d total_dropped=%d", overflow, self.dropped_points)
            self._flush_locked()

    def flush(self) -> bool:
        """Try to write everything pending now (ignoring back-off); True when nothing is left."""
        with self._lock:
            self._next_try_at = 0.0
            self._flush_locked()
            return not self._queue

    def _flush_locked(self) -> None:
        if not self._queue or self._clock() < self._next_try_at:
            return
        while self._queue:
            batch = [self._queue[i] for i in range(min(self.batch_size, len(self._queue)))]
            try:
                self.inner.write(batch)
            except Exception as exc:  # noqa: BLE001 - StoreError or any client error: keep the points, retry later
                self.failed_attempts += 1
                self._backoff_s = min(self.max_backoff_s, max(self.min_backoff_s, self._backoff_s * 2))
                self._next_try_at = self._clock() + self._backoff_s
                log.warning("event=store_write_failed pending=%d retry_in_s=%.1f error=%s",
                            len(self._queue), self._backoff_s, exc)
                return
            for _ in batch:
                self._queue.popleft()
            self.written_points += len(batch)
            self._backoff_s = 0.0

    def query(self, measurement: str, start: datetime, end: datetime,
              tags: Mapping[str, str] | None = None) -> pd.DataFrame:
        """Read through to the wrapped store (pending points are not visible until written)."""
        frame: pd.DataFrame = self.inner.query(measurement, start, end, tags)
        return frame

    def close(self) -> None:
        """Make a last attempt to write what is pending, then close the wrapped store."""
        self.flush()
        if self._queue:
            log.error("event=store_close_with_pending points=%d", len(self._queue))
        self.inner.close()


def buffered(store: HistoryStore, *, max_buffered_points: int, batch_size: int) -> BufferedStore:
    """Wrap ``store`` so that outages are buffered and retried."""
    return BufferedStore(store, max_buffered_points=max_buffered_points, batch_size=batch_size)
