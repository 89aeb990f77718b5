"""Shared by the policy conformance and live = simulated tests: run the simulator with a policy wrapped so every
decision is recorded (and optionally mirrored to a live Controller)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.core.snapshot import (
    Emergency,
    PlacementDecision,
    PlacementRequest,
    Policy,
    Snapshot,
    TickActions,
)
from foundation.topology import default_topology
from simulator.engine import Simulation

TRACE = "azure-llm-inference-2023/AzureLLMInferenceTrace_code.csv"
SCENARIOS = ("normal", "load-spike", "cooling-failure", "power-failure")


@dataclass
class Recorder:
    """A policy that forwards to ``inner`` and keeps every (snapshot, emergencies, actions) and placement."""

    inner: Policy
    on_tick: Callable[[Snapshot, Sequence[Emergency], TickActions], None] | None = None
    on_place: Callable[[Snapshot, PlacementRequest, PlacementDecision], None] | None = None
    ticks: list[tuple[Snapshot, tuple[Emergency, ...], TickActions]] = field(default_factory=list)
    placements: list[tuple[Snapshot, PlacementRequest, PlacementDecision]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    def __getattr__(self, attr: str) -> Any:  # initial_config, perfect_forecasts, ...
        return getattr(self.inner, attr)

    def place(self, snapshot: Snapshot, request: PlacementRequest) -> PlacementDecision:
        d = self.inner.place(snapshot, request)
        self.placements.append((snapshot, request, d))
        if self.on_place is not None:
            self.on_place(snapshot, request, d)
        return d

    def tick(self, snapshot: Snapshot, emergencies: Sequence[Emergency]) -> TickActions:
        a = self.inner.tick(snapshot, emergencies)
        self.ticks.append((snapshot, tuple(emergencies), a))
        if self.on_tick is not None:
            self.on_tick(snapshot, emergencies, a)
        return a


def simulate(data_dir: Path, scenario: str, policy: str, *, servers: int, hours: float, seed: int,
             wrap: Callable[[Simulation], Recorder] | None = None, knobs: dict[str, Any] | None = None,
             ) -> tuple[Simulation, Recorder]:
    """Run one short simulation with ``policy`` recorded (``wrap`` builds the recorder around the sim's policy)."""
    topo = default_topology(servers, oversubscription=1.5)
    sim = Simulation(topo, scenario, policy, hours=hours, seed=seed, trace_path=data_dir / TRACE, knobs=knobs)
    rec = wrap(sim) if wrap is not None else Recorder(sim.policy)
    sim.policy = rec
    while not sim.finished:
        sim.step()
    return sim, rec


def actions_key(a: TickActions) -> tuple[Any, ...]:
    """A comparable form of one tick's actions (numpy arrays as tuples)."""
    routing = tuple(sorted((e, d.instance_ids, tuple(np.round(d.weights, 12)), tuple(d.draining.tolist()))
                           for e, d in a.routing.items()))
    plans = tuple((p.emergency.event_id, p.changes, p.caps, p.meets_budget, p.effective_by_s) for p in a.plans)
    return routing, a.changes, a.caps, tuple(sorted(a.released_caps)), plans
