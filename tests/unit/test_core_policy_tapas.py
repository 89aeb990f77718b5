"""The tapas policies keep their invariants inside the closed-loop simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.core.snapshot import Emergency, EmergencyPlan, Snapshot, TickActions
from foundation.topology import default_topology
from simulator.engine import Simulation
from simulator.policies import POLICIES
from simulator.policy_tapas import TapasPolicy

TRACE = "azure-llm-inference-2023/AzureLLMInferenceTrace_code.csv"


class Recording(TapasPolicy):
    """TapasPolicy that keeps what it decided, for the assertions."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.actions: list[tuple[Snapshot, TickActions]] = []

    def tick(self, snapshot: Snapshot, emergencies: list[Emergency]) -> TickActions:  # type: ignore[override]
        a = super().tick(snapshot, emergencies)
        self.actions.append((snapshot, a))
        return a


def _run(data_dir: Path, scenario: str) -> tuple[Simulation, Recording]:
    topo = default_topology(40, oversubscription=1.5)
    sim = Simulation(topo, scenario, "baseline", hours=0.08, seed=3, trace_path=data_dir / TRACE)
    pol = Recording(catalogue=sim.catalogue, topology=topo, seed=3)
    sim.policy = pol
    while not sim.finished:
        sim.step()
    return sim, pol


def test_registry_names_resolve_to_tapas_policies(data_dir: Path) -> None:
    topo = default_topology(8)
    sim = Simulation(topo, "normal", "baseline", hours=0.001, seed=0, trace_path=data_dir / TRACE)
    for name in ("tapas", "tapas-placement", "tapas-routing", "tapas-reconfig", "oracle"):
        pol = POLICIES[name](topology=topo, catalogue=sim.catalogue, seed=0)
        assert pol.name == name
    oracle = POLICIES["oracle"](topology=topo, catalogue=sim.catalogue, seed=0)
    assert isinstance(oracle, TapasPolicy) and oracle.perfect_forecasts


@pytest.mark.parametrize("scenario", ["power-failure"])
def test_power_failure_plan_meets_budget_in_time_and_actions_are_valid(data_dir: Path, scenario: str) -> None:
    sim, pol = _run(data_dir, scenario)
    m = sim.result().metrics
    assert m["invalid_actions"] == 0
    assert m["power_deadline_violation_s"] == 0
    plans: list[EmergencyPlan] = [p for _, a in pol.actions for p in a.plans]
    assert len(plans) == 1, "one cluster-wide plan for a UPS loss that hits every row"
    plan = plans[0]
    assert plan.meets_budget and plan.effective_by_s <= plan.emergency.started_at_s + plan.emergency.deadline_s
    assert plan.reason and all(c.reason for c in plan.changes)
    for snap, a in pol.actions:
        for d in a.routing.values():
            assert np.all(d.weights >= 0) and abs(d.weights.sum() - 1) < 1e-9
        for c in a.changes:
            assert sim.catalogue.option(c.to_config_id)  # known configuration
            assert c.from_config_id == snap.instances.config_ids[c.instance_index]


def test_same_seed_same_decisions(data_dir: Path) -> None:
    a, _ = _run(data_dir, "normal")
    b, _ = _run(data_dir, "normal")
    assert a.result().metrics == b.result().metrics
