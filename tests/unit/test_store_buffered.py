"""BufferedStore: bounded buffer, oldest dropped and counted, oldest-first delivery after an outage."""

from __future__ import annotations

from datetime import UTC, datetime

from streams.store.base import Point
from streams.store.buffered import BufferedStore


class Flaky:
    """A store that refuses writes while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.rows: list[float] = []

    def write(self, points: list[Point]) -> None:
        if self.down:
            raise OSError("connection refused")
        self.rows.extend(p.fields["v"] for p in points)


def _pts(lo: int, hi: int) -> list[Point]:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return [Point("m", {}, {"v": float(i)}, t) for i in range(lo, hi)]


def test_buffer_overflow_drops_oldest_and_counts() -> None:
    class Down:
        def write(self, points: object) -> None:
            raise OSError("connection refused")

    store = BufferedStore(Down(), max_buffered_points=100, clock=lambda: 0.0)
    t = datetime(2026, 1, 1, tzinfo=UTC)
    store.write([Point("m", {}, {"v": float(i)}, t) for i in range(150)])
    assert store.pending == 100 and store.dropped_points == 50
    assert store._queue[0].fields["v"] == 50.0  # noqa: SLF001 - the oldest were dropped


def test_outage_then_recovery_delivers_in_order_once() -> None:
    now = [0.0]
    inner = Flaky()
    store = BufferedStore(inner, max_buffered_points=1000, batch_size=7, min_backoff_s=1.0, clock=lambda: now[0])
    store.write(_pts(0, 20))
    store.write(_pts(20, 30))  # within back-off: not even tried
    assert store.failed_attempts == 1 and store.pending == 30
    inner.down = False
    now[0] = 5.0
    store.write(_pts(30, 35))
    assert inner.rows == [float(i) for i in range(35)] and store.pending == 0 and store.healthy


def test_docstring_example_runs() -> None:
    import doctest

    import streams.store.buffered as mod

    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0
