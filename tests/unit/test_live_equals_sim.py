"""What ``tapas simulate`` evaluates is what ``tapas controller`` runs, tick by tick.

A short simulation (60 servers) of each scenario in which every decision tick's snapshot
and emergencies are also fed to a live :class:`~controller.service.Controller` in enforce
mode wired to the same registered policy (its own instance, same knobs). At every tick the
actions behind the Controller's outgoing weights, commands and hints equal the
simulator's, and the messages carry exactly those actions: every published weight is the
action's weight, every command comes from an action, every action is published or
accounted for (already in flight, or refused by the safety gate with an event saying so).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from contracts import ControlEvent, PlacementHint, ReconfigCommand, RoutingWeights
from controller.core.policy import make_policy
from controller.core.snapshot import Emergency, PlacementDecision, PlacementRequest, Snapshot, TickActions
from controller.service import Controller, Outgoing
from controller.translate import ts
from foundation.settings import ControllerSettings
from simulator.engine import Simulation
from tests.policy_harness import SCENARIOS, Recorder, actions_key, simulate

SERVERS = 60
HOURS = 0.2


class Mirror:
    """Feeds the simulator's decisions' inputs to a live Controller and checks its outputs against the actions."""

    def __init__(self, sim: Simulation, name: str) -> None:
        policy = make_policy(name, catalogue=sim.catalogue, topology=sim.topo, seed=sim.seed)
        settings = ControllerSettings(metrics_port=0, mode="enforce", min_frequency_mhz=100.0,
                                      max_commands_per_instance_per_min=10_000, min_capacity_frac=0.0)
        self.c = Controller(sim.topo, sim.catalogue, settings, started_at=ts(0.0), policy=policy)
        self.ticks = 0
        self.commands = 0
        self.weights = 0
        self.hints = 0
        self.reverts = 0

    def on_tick(self, snap: Snapshot, emergencies: Sequence[Emergency], sim_actions: TickActions) -> None:
        now = ts(snap.now_s)
        out = self.c.decide(snap, emergencies, now=now)
        live = self.c.last_actions
        assert live is not None
        assert actions_key(live) == actions_key(sim_actions), f"tick at {snap.now_s:.0f} s: the decisions differ"
        self.ticks += 1
        self._check_messages(out, live, snap)

    def on_place(self, snap: Snapshot, req: PlacementRequest, sim_decision: PlacementDecision) -> None:
        hint = self.c.hint_for(snap, req, now=ts(snap.now_s))
        assert isinstance(hint, PlacementHint) and hint.feasible == sim_decision.feasible
        assert [(x.server_id, x.rank) for x in hint.candidates] == [
            (x.server_id, x.rank) for x in sim_decision.candidates]
        self.hints += 1

    def _check_messages(self, out: list[Outgoing], a: TickActions, snap: Snapshot) -> None:
        msgs = [o.message for o in out]
        weights = {m.endpoint_id: m for m in msgs if isinstance(m, RoutingWeights)}
        assert set(weights) == set(a.routing)
        for e, d in a.routing.items():
            m = weights[e]
            assert [w.instance_id for w in m.weights] == list(d.instance_ids)
            assert np.allclose([w.weight for w in m.weights], d.weights, atol=1e-12)
            assert [w.state == "drain" for w in m.weights] == d.draining.tolist()
            assert not m.advisory
        self.weights += len(weights)
        cmds = [m for m in msgs if isinstance(m, ReconfigCommand)]
        assert all(m.mode == "enforce" for m in cmds)
        refused = {e.detail for e in msgs if isinstance(e, ControlEvent) and e.event_kind == "safety_refused"}
        changes = [*a.changes, *(c for p in a.plans for c in p.changes)]
        wanted = {(c.instance_id, c.to_config_id) for c in changes}
        carried = {(m.instance_id, m.params.config_id) for m in cmds if m.params.config_id is not None}
        assert carried <= wanted, "every configuration command comes from a change the policy decided"
        for iid, cfg in wanted - carried:
            in_flight = self.c.intents.get(iid, (None,))[0] == cfg
            assert in_flight or any(iid in r for r in refused), f"{iid} -> {cfg} neither published nor accounted for"
        caps = [*a.caps, *(c for p in a.plans for c in p.caps)]
        cap_wanted = {(c.vm_id or c.server_id, c.power_limit_w) for c in caps if c.power_limit_w is not None}
        cap_sent = {(m.instance_id or m.server_id, m.params.power_limit_w) for m in cmds
                    if m.action == "set_power_limit"}
        assert cap_sent <= cap_wanted, "every power-limit command comes from a cap the policy decided"
        for target, limit in cap_wanted - cap_sent:
            held = self.c.cap_intents.get((target, "set_power_limit"))
            assert held is not None and held[0][0] == limit, f"cap {target} {limit} neither published nor in force"
        reverts = {m.server_id for m in cmds if m.action == "revert"}
        assert reverts == {snap.server_ids[s] for s in a.released_caps}
        self.commands += len(cmds)
        self.reverts += len(reverts)


def _run(data_dir: Path, scenario: str, name: str = "tapas") -> Mirror:
    mirror: dict[str, Mirror] = {}

    def wrap(sim: Simulation) -> Recorder:
        m = mirror["m"] = Mirror(sim, name)
        return Recorder(sim.policy, on_tick=m.on_tick, on_place=m.on_place)

    simulate(data_dir, scenario, name, servers=SERVERS, hours=HOURS, seed=2, wrap=wrap)
    return mirror["m"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_live_controller_publishes_the_simulated_decisions(data_dir: Path, scenario: str) -> None:
    m = _run(data_dir, scenario)
    assert m.ticks > 100 and m.hints > 0
    if scenario in ("power-failure", "cooling-failure"):
        assert m.commands > 0, "the emergency produced commands"
    if scenario == "power-failure":
        assert m.reverts > 0, "the emergency ended inside the run and its caps were reverted"
