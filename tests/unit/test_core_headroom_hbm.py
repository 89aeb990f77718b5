"""HBM temperature against its own threshold in the thermal headroom (controller.core.headroom)."""

from __future__ import annotations

import doctest
from dataclasses import replace

import numpy as np

import controller.core.headroom as headroom
from controller.core.headroom import hbm_headroom_c, thermal_headroom_c, thermal_limit_c
from controller.core.placement import rank_servers
from controller.core.routing import routing_weights
from controller.core.snapshot import PlacementRequest
from controller.core.synthetic import synthetic_snapshot


def snap(n: int = 4):  # type: ignore[no-untyped-def]
    s = synthetic_snapshot(np.random.default_rng(3), num_servers=n, num_instances=1, num_vms=1)
    return replace(s, slowdown_temp_c=np.full(n, 87.0), gpu_temp_hi_c=np.array([70.0, 80.0, 60.0, 75.0])[:n])


def test_hot_hbm_on_a_cool_die_sets_the_headroom() -> None:
    s = replace(snap(), memory_temp_c=np.array([80.0, 70.0, 93.5, np.nan]),
                memory_max_temp_c=np.array([95.0, 95.0, 95.0, 95.0]))
    die = s.slowdown_temp_c - s.gpu_temp_hi_c  # 17, 7, 27, 12
    assert hbm_headroom_c(s).tolist() == [15.0, 25.0, 1.5, np.inf]
    got = thermal_headroom_c(s)
    assert got.tolist() == [15.0, 7.0, 1.5, 12.0]  # server 2: 27 °C of die margin, 1.5 °C of HBM margin
    assert np.all(got <= die)


def test_the_hbm_threshold_is_its_own_not_the_dies() -> None:
    s = replace(snap(2), memory_temp_c=np.array([90.0, 90.0]), memory_max_temp_c=np.array([95.0, 105.0]))
    assert hbm_headroom_c(s).tolist() == [5.0, 15.0]  # same HBM temperature, different devices' limits


def test_without_hbm_readings_headroom_is_the_die_margin() -> None:
    s = snap()
    assert s.memory_temp_c.size == 0
    assert np.array_equal(thermal_headroom_c(s), s.slowdown_temp_c - s.gpu_temp_hi_c)
    unknown_limit = replace(s, memory_temp_c=np.full(4, 99.0), memory_max_temp_c=np.full(4, np.nan))
    assert np.array_equal(thermal_headroom_c(unknown_limit), s.thermal_headroom_hi_c)


def test_doctests() -> None:
    assert doctest.testmod(headroom).failed == 0


def _hbm(s, server: int, below_c: float):  # type: ignore[no-untyped-def]
    """``s`` with one server's HBM ``below_c`` under its 95 °C threshold and every other HBM cool."""
    temp = np.full(s.num_servers, 40.0)
    temp[server] = 95.0 - below_c
    return replace(s, memory_temp_c=temp, memory_max_temp_c=np.full(s.num_servers, 95.0))


def test_a_hot_hbm_on_a_cool_die_ranks_its_server_below_an_equal_one() -> None:
    s = synthetic_snapshot(np.random.default_rng(3), num_servers=16, num_instances=0, num_vms=0, oversubscription=1.0)
    inlet = np.full(s.num_servers, 30.0)  # every spot alike: servers 3 and 4 are compared
    s = replace(s, inlet_hi_c=inlet, gpu_temp_hi_c=inlet + 10, server_power_w=s.server_idle_power_w.copy(),
                gpu_idle_power_w=np.full(s.num_servers, 60.0), free_gpus=np.full(s.num_servers, 8, dtype=np.int64),
                thermal_resistance_c_per_w=np.full(s.num_servers, 0.06), slowdown_temp_c=np.full(s.num_servers, 87.0),
                row_power_hi_w=np.zeros(len(s.row_ids)), zone_heat_hi_w=np.zeros(len(s.zone_ids)))
    req = PlacementRequest("r", "saas", 4, gpu_power_w=400.0, max_candidates=16)

    def scores(snapshot) -> dict[int, float]:  # type: ignore[no-untyped-def]
        return {c.server_index: c.score for c in rank_servers(snapshot, req, now_s=0.0).candidates}

    both = scores(s)
    assert both[3] == both[4]  # without HBM the two spots are equal
    hot = scores(_hbm(s, 3, 2.0))
    assert hot.get(3, -np.inf) < hot[4]  # die 47 °C under slowdown, but the HBM has 2 °C left: below, or refused
    cool = scores(_hbm(s, 3, 50.0))
    assert cool == both  # HBMs further from their limit than the dies from slowdown change nothing

def test_a_hot_hbm_drains_its_instance_and_cuts_its_weight() -> None:
    s = synthetic_snapshot(np.random.default_rng(1), num_servers=40, num_instances=8, num_vms=0, load_frac=0.3)
    inst = s.instances
    ep = inst.endpoint_ids[0]
    idx = inst.of_endpoint(ep)
    assert idx.size >= 3
    temps = s.gpu_temp_hi_c.copy()
    temps[inst.server_index[idx]] = s.slowdown_temp_c[inst.server_index[idx]] - 20.0  # cool dies, equal margins
    s = replace(s, gpu_temp_hi_c=temps, gpu_temp_c=np.minimum(s.gpu_temp_c, temps))
    a, b = int(idx[0]), int(idx[1])
    base = routing_weights(s, ep, now_s=0.0)
    assert not base.draining[0]
    hot = routing_weights(_hbm(s, int(inst.server_index[a]), 0.5), ep, now_s=0.0)
    assert hot.draining[0] and hot.weights[0] == 0.0  # 0.5 °C of HBM margin is under the 1 °C drain line
    warm = routing_weights(_hbm(s, int(inst.server_index[a]), 2.0), ep, now_s=0.0)
    assert not warm.draining[0]
    k = list(idx).index(b)
    cap = s.instances.capacity_tokens_per_s_at_slo
    assert warm.weights[0] / cap[a] < warm.weights[k] / cap[b]  # 2 °C of HBM margin: less per unit capacity
    assert warm.weights[0] / cap[a] < base.weights[0] / cap[a]


def test_unknown_hbm_leaves_the_line_at_slowdown_exactly() -> None:
    s = snap()
    assert np.array_equal(thermal_limit_c(s), s.slowdown_temp_c)
    assert np.array_equal(thermal_limit_c(replace(s, memory_temp_c=np.full(4, np.nan),
                                                  memory_max_temp_c=np.full(4, 95.0))), s.slowdown_temp_c)
