"""Snapshot builder: latest forecasts and workloads + topology → the core's struct-of-arrays Snapshot."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from contracts import DomainForecast, HorizonForecast, ServerForecast
from controller.core.belief import server_limit_c
from controller.core.headroom import thermal_headroom_c
from controller.service import Controller
from controller.snapshot_builder import NEVER_S, LiveState, build_snapshot
from foundation.settings import ControllerSettings
from tests.controller_world import (
    DEFAULT_CONFIG,
    ENDPOINT,
    T0,
    forecast,
    gpu_sample,
    world_catalogue,
    world_topology,
)


def state() -> LiveState:
    return LiveState(world_topology(8))


def test_unknown_servers_claim_no_headroom_and_idle_power() -> None:
    st = state()
    snap = build_snapshot(st, world_catalogue(), now=T0)
    assert snap.forecast_age_s == NEVER_S
    assert np.array_equal(snap.gpu_temp_hi_c, snap.slowdown_temp_c)
    assert np.allclose(snap.server_power_w, snap.server_idle_power_w)
    assert snap.free_gpus.tolist() == [8] * 8


def test_forecast_high_is_peak_within_decision_horizon_and_late_forecasts_do_not_win() -> None:
    st = state()
    sid = st.topology.server_ids[0]
    hz = [HorizonForecast(horizon_s=h, gpu_temp_c=t, gpu_temp_lo_c=t - 1, gpu_temp_hi_c=t + 2, power_w=3000,
                          power_lo_w=2900, power_hi_w=p) for h, t, p in ((10, 70, 3100), (60, 74, 3400), (300, 85, 5000))]
    fc = ServerForecast(server_id=sid, issued_at=T0, based_on_sample_at=T0, model_version="m", gpu_temp_c=69,
                        power_w=3000, slowdown_temp_c=87, thermal_headroom_c=10, power_headroom_w=100, horizons=hz)
    assert st.add_server_forecast(fc)
    snap = build_snapshot(st, world_catalogue(), now=T0 + timedelta(seconds=3))
    assert snap.gpu_temp_hi_c[0] == pytest.approx(76.0)  # 74 + 2 at 60 s; the 300 s horizon is beyond 60 s
    assert snap.server_power_hi_w[0] == pytest.approx(3400.0)
    assert snap.forecast_age_s == pytest.approx(3.0)
    older = forecast(sid, T0 - timedelta(seconds=5), temp_c=40, hi_c=41)
    st.add_server_forecast(older)
    assert st.gpu_temp_c[0] == 69
    assert not st.add_server_forecast(forecast("not-in-topology", T0))
    assert st.unknown_server_ids == {"not-in-topology"}


def test_tenants_from_workloads_split_gpus_and_load() -> None:
    st = state()
    ids = st.topology.server_ids
    st.add_workload(ids[0], gpu_sample(ids[0], T0, tokens_per_s=6000, instances=["a", "b"]).workload,
                    gpu_power_w=250.0, sampled_at=T0)
    st.add_workload(ids[1], gpu_sample(ids[1], T0, config_id=None, instances=["vm-1"]).workload,
                    gpu_power_w=300.0, sampled_at=T0)
    st.add_workload(ids[2], gpu_sample(ids[2], T0, config_id="unknown-config", instances=["vm-2"]).workload,
                    gpu_power_w=300.0, sampled_at=T0)
    snap = build_snapshot(st, world_catalogue(), now=T0)
    inst = snap.instances
    assert inst.instance_ids == ("a", "b") and inst.endpoint_ids == (ENDPOINT, ENDPOINT)
    assert inst.num_gpus.tolist() == [4, 4] and inst.load_tokens_per_s.tolist() == [3000.0, 3000.0]
    assert inst.prefill_frac[0] == pytest.approx(0.3) and inst.config_ids[0] == DEFAULT_CONFIG
    assert snap.vms.vm_ids == ("vm-1", "vm-2")  # a configuration outside the catalogue is opaque
    assert snap.free_gpus.tolist()[:4] == [0, 0, 0, 8]
    assert snap.endpoint_demand_tokens_per_s.tolist() == [6000.0]
    assert snap.endpoint_demand_hi_tokens_per_s[0] == pytest.approx(6600.0)


def test_row_power_and_budget_from_domain_forecast() -> None:
    st = state()
    for s in st.topology.server_ids:
        st.add_server_forecast(forecast(s, T0, power_w=2000))
    snap = build_snapshot(st, world_catalogue(), now=T0)
    assert snap.row_power_w[0] == pytest.approx(16000.0)
    assert snap.zone_heat_w[0] == pytest.approx(16000.0)
    st.add_domain_forecast(DomainForecast(domain_kind="row", domain_id="row00", issued_at=T0, num_servers=8,
                                          power_w=17000, power_limit_w=20000, horizons_s=[60],
                                          power_forecast_w=[17500], power_forecast_hi_w=[19000]))
    snap2 = build_snapshot(st, world_catalogue(), now=T0)
    assert (snap2.row_power_w[0], snap2.row_power_hi_w[0], snap2.row_budget_w[0]) == (17000, 19000, 20000)


def test_forecast_age_sees_a_stall_even_when_the_producer_clock_runs_ahead() -> None:
    st = state()
    sid = st.topology.server_ids[0]
    st.add_server_forecast(forecast(sid, T0 + timedelta(minutes=10)), received_at=T0)  # issued "in the future"
    assert st.forecast_age_s(T0 + timedelta(seconds=1)) == pytest.approx(1.0)
    assert st.forecast_age_s(T0 + timedelta(seconds=30)) == pytest.approx(30.0)


def test_live_controller_takes_the_tightest_hbm_from_gpu_samples_into_its_snapshot() -> None:
    c = Controller(world_topology(8), world_catalogue(), ControllerSettings(metrics_port=0), started_at=T0)
    ids = c.topology.server_ids
    for s in ids:
        c.handle("f", forecast(s, T0), now=T0)
    sample = gpu_sample(ids[1], T0)
    gpus = [g.model_copy(update={"memory_temp_c": 80.0, "memory_max_temp_c": 95.0}) for g in sample.gpus]
    # GPU 3 is not the hottest HBM, but the nearest its own (lower) limit: it sets the server's margin.
    gpus[3] = gpus[3].model_copy(update={"memory_temp_c": 83.0, "memory_max_temp_c": 85.0})
    gpus[5] = gpus[5].model_copy(update={"memory_temp_c": 90.0})
    c.handle("g", sample.model_copy(update={"gpus": gpus}), now=T0)
    c.handle("g", gpu_sample(ids[2], T0), now=T0)  # no HBM reported: unknown
    snap = c.snapshot(T0)
    assert snap.memory_temp_c[1] == 83.0 and snap.memory_max_temp_c[1] == 85.0
    assert np.isnan(snap.memory_temp_c[2]) and np.isnan(snap.memory_max_temp_c[0])
    head = thermal_headroom_c(snap)
    assert head[1] == 2.0  # cool die (64 °C forecast-high against 87 °C), HBM 2 °C under its limit
    assert head[2] == snap.slowdown_temp_c[2] - snap.gpu_temp_hi_c[2]
    assert server_limit_c(snap)[1] == snap.gpu_temp_hi_c[1] + 2.0
    # A late, older sample does not overwrite the newer reading; a newer one without HBM clears it.
    c.handle("g", gpu_sample(ids[1], T0 - timedelta(seconds=5)), now=T0)
    assert c.state.memory_temp_c[1] == 83.0
    c.handle("g", gpu_sample(ids[1], T0 + timedelta(seconds=5)), now=T0 + timedelta(seconds=5))
    assert np.isnan(c.state.memory_temp_c[1])
