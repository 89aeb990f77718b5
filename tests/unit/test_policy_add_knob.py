"""The docs/controller.md recipe "Add a configuration knob", followed in a test.

Step 1 of the recipe adds a field to ``PolicyKnobs`` and reads it where its rule lives in
``TapasPolicy``; here a subclass of each stands in for that edit (registered under
``tapas``). Nothing else is touched, and the knob reaches the live controller through
``TAPAS_CONTROLLER__KNOBS`` and the simulator through ``knobs=`` (``tapas simulate --knob``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from contracts import ReconfigCommand
from contracts.errors import ConfigError
from controller.core import policy as core_policy
from controller.core.policy import PolicyKnobs, TapasPolicy
from controller.core.snapshot import Emergency, Policy, Snapshot, TickActions
from controller.service import Controller
from foundation.settings import ControllerSettings
from tests.controller_world import T0, forecast, gpu_sample, world_catalogue, world_topology
from tests.policy_harness import simulate


@dataclass(frozen=True)
class KnobsWithLimit(PolicyKnobs):
    max_changes_per_tick: int = 0
    """Most configuration changes one tick issues (0: no limit)."""


class LimitedPolicy(TapasPolicy):
    def tick(self, snapshot: Snapshot, emergencies: Sequence[Emergency]) -> TickActions:
        a = super().tick(snapshot, emergencies)
        n = getattr(self.k, "max_changes_per_tick", 0)
        return replace(a, changes=a.changes[:n]) if n else a


def _factory(*, knobs: PolicyKnobs | None = None, **kw: Any) -> Policy:
    return LimitedPolicy(name="tapas", knobs=knobs or KnobsWithLimit(), **kw)


_factory.knobs_type = KnobsWithLimit  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(core_policy.POLICIES, "tapas", _factory)


def _hot_commands(**settings: object) -> set[str]:
    c = Controller(world_topology(8), world_catalogue(), ControllerSettings(metrics_port=0, **settings),  # type: ignore[arg-type]
                   started_at=T0)

    def feed(at: datetime, hot: bool) -> None:
        for i, s in enumerate(c.topology.server_ids):
            h = hot and i < 3
            c.handle("f", forecast(s, at, temp_c=84 if h else 60, hi_c=90 if h else 64, inlet_c=50 if h else 24), now=at)
            if i < 4:
                c.handle("g", gpu_sample(s, at), now=at)

    feed(T0, False)
    c.tick(T0)
    t1 = T0 + timedelta(seconds=6)
    feed(t1, True)
    return {o.message.instance_id or "" for o in c.tick(t1) if isinstance(o.message, ReconfigCommand)}


def test_the_new_knob_reaches_the_live_controller_through_settings() -> None:
    assert len(_hot_commands()) >= 2, "three hot instances: several changes by default"
    assert len(_hot_commands(knobs={"max_changes_per_tick": 1})) == 1
    with pytest.raises(ConfigError, match="max_changes_per_tic"):
        _hot_commands(knobs={"max_changes_per_tic": 1})


def test_the_new_knob_reaches_the_simulator(data_dir: Path) -> None:
    def most_changes(knobs: dict[str, Any]) -> int:
        sim, rec = simulate(data_dir, "load-spike", "tapas", servers=60, hours=0.15, seed=1, knobs=knobs)
        assert isinstance(rec.inner, LimitedPolicy)
        return max(len(a.changes) for _s, _e, a in rec.ticks)

    assert most_changes({}) >= 2
    assert most_changes({"max_changes_per_tick": 1}) == 1
