"""The simulator as a telemetry source: wire messages per tick, and recorded telemetry as a DataFrame.

``TelemetryFeed`` wraps a :class:`simulator.engine.Simulation` and turns each tick into
the messages real collectors publish: a ``GpuSample`` per server every tick (NVML/DCGM
fields, clock-event reasons set when a GPU is in thermal slowdown or its row is power
capped, and the serving-layer ``WorkloadContext`` of SaaS servers), an ``InletSample``
per server every ``inlet_every_s`` (10 s, Redfish-like), a ``PduPowerSample`` per rack
PDU every ``pdu_every_s`` (2 s) and ``ControlEvent``s for scenario events and throttle
starts. Pacing (real time or accelerated) is the caller's (``ingest.sources.sim``).

``record_telemetry`` runs a scenario and returns one row per server per tick with the
fields of ``forecasting.state.Observation`` plus ``rack_id,row_id,zone_id,pdu_id`` — the
training and backtesting data of the forecasting team.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from contracts.messages import (
    ClockEventReason,
    ControlEvent,
    GpuReading,
    GpuSample,
    InletSample,
    PduPowerSample,
    WorkloadContext,
)
from foundation.topology import Topology
from simulator.engine import SimParams, Simulation

OBSERVATION_COLUMNS = (
    "server_id", "at_s", "hottest_gpu_temp_c", "gpu_power_w", "server_power_w", "inlet_temp_c",
    "mean_gpu_util_pct", "prefill_tokens_per_s", "decode_tokens_per_s", "batch_size", "frequency_cap_mhz",
    "config_id", "num_gpus", "slowdown_temp_c", "hottest_gpu_power_w",
)
LOCATION_COLUMNS = ("rack_id", "row_id", "zone_id", "pdu_id")


@dataclass
class TelemetryTick:
    """Everything measured in one tick."""

    at: datetime
    gpu: list[GpuSample] = field(default_factory=list)
    inlet: list[InletSample] = field(default_factory=list)
    pdu: list[PduPowerSample] = field(default_factory=list)
    events: list[ControlEvent] = field(default_factory=list)


class TelemetryFeed:
    """Step a closed-loop simulation and emit the telemetry a real cluster would.

    Args:
        topology: the cluster.
        seed: same seed, same telemetry.
        scenario: ``normal``, ``load-spike``, ``cooling-failure`` or ``power-failure``.
        policy: registered policy name that drives the simulated cluster.
        start_at: wall-clock instant of simulated time 0 (timezone-aware).
        tick_s: simulated seconds per tick.
        trace_path: Azure-schema trace (settings' default when None).
        hours: length of the simulated run (scenario events happen at 40 % of it).
    """

    def __init__(
        self,
        topology: Topology,
        *,
        seed: int,
        scenario: str = "normal",
        policy: str = "baseline",
        start_at: datetime,
        tick_s: float = 1.0,
        trace_path: Path | str | None = None,
        hours: float = 24.0,
        inlet_every_s: float = 10.0,
        pdu_every_s: float = 2.0,
    ) -> None:
        if start_at.tzinfo is None:
            raise ValueError("start_at must be timezone-aware (UTC)")
        self.topology = topology
        self.start_at = start_at
        self.sim = Simulation(topology, scenario, policy, hours=hours, seed=seed, trace_path=trace_path,
                              params=SimParams(tick_s=tick_s))
        self.tick_s = tick_s
        self.inlet_every = max(1, int(round(inlet_every_s / tick_s)))
        self.pdu_every = max(1, int(round(pdu_every_s / tick_s)))
        self._events_seen = 0
        self._scenario_announced = False
        t = topology
        self._rack_servers = [np.asarray([t.by_id[s].index for s in r.server_ids], dtype=np.int64) for r in t.racks]

    @property
    def finished(self) -> bool:
        """True when the simulated run is over."""
        return self.sim.finished

    def step(self) -> TelemetryTick:
        """Advance one tick and return its samples."""
        sim = self.sim
        k = sim.tick_index
        sim.step()
        at = self.start_at + timedelta(seconds=k * self.tick_s)
        tick = TelemetryTick(at=at)
        tick.gpu = self._gpu_samples(at)
        if k % self.inlet_every == 0:
            tick.inlet = [
                InletSample(server_id=sid, sampled_at=at, inlet_temp_c=round(float(sim.inlet[i]), 2),
                            chassis_power_w=round(float(sim.server_power[i]), 1), source="sim",
                            sensor_id=f"/redfish/v1/Chassis/{sid}/Sensors/IntakeTemp")
                for i, sid in enumerate(sim.server_ids)
            ]
        if k % self.pdu_every == 0:
            tick.pdu = [
                PduPowerSample(pdu_id=rack.pdu_id, sampled_at=at,
                               power_w=round(float(sim.server_power[self._rack_servers[j]].sum()), 1),
                               server_ids=list(rack.server_ids), source="sim")
                for j, rack in enumerate(self.topology.racks)
            ]
        tick.events = self._events(at, k)
        return tick

    def _gpu_samples(self, at: datetime) -> list[GpuSample]:
        sim = self.sim
        temps = np.round(sim.gpu_temp, 2)
        power = np.round(sim.gpu_power, 1)
        row_cap = sim.pm_cap[sim.srv_row]
        clocks = np.minimum(np.minimum(sim.gpu_clock, sim.pol_fcap), row_cap[:, None]) * sim.maxf[:, None]
        util = np.clip((sim.gpu_power - sim.idle[:, None]) / (sim.tdp - sim.idle)[:, None], 0.0, 1.0) * 100.0
        thermal = sim.gpu_clock < 0.999
        capped = np.repeat((row_cap < 0.999)[:, None], sim.G, axis=1)
        reasons = np.where(thermal, int(ClockEventReason.HW_THERMAL_SLOWDOWN), 0) | np.where(
            capped, int(ClockEventReason.SW_POWER_CAP), 0)
        out: list[GpuSample] = []
        for i, sid in enumerate(sim.server_ids):
            gpus = [
                GpuReading(gpu_index=g, gpu_temp_c=float(temps[i, g]), power_usage_w=float(power[i, g]),
                           power_limit_w=float(sim.tdp[i]), sm_clock_mhz=round(float(clocks[i, g]), 0),
                           gpu_util_pct=round(float(util[i, g]), 1), clocks_event_reasons=int(reasons[i, g]),
                           slowdown_temp_c=float(sim.slowdown[i]))
                for g in range(sim.G)
            ]
            out.append(GpuSample(server_id=sid, sampled_at=at, gpus=gpus, workload=self._workload(i), source="sim"))
        return out

    def _workload(self, server: int) -> WorkloadContext | None:
        sim = self.sim
        j = int(sim.srv_inst[server])
        if j < 0:
            vms = sorted({int(v) for v in sim.gpu_vm[server] if v >= 0})
            return WorkloadContext(instance_ids=[sim.vm_ids[v] for v in vms]) if vms else None
        c = int(sim.inst_cfg[j])
        return WorkloadContext(
            prefill_tokens_per_s=round(float(sim.inst_prefill_tps[j]), 1),
            decode_tokens_per_s=round(float(sim.inst_decode_tps[j]), 1),
            batch_size=round(float(sim.inst_batch[j]), 2),
            config_id=sim.cfg_ids[c],
            frequency_cap_mhz=round(float(sim.c_ffrac[c] * sim.maxf[server]), 0),
            instance_ids=[sim.inst_ids[j]],
        )

    def _events(self, at: datetime, k: int) -> list[ControlEvent]:
        sim = self.sim
        out: list[ControlEvent] = []
        win = sim.scenario.event_window_s
        t = k * self.tick_s
        if win is not None and not self._scenario_announced and t >= win[0]:
            self._scenario_announced = True
            ends = self.start_at + timedelta(seconds=win[1])
            if sim.scenario.name == "power-failure":
                out.append(ControlEvent(event_id=f"sim-{k}-power", event_kind="power_emergency", severity="critical",
                                        occurred_at=at, ends_at=ends, budget_frac=sim.scenario.budget_frac(t),
                                        detail="simulated UPS loss: rows limited to a fraction of their budget"))
            elif sim.scenario.name == "cooling-failure":
                from simulator.scenarios import COOLING_RISE_C, failed_zone

                out.append(ControlEvent(event_id=f"sim-{k}-cooling", event_kind="cooling_failure", severity="critical",
                                        occurred_at=at, ends_at=ends, domain_kind="zone",
                                        domain_id=self.topology.zone_ids[failed_zone(len(self.topology.zones))],
                                        supply_temp_rise_c=COOLING_RISE_C, detail="simulated air-handler failure"))
        new = sim.events[self._events_seen:]
        self._events_seen = len(sim.events)
        for n, e in enumerate(new[:100]):
            out.append(ControlEvent(event_id=f"sim-{k}-{n}", event_kind=e["kind"], severity="warning", occurred_at=at,
                                    domain_kind=e["domain_kind"], domain_id=e["domain_id"], detail=e["detail"]))
        return out


def observation_rows(sim: Simulation, at_s: float) -> dict[str, Any]:
    """Column arrays of the current tick, one entry per server (Observation fields + location)."""
    n = sim.N
    t = sim.topo
    srv_inst = sim.srv_inst
    has = srv_inst >= 0
    j = np.where(has, srv_inst, 0)
    pre = np.where(has, sim.inst_prefill_tps[j] if sim.I else 0.0, 0.0)
    dec = np.where(has, sim.inst_decode_tps[j] if sim.I else 0.0, 0.0)
    batch = np.where(has, sim.inst_batch[j] if sim.I else 0.0, 0.0)
    fcap = np.where(has, sim.c_ffrac[sim.inst_cfg[j]] * sim.maxf if sim.I else np.nan, np.nan)
    util = np.clip((sim.gpu_power - sim.idle[:, None]) / (sim.tdp - sim.idle)[:, None], 0.0, 1.0).mean(axis=1) * 100.0
    cfg = [sim.cfg_ids[int(sim.inst_cfg[int(x)])] if x >= 0 else None for x in srv_inst]
    return {
        "server_id": list(sim.server_ids),
        "at_s": np.full(n, at_s),
        "hottest_gpu_temp_c": sim.gpu_temp.max(axis=1),
        "gpu_power_w": sim.gpu_power.sum(axis=1),
        "server_power_w": sim.server_power.copy(),
        "inlet_temp_c": sim.inlet.copy(),
        "mean_gpu_util_pct": util,
        "prefill_tokens_per_s": pre,
        "decode_tokens_per_s": dec,
        "batch_size": batch,
        "frequency_cap_mhz": fcap,
        "config_id": cfg,
        "num_gpus": np.full(n, sim.G),
        "slowdown_temp_c": sim.slowdown.copy(),
        "hottest_gpu_power_w": sim.gpu_power[np.arange(n), sim.gpu_temp.argmax(axis=1)],
        "rack_id": [s.rack_id for s in t.servers],
        "row_id": [s.row_id for s in t.servers],
        "zone_id": [s.zone_id for s in t.servers],
        "pdu_id": [s.pdu_id for s in t.servers],
    }


def record_telemetry(
    topology: Topology,
    *,
    hours: float,
    seed: int,
    scenario: str,
    tick_s: float = 1.0,
    policy: str = "baseline",
    trace_path: Path | str | None = None,
    start_epoch_s: float = 1_700_000_000.0,
    config_sweep_s: float | None = None,
) -> Any:
    """Run a scenario and return a pandas DataFrame, one row per server per tick (``at_s`` in epoch seconds).

    With ``config_sweep_s`` the policy is wrapped in :class:`simulator.sweep.ConfigSweep`, which
    moves a tenth of the SaaS instances to other feasible configurations every that many
    seconds, so the history holds configuration changes to learn from.
    """
    import pandas as pd

    sim = Simulation(topology, scenario, policy, hours=hours, seed=seed, trace_path=trace_path,
                     params=SimParams(tick_s=tick_s))
    if config_sweep_s is not None:
        from simulator.sweep import ConfigSweep

        sim.policy = ConfigSweep(sim.policy, sim.catalogue, every_s=config_sweep_s, seed=seed)
    columns = [*OBSERVATION_COLUMNS, *LOCATION_COLUMNS]
    parts: dict[str, list[Any]] = {c: [] for c in columns}
    while not sim.finished:
        at_s = start_epoch_s + sim.tick_index * tick_s
        sim.step()
        rows = observation_rows(sim, at_s)
        for c in columns:
            parts[c].append(np.asarray(rows[c], dtype=object if c in _OBJECT_COLUMNS else None))
    if not parts["server_id"]:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame({c: np.concatenate(parts[c]) for c in columns})[columns]


_OBJECT_COLUMNS = {"server_id", "config_id", *LOCATION_COLUMNS}
