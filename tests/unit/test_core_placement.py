"""Placement hints never break a limit they claim to respect; IaaS gets the safest spots."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.headroom import thermal_offset_c
from controller.core.placement import rank_servers
from controller.core.snapshot import PlacementMargins, PlacementRequest
from controller.core.synthetic import synthetic_snapshot


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["iaas", "saas"]),
    gpus=st.sampled_from([1, 2, 4, 8]),
    power=st.one_of(st.none(), st.floats(100, 700)),
    rise=st.floats(0, 30),
    oversub=st.floats(1.0, 2.5),
)
def test_candidates_respect_every_limit(seed: int, kind: str, gpus: int, power: float | None, rise: float, oversub: float) -> None:
    rng = np.random.default_rng(seed)
    snap = synthetic_snapshot(rng, num_servers=96, num_instances=30, num_vms=30, oversubscription=oversub)
    free = rng.integers(0, 9, snap.num_servers)
    snap = replace(snap, inlet_hi_c=snap.inlet_hi_c + rise, free_gpus=free.astype(np.int64))
    m = PlacementMargins()
    req = PlacementRequest("r", kind, gpus, gpu_power_w=power)  # type: ignore[arg-type]
    d = rank_servers(snap, req, now_s=0.0, margins=m)
    assert d.feasible == bool(d.candidates)
    t_margin = m.iaas_thermal_margin_c if kind == "iaas" else m.saas_thermal_margin_c
    p_margin = m.iaas_power_margin_frac if kind == "iaas" else m.saas_power_margin_frac
    z_margin = m.iaas_zone_margin_frac if kind == "iaas" else m.saas_zone_margin_frac
    scores = [c.score for c in d.candidates]
    assert scores == sorted(scores, reverse=True)
    for c in d.candidates:
        s = c.server_index
        p = power if power is not None else float(snap.gpu_tdp_w[s])
        # Recompute independently: the VM's GPUs at the forecast-high inlet, and the server's own forecast.
        offset = float(thermal_offset_c(snap)[s])
        assert 0.0 <= offset <= 8.0
        peak = max(float(snap.gpu_temp_hi_c[s]), float(snap.inlet_hi_c[s] + offset + snap.thermal_resistance_c_per_w[s] * p))
        added = gpus * max(p - float(snap.gpu_idle_power_w[s]), 0.0)
        r, z = int(snap.server_row[s]), int(snap.server_zone[s])
        assert snap.free_gpus[s] >= gpus
        assert peak <= snap.slowdown_temp_c[s] - t_margin + 1e-9
        assert snap.row_power_hi_w[r] + added <= snap.row_budget_w[r] * (1 - p_margin) + 1e-6
        assert snap.zone_heat_hi_w[z] + added <= snap.zone_capacity_w[z] * (1 - z_margin) + 1e-6
        assert abs(c.predicted_peak_gpu_temp_c - peak) < 1e-6


def test_most_headroom_first_ties_keep_whole_servers_free_and_saas_may_take_riskier_spots() -> None:
    rng = np.random.default_rng(3)
    snap = synthetic_snapshot(rng, num_servers=64, num_instances=0, num_vms=0, oversubscription=1.0)
    inlet = np.full(snap.num_servers, 30.0)
    inlet[5] = 18.0  # the coolest spot
    free = np.full(snap.num_servers, 8, dtype=np.int64)
    free[10] = 4  # a partly used server, otherwise like the rest
    snap = replace(snap, inlet_hi_c=inlet, gpu_temp_hi_c=inlet + 10, free_gpus=free,
                   thermal_resistance_c_per_w=np.full(snap.num_servers, 0.06),
                   row_power_hi_w=np.zeros(len(snap.row_ids)), zone_heat_hi_w=np.zeros(len(snap.zone_ids)))
    iaas = rank_servers(snap, PlacementRequest("a", "iaas", 4), now_s=0.0)
    assert iaas.candidates[0].server_id == snap.server_ids[5]
    assert iaas.candidates[1].server_id == snap.server_ids[10], "tie among equal spots goes to the fuller server"
    # A spot too warm for an opaque IaaS VM (6 °C margin) is still open to SaaS (2 °C margin).
    warm = np.full(snap.num_servers, 60.0)
    warm[7] = 87.0 - 4.0 - 0.06 * 700.0
    hot = replace(snap, inlet_hi_c=warm, gpu_temp_hi_c=warm)
    r_th = np.full(snap.num_servers, 0.06)
    hot = replace(hot, thermal_resistance_c_per_w=r_th)
    assert not rank_servers(hot, PlacementRequest("b", "iaas", 8), now_s=0.0).feasible
    saas = rank_servers(hot, PlacementRequest("c", "saas", 8), now_s=0.0)
    assert [c.server_index for c in saas.candidates] == [7]


def test_no_feasible_server_says_why() -> None:
    rng = np.random.default_rng(4)
    snap = synthetic_snapshot(rng, num_servers=16, num_instances=0, num_vms=0)
    hot = replace(snap, inlet_hi_c=snap.inlet_hi_c + 60.0)
    d = rank_servers(hot, PlacementRequest("c", "iaas", 8), now_s=0.0)
    assert not d.feasible and d.candidates == ()
    assert "16 thermal" in d.reason


def test_iaas_prefers_rows_whose_saas_can_absorb_a_power_cut() -> None:
    rng = np.random.default_rng(5)
    snap = synthetic_snapshot(rng, num_servers=32, num_instances=8, num_vms=0, oversubscription=1.0)
    assert len(snap.row_ids) == 2
    n = snap.num_servers
    # Row 1 holds every SaaS instance, running hot (sheddable); row 0 has none. Row 1 draws a little more.
    inst = replace(snap.instances, server_index=np.arange(16, 24, dtype=np.int64),
                   gpu_power_w=np.full(8, float(snap.gpu_tdp_w[0])))
    budget = snap.row_budget_w
    free = np.full(n, 8, dtype=np.int64)
    free[16:24] = 0
    snap = replace(snap, instances=inst, free_gpus=free, inlet_hi_c=np.full(n, 22.0), gpu_temp_hi_c=np.full(n, 40.0),
                   row_power_hi_w=np.asarray([0.70, 0.72]) * budget, zone_heat_hi_w=np.zeros(len(snap.zone_ids)))
    req = PlacementRequest("v", "iaas", 8)
    aware = rank_servers(snap, req, now_s=0.0)
    assert snap.server_row[aware.candidates[0].server_index] == 1, "the row whose SaaS can shed keeps IaaS uncapped"
    blind = rank_servers(snap, req, now_s=0.0, margins=PlacementMargins(iaas_emergency_budget_frac=None))
    assert snap.server_row[blind.candidates[0].server_index] == 0, "without the term, plain row headroom decides"
