"""Every registered policy keeps the decision contract inside the closed-loop simulator.

Weights are >= 0 and sum to 1 per endpoint, drained instances get 0, every change names a
known option of the instance's endpoint whose ``from`` is the current configuration, every
emergency plan meets its budget by its deadline, and the same seed gives the same actions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.core.policy import POLICIES
from tests.policy_harness import actions_key, simulate

SERVERS = 60
HOURS = 0.1


@pytest.mark.parametrize("scenario", ["power-failure", "cooling-failure"])
@pytest.mark.parametrize("name", list(POLICIES))
def test_registered_policy_keeps_the_decision_contract(data_dir: Path, name: str, scenario: str) -> None:
    sim, rec = simulate(data_dir, scenario, name, servers=SERVERS, hours=HOURS, seed=5)
    assert rec.ticks, "the engine asked the policy"
    cat = sim.catalogue
    n_changes = 0
    for snap, emergencies, a in rec.ticks:
        inst = snap.instances
        for e, d in a.routing.items():
            assert np.all(d.weights >= 0) and abs(float(d.weights.sum()) - 1.0) < 1e-9, e
            assert np.all(d.weights[d.draining] == 0.0), f"{e}: a drained instance gets weight"
            assert set(d.instance_ids) == {inst.instance_ids[i] for i in inst.of_endpoint(e)}
        plan_changes = [c for p in a.plans for c in p.changes]
        for c in (*a.changes, *plan_changes):
            n_changes += 1
            assert c.from_config_id == inst.config_ids[c.instance_index], "from is the current configuration"
            endpoint = inst.endpoint_ids[c.instance_index]
            assert c.to_config_id in {o.config_id for o in cat.options[endpoint]}, "a known option of its endpoint"
            assert c.instance_id == inst.instance_ids[c.instance_index] and c.reason
        for p in a.plans:
            deadline = p.emergency.started_at_s + p.emergency.deadline_s
            assert p.meets_budget and p.effective_by_s <= deadline, p.reason
            assert any(p.emergency.event_id.split("+")[0] == e.event_id for e in emergencies)
        assert all(0 <= s < snap.num_servers for s in a.released_caps)
    if name in ("tapas", "tapas-reconfig", "oracle"):
        assert any(a.plans for _s, _e, a in rec.ticks), "the emergency was planned"
        assert n_changes > 0, "the emergency changed configurations"
    if name == "baseline":
        assert n_changes == 0 and not any(a.routing for _s, _e, a in rec.ticks)


@pytest.mark.parametrize("name", list(POLICIES))
def test_same_seed_same_actions(data_dir: Path, name: str) -> None:
    _, a = simulate(data_dir, "power-failure", name, servers=SERVERS, hours=HOURS / 2, seed=9)
    _, b = simulate(data_dir, "power-failure", name, servers=SERVERS, hours=HOURS / 2, seed=9)
    assert [actions_key(x) for _s, _e, x in a.ticks] == [actions_key(x) for _s, _e, x in b.ticks]
    assert [(r.request_id, d.candidates[0].server_index if d.candidates else -1) for _s, r, d in a.placements] == [
        (r.request_id, d.candidates[0].server_index if d.candidates else -1) for _s, r, d in b.placements]
