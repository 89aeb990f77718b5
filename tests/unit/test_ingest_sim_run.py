"""The simulator source's pacing and the shared collector loop."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts import GpuSample, InletSample, PduPowerSample, SourceError
from ingest.run import StdoutSink, poll_rounds, run_collector
from ingest.sources.sim import SimSource, build_feed
from tests.samples import example_messages


@dataclass
class FakeClock:
    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(round(s, 6))
        self.now += s


@dataclass
class Tick:
    gpu: list[Any]
    inlet: list[Any] = field(default_factory=list)
    pdu: list[Any] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)


class CountingFeed:
    def __init__(self, ticks: int) -> None:
        self.left = ticks

    @property
    def finished(self) -> bool:
        return self.left == 0

    def step(self) -> Tick:
        self.left -= 1
        return Tick(gpu=[self.left])


def test_sim_pacing_is_tick_over_speed_and_stops_when_finished() -> None:
    clock = FakeClock()
    rounds = list(SimSource(CountingFeed(4), tick_s=1.0, speed=4.0, clock=clock, sleep=clock.sleep).rounds())
    assert rounds == [[3], [2], [1], [0]]
    assert clock.slept == [0.25] * 4


def test_real_simulator_feed_produces_contract_messages() -> None:
    feed = build_feed(num_servers=4, seed=2, scenario="normal", policy="baseline", tick_s=1.0,
                      start_at=datetime(2026, 11, 25, tzinfo=UTC))
    rounds = SimSource(feed, speed=0).rounds()
    msgs = [m for _ in range(10) for m in next(rounds)]
    kinds = {type(m) for m in msgs}
    assert {GpuSample, InletSample, PduPowerSample} <= kinds
    assert len({m.server_id for m in msgs if isinstance(m, GpuSample)}) == 4


def test_poll_rounds_keeps_the_interval_and_survives_a_failed_read() -> None:
    clock = FakeClock()
    calls = iter([["r1"], SourceError("bmc timeout"), ["r3"]])

    def read() -> list[Any]:
        item = next(calls)
        if isinstance(item, Exception):
            clock.now += 0.3
            raise item
        clock.now += 0.2  # each read takes 0.2 s
        return item

    rounds = poll_rounds(read, interval_s=1.0, clock=clock, sleep=clock.sleep)
    assert next(rounds) == ["r1"]
    assert next(rounds) == ["r3"]  # the failure was logged and skipped
    assert clock.slept == [0.8, 0.7]


def test_once_raises_the_source_error() -> None:
    def read() -> list[Any]:
        raise SourceError("bmc timeout")

    with pytest.raises(SourceError):
        list(poll_rounds(read, interval_s=1.0, once=True))


def test_stdout_sink_prints_json_lines() -> None:
    out = io.StringIO()
    msgs = example_messages()[:3]
    done = run_collector(iter([msgs, msgs]), StdoutSink(out), once=True)
    assert done == 1
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["kind"] for x in lines] == ["gpu_sample", "inlet_sample", "pdu_power_sample"]
