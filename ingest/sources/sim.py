"""The cluster simulator's live feed as a telemetry source, so the pipeline runs without hardware.

Wraps ``simulator.feed.TelemetryFeed``: each ``step()`` is one tick of GPU, inlet
and PDU samples (and control events such as a cooling failure), published at real
time or ``speed`` times faster. The simulator decides what is measured; this module
only paces and forwards it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from contracts.errors import SourceError
from contracts.messages import Contract


def build_feed(*, num_servers: int, seed: int, scenario: str, policy: str, tick_s: float,
               cluster_file: Any = None, start_at: datetime | None = None) -> Any:
    """A ``TelemetryFeed`` over the default topology of ``num_servers`` servers (or ``cluster_file``)."""
    from foundation.topology import default_topology, load_topology

    try:
        from simulator.feed import TelemetryFeed
    except ImportError as exc:
        raise SourceError(f"sim: the simulator feed is not available in this checkout ({exc})") from None
    topology = load_topology(cluster_file) if cluster_file else default_topology(num_servers)
    return TelemetryFeed(topology, seed=seed, scenario=scenario, policy=policy,
                         start_at=start_at or datetime.now(UTC), tick_s=tick_s)


class SimSource:
    """Yields one round per simulator tick, sleeping ``tick_s / speed`` of wall time between ticks.

    Args:
        feed: anything with ``step()`` returning an object with ``gpu``, ``inlet``, ``pdu``, ``events`` lists
            (and optionally ``finished``, which ends the stream).
        tick_s: simulated seconds per tick.
        speed: 1 = real time, 60 = a simulated minute per second, 0 = as fast as possible.
        clock, sleep: injected for tests.
    """

    def __init__(self, feed: Any, *, tick_s: float = 1.0, speed: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if speed < 0:
            raise SourceError("sim: --speed must be >= 0 (0 = as fast as possible)")
        self.feed = feed
        self.tick_s = tick_s
        self.speed = speed
        self.clock = clock
        self.sleep = sleep

    def rounds(self) -> Iterator[list[Contract]]:
        next_at = self.clock()
        while not getattr(self.feed, "finished", False):
            tick = self.feed.step()
            yield [*tick.gpu, *tick.inlet, *tick.pdu, *getattr(tick, "events", [])]
            if self.speed > 0:
                next_at += self.tick_s / self.speed
                delay = next_at - self.clock()
                if delay > 0:
                    self.sleep(delay)
                else:
                    next_at = self.clock()  # behind schedule: publish as fast as we can, no burst catch-up
