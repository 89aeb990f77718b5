"""The core never proposes a frequency cap below the operator's safety floor (the live gate would refuse it)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.emergency import plan_emergency
from controller.core.reconfigure import plan_reconfiguration
from controller.core.snapshot import ConfigChange, Emergency, ReconfigParams
from controller.core.synthetic import synthetic_catalogue, synthetic_snapshot

CAT = synthetic_catalogue(("ep0", "ep1"))
FREQS = sorted({o.frequency_cap_mhz for e in CAT.options for o in CAT.options[e]})


def _assert_floor(changes: tuple[ConfigChange, ...] | list[ConfigChange], floor_mhz: float) -> None:
    for c in changes:
        assert CAT.option(c.to_config_id).frequency_cap_mhz >= floor_mhz, c.reason


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rise=st.floats(0, 25), load=st.floats(0.2, 1.2), oversub=st.floats(1.0, 2.2),
       floor_mhz=st.sampled_from(FREQS[:-1]))
def test_reconfiguration_never_below_floor(seed: int, rise: float, load: float, oversub: float, floor_mhz: float) -> None:
    rng = np.random.default_rng(seed)
    snap = synthetic_snapshot(rng, num_servers=64, num_instances=40, num_vms=8, endpoint_ids=("ep0", "ep1"),
                              load_frac=load, oversubscription=oversub)
    snap = replace(snap, inlet_hi_c=snap.inlet_hi_c + rise,
                   instances=replace(snap.instances, config_since_s=np.full(len(snap.instances), -1000.0)))
    changes = plan_reconfiguration(snap, CAT, now_s=0.0, params=ReconfigParams(min_frequency_mhz=floor_mhz))
    _assert_floor(changes, floor_mhz)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), frac=st.floats(0.5, 0.95), rise=st.floats(2, 20), load=st.floats(0.2, 1.1),
       floor_mhz=st.sampled_from(FREQS[:-1]), kind=st.sampled_from(["power", "cooling"]))
def test_emergency_never_below_floor(seed: int, frac: float, rise: float, load: float, floor_mhz: float, kind: str) -> None:
    rng = np.random.default_rng(seed)
    snap = synthetic_snapshot(rng, num_servers=48, num_instances=24, num_vms=8, endpoint_ids=("ep0", "ep1"),
                              servers_per_row=16, oversubscription=1.0, load_frac=load)
    if kind == "power":
        e = Emergency("e", "power", "cluster", 0, started_at_s=0.0, ends_at_s=300.0, budget_frac=frac)
    else:
        e = Emergency("e", "cooling", "zone", 0, started_at_s=0.0, ends_at_s=300.0, supply_temp_rise_c=rise)
    plan = plan_emergency(snap, CAT, e, now_s=0.0, min_frequency_mhz=floor_mhz)
    _assert_floor(plan.changes, floor_mhz)
    for cap in plan.caps:
        assert cap.frequency_cap_mhz is None or cap.frequency_cap_mhz >= floor_mhz


def test_floor_bites_without_it() -> None:
    """Without a floor the same hot, power-cut cluster does choose the lowest frequencies (so the tests above can fail)."""
    lows = 0
    for seed in range(6):
        snap = synthetic_snapshot(np.random.default_rng(seed), num_servers=48, num_instances=24, num_vms=0,
                                  endpoint_ids=("ep0", "ep1"), servers_per_row=16, oversubscription=1.0, load_frac=0.8)
        e = Emergency("e", "power", "cluster", 0, started_at_s=0.0, ends_at_s=300.0, budget_frac=0.5)
        plan = plan_emergency(snap, CAT, e, now_s=0.0)
        lows += sum(CAT.option(c.to_config_id).frequency_cap_mhz < FREQS[1] for c in plan.changes)
    assert lows > 0
