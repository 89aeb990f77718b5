"""Synthetic telemetry for tests and the worker benchmark, until ``simulator.feed.TelemetryFeed`` is used.

Deterministic under ``seed``: per server a load level that drifts, GPU power that
follows it, temperatures that follow inlet + R × power with a lag. Not physics
to evaluate against; just plausible, varied, valid messages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np

from contracts.messages import GpuReading, GpuSample, InletSample, PduPowerSample, WorkloadContext


class SyntheticTelemetry:
    """GPU samples every tick, inlet every ``inlet_every`` ticks, PDU power every ``pdu_every`` ticks.

    Args:
        server_ids: servers to simulate.
        pdu_of: each server's PDU id (servers missing here get no PDU samples).
        start_at: time of the first tick (UTC).
        seed: randomness.
    """

    def __init__(self, server_ids: Sequence[str], *, pdu_of: dict[str, str] | None = None, start_at: datetime,
                 seed: int = 0, tick_s: float = 1.0, inlet_every: int = 10, pdu_every: int = 2) -> None:
        self.server_ids = list(server_ids)
        self.pdu_of = pdu_of or {}
        self.at = start_at
        self.tick_s = tick_s
        self.inlet_every = inlet_every
        self.pdu_every = pdu_every
        self.rng = np.random.default_rng(seed)
        n = len(self.server_ids)
        self.load = self.rng.uniform(0.2, 0.9, n)
        self.temp = np.full((n, 8), 45.0)
        self.inlet = self.rng.uniform(20.0, 26.0, n)
        self.ticks = 0

    def step(self) -> tuple[list[GpuSample], list[InletSample], list[PduPowerSample]]:
        """Advance one tick; returns that tick's GPU, inlet and PDU samples."""
        n = len(self.server_ids)
        self.load = np.clip(self.load + self.rng.normal(0, 0.03, n), 0.05, 1.0)
        power = 80.0 + 320.0 * self.load[:, None] + self.rng.normal(0, 8.0, (n, 8))
        steady = self.inlet[:, None] + 5.0 + 0.06 * power
        a = math.exp(-self.tick_s / 30.0)
        self.temp = a * self.temp + (1 - a) * steady + self.rng.normal(0, 0.2, (n, 8))
        gpus: list[GpuSample] = []
        for k, sid in enumerate(self.server_ids):
            gpus.append(GpuSample(
                server_id=sid, sampled_at=self.at, source="sim",
                gpus=[GpuReading(gpu_index=g, gpu_temp_c=round(float(self.temp[k, g]), 2),
                                 power_usage_w=round(float(power[k, g]), 1), sm_clock_mhz=1410.0,
                                 gpu_util_pct=round(100 * float(self.load[k]), 1), slowdown_temp_c=87.0)
                      for g in range(8)],
                workload=WorkloadContext(prefill_tokens_per_s=round(4000 * float(self.load[k]), 1),
                                         decode_tokens_per_s=round(1500 * float(self.load[k]), 1),
                                         batch_size=round(32 * float(self.load[k]), 1),
                                         config_id="llama2-70b-tp8-fp16-1410")))
        inlets: list[InletSample] = []
        if self.ticks % self.inlet_every == 0:
            inlets = [InletSample(server_id=sid, sampled_at=self.at, inlet_temp_c=round(float(self.inlet[k]), 2),
                                  source="sim") for k, sid in enumerate(self.server_ids)]
        pdus: list[PduPowerSample] = []
        if self.ticks % self.pdu_every == 0 and self.pdu_of:
            per_pdu: dict[str, float] = {}
            for k, sid in enumerate(self.server_ids):
                if sid in self.pdu_of:
                    p = self.pdu_of[sid]
                    per_pdu[p] = per_pdu.get(p, 0.0) + float(power[k].sum()) + 1200.0
            pdus = [PduPowerSample(pdu_id=p, sampled_at=self.at, power_w=round(w, 1), source="sim")
                    for p, w in sorted(per_pdu.items())]
        self.at += timedelta(seconds=self.tick_s)
        self.ticks += 1
        return gpus, inlets, pdus
