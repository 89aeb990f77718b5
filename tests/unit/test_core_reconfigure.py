"""Reconfiguration respects thermal and row limits, hysteresis, staleness and staggering."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.catalogue import Catalogue
from controller.core.reconfigure import build_option_matrix, plan_reconfiguration
from controller.core.snapshot import ReconfigParams, Snapshot
from controller.core.synthetic import synthetic_catalogue, synthetic_snapshot

CAT = synthetic_catalogue(("ep0", "ep1"))


def _hot(seed: int, rise: float, load: float, oversub: float, since_s: float = -1000.0, age_s: float = 1.0) -> Snapshot:
    rng = np.random.default_rng(seed)
    snap = synthetic_snapshot(rng, num_servers=64, num_instances=40, num_vms=8, endpoint_ids=("ep0", "ep1"),
                              load_frac=load, oversubscription=oversub, forecast_age_s=age_s)
    inst = replace(snap.instances, config_since_s=np.full(len(snap.instances), since_s))
    return replace(snap, instances=inst, inlet_hi_c=snap.inlet_hi_c + rise)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rise=st.floats(0, 25), load=st.floats(0.2, 1.2), oversub=st.floats(1.0, 2.2))
def test_plan_respects_limits(seed: int, rise: float, load: float, oversub: float) -> None:
    snap = _hot(seed, rise, load, oversub)
    p = ReconfigParams()
    changes = plan_reconfiguration(snap, CAT, now_s=0.0, params=p)
    idx = np.arange(len(snap.instances), dtype=np.int64)
    m = build_option_matrix(snap, CAT, idx)
    choice = m.current.copy()
    for c in changes:
        assert c.from_config_id == snap.instances.config_ids[c.instance_index]
        assert c.reason and c.trigger
        choice[c.instance_index] = m.config_ids[c.instance_index].index(c.to_config_id)
    rows_n = np.arange(idx.size)
    srv = snap.instances.server_index
    limit_c = snap.slowdown_temp_c[srv] - p.thermal_margin_c
    temp_new = m.temp_c[rows_n, choice]
    coolest = np.where(m.valid, m.temp_c, np.inf).min(axis=1)
    # Every instance is under its thermal limit, or at an option no hotter than the coolest + the no-slow restriction.
    for j in range(idx.size):
        if temp_new[j] > limit_c[j] + 1e-9:
            same_layout = m.valid[j] & (m.layout[j] == m.layout[j, m.current[j]])
            assert temp_new[j] <= np.where(same_layout, m.temp_c[j], np.inf).min() + 1e-9 or temp_new[j] <= coolest[j] + 1e-9
    # Hotter moves only with extra revert headroom.
    for c in changes:
        j = c.instance_index
        k = choice[j]
        if m.power_w[j, k] > m.power_w[j, m.current[j]] + 1e-6:
            assert m.temp_c[j, k] <= limit_c[j] + 1e-9
    # Row power: under the limit, or every instance of that row already at its coolest fast option.
    delta = snap.instances.num_gpus * (m.power_w[rows_n, choice] - m.power_w[rows_n, m.current])
    row_pred = snap.row_power_hi_w + np.bincount(snap.server_row[srv], weights=delta, minlength=len(snap.row_ids))
    limit_w = snap.row_budget_w * (1 - p.power_margin_frac)
    for r in np.flatnonzero(row_pred > limit_w + 1e-6):
        members = np.flatnonzero(snap.server_row[srv] == r)
        for j in members:
            same_layout = m.valid[j] & (m.layout[j] == m.layout[j, m.current[j]])
            assert m.power_w[j, choice[j]] <= np.where(same_layout, m.power_w[j], np.inf).min() + 1e-6


def test_hot_instances_are_cooled_and_say_why() -> None:
    snap = _hot(1, rise=18.0, load=0.9, oversub=1.0)
    changes = plan_reconfiguration(snap, CAT, now_s=0.0)
    thermal = [c for c in changes if c.trigger == "thermal"]
    assert thermal, "a hot cluster must get thermal reconfigurations"
    for c in thermal:
        assert CAT.option(c.to_config_id).frequency_cap_mhz <= CAT.option(c.from_config_id).frequency_cap_mhz
        assert "°C" in c.reason


def _cooled_then_relaxed(since_s: float, age_s: float) -> list[str]:
    snap = _hot(2, rise=0.0, load=0.5, oversub=1.0, since_s=since_s, age_s=age_s)
    # Every instance sits at a low-frequency option on a now-cool cluster.
    low = tuple(f"{e}-70b-tp8-fp16-1080-b64" for e in snap.instances.endpoint_ids)
    cap = np.asarray([CAT.option(c).capacity_tokens_per_s_at_slo for c in low])
    load = np.minimum(snap.instances.load_tokens_per_s, cap * 0.5)
    pf = snap.instances.prefill_frac
    power = np.asarray([CAT.option(c).gpu_power_w(x * f, x * (1 - f)) for c, x, f in zip(low, load, pf, strict=True)])
    inst = replace(snap.instances, config_ids=low, capacity_tokens_per_s_at_slo=cap, load_tokens_per_s=load,
                   gpu_power_w=power)
    snap = replace(snap, instances=inst)
    return [c.to_config_id for c in plan_reconfiguration(snap, CAT, now_s=0.0)]


def test_hysteresis_and_staleness_block_relaxing() -> None:
    assert _cooled_then_relaxed(since_s=-1000.0, age_s=1.0), "relaxes after the hysteresis time"
    assert _cooled_then_relaxed(since_s=-10.0, age_s=1.0) == [], "no relaxing within the hysteresis time"
    assert _cooled_then_relaxed(since_s=-1000.0, age_s=600.0) == [], "no hotter configuration on stale forecasts"


def test_slow_switches_are_staggered() -> None:
    snap = _hot(3, rise=14.0, load=0.9, oversub=1.0)
    p = ReconfigParams(quality_weight=0.0)  # make fp8 attractive
    changes = plan_reconfiguration(snap, CAT, now_s=0.0, params=p)
    for e in ("ep0", "ep1"):
        n = int(sum(1 for x in snap.instances.endpoint_ids if x == e))
        slow = [c for c in changes if c.slow and snap.instances.endpoint_ids[c.instance_index] == e]
        assert len(slow) <= max(1, int(np.floor(p.max_slow_frac * n)))
    assert not [c for c in plan_reconfiguration(snap, CAT, now_s=0.0, params=p, allow_slow=False) if c.slow]


def _lean_layout_catalogue() -> Catalogue:
    """The synthetic catalogue with its fp8 layout at fp16 quality: a layout that serves more on less power."""
    per = {e: tuple(replace(o, quality_score=0.689) if o.precision == "fp8" else o for o in CAT.options[e])
           for e in CAT.endpoint_ids}
    return Catalogue.from_options(per, CAT.defaults)


def test_efficient_option_needs_default_quality_and_capacity() -> None:
    # fp8 loses quality in the synthetic catalogue: the default is already the efficient choice.
    assert CAT.efficient("ep0").config_id == CAT.defaults["ep0"]
    lean = _lean_layout_catalogue()
    eff = lean.efficient("ep0")
    d = lean.default("ep0")
    assert eff.precision == "fp8"
    assert eff.capacity_tokens_per_s_at_slo >= d.capacity_tokens_per_s_at_slo
    load = d.capacity_tokens_per_s_at_slo
    assert eff.gpu_power_w(0.9 * load, 0.1 * load) < d.gpu_power_w(0.9 * load, 0.1 * load)


def test_efficient_home_layout_migrates_instances_staggered() -> None:
    lean = _lean_layout_catalogue()
    snap = _hot(4, rise=0.0, load=0.3, oversub=1.0)
    # The pull toward home (layout_weight) must outweigh the reload (switch_weight × (90 s + 1)) to move.
    home = ReconfigParams(home_layout="efficient", layout_weight=3.0)
    moved = [c for c in plan_reconfiguration(snap, lean, now_s=0.0, params=home) if c.slow]
    assert moved, "a calm cluster moves toward the leaner layout"
    assert all(lean.option(c.to_config_id).precision == "fp8" for c in moved)
    for e in ("ep0", "ep1"):
        n = sum(1 for x in snap.instances.endpoint_ids if x == e)
        assert sum(1 for c in moved if snap.instances.endpoint_ids[c.instance_index] == e) <= max(
            1, int(np.floor(home.max_slow_frac * n)))
    # With the default as home nothing reloads on a calm cluster, and fast-knob-only plans never reload.
    assert not [c for c in plan_reconfiguration(snap, lean, now_s=0.0, params=replace(home, home_layout="default"))
                if c.slow]
    assert not [c for c in plan_reconfiguration(snap, lean, now_s=0.0, params=home, allow_slow=False) if c.slow]
