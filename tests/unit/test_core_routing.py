"""Routing weights: non-negative, sum to 1, never above SLO capacity when capacity covers demand."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.routing import cap_weights, routing_weights
from controller.core.snapshot import RoutingParams
from controller.core.synthetic import synthetic_catalogue, synthetic_snapshot


@given(
    w=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=40),
    seed=st.integers(0, 2**31),
)
def test_cap_weights_sum_to_one_and_respect_caps(w: list[float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    ub = rng.uniform(0, 1, len(w))
    out = cap_weights(np.asarray(w), ub)
    assert np.all(out >= 0)
    assert abs(out.sum() - 1) < 1e-9
    if ub.sum() >= 1:
        assert np.all(out <= ub + 1e-9)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 60),
    load=st.floats(0.05, 1.3),
    rise=st.floats(0, 25),
    stale=st.booleans(),
    use_cat=st.booleans(),
)
def test_weights_are_a_capped_distribution(seed: int, n: int, load: float, rise: float, stale: bool, use_cat: bool) -> None:
    rng = np.random.default_rng(seed)
    snap = synthetic_snapshot(rng, num_servers=80, num_instances=n, num_vms=5, load_frac=load,
                              forecast_age_s=120.0 if stale else 1.0)
    snap = replace(snap, gpu_temp_hi_c=snap.gpu_temp_hi_c + rise, inlet_hi_c=snap.inlet_hi_c + rise)
    cat = synthetic_catalogue() if use_cat else None
    first = routing_weights(snap, "ep0", now_s=0.0, catalogue=cat)
    d = routing_weights(snap, "ep0", previous=first, now_s=1.0, catalogue=cat)
    for dec in (first, d):
        assert np.all(dec.weights >= 0)
        assert abs(dec.weights.sum() - 1) < 1e-9
        assert abs(dec.long_prompt_weights.sum() - 1) < 1e-9
        assert np.all(dec.weights[dec.draining] == 0) or dec.draining.all()
        assert dec.stale_inputs == stale
    demand = max(snap.endpoint_demand_hi("ep0"), float(snap.instances.load_tokens_per_s.sum()))
    if d.capacity_tokens_per_s.sum() >= demand:
        assert np.all(d.weights * demand <= d.capacity_tokens_per_s * (1 + 1e-9) + 1e-6), d.reason


def test_hot_instance_gets_less_and_is_drained_when_others_can_carry_it() -> None:
    rng = np.random.default_rng(1)
    snap = synthetic_snapshot(rng, num_servers=40, num_instances=8, num_vms=0, load_frac=0.3)
    hot_server = int(snap.instances.server_index[0])
    temps = snap.gpu_temp_hi_c.copy()
    temps[hot_server] = snap.slowdown_temp_c[hot_server] - 0.5
    d = routing_weights(replace(snap, gpu_temp_hi_c=temps), "ep0", now_s=0.0)
    assert d.draining[0] and d.weights[0] == 0.0
    warm = temps.copy()
    warm[hot_server] = snap.slowdown_temp_c[hot_server] - 5.0
    d2 = routing_weights(replace(snap, gpu_temp_hi_c=warm), "ep0", now_s=0.0)
    assert not d2.draining[0]
    assert d2.weights[0] < np.median(d2.weights)
    # Long prompts go to the coolest instances: the warm one gets none.
    assert d2.long_prompt_weights[0] == 0.0


def test_stale_forecasts_fall_back_to_capacity_proportional() -> None:
    rng = np.random.default_rng(2)
    snap = synthetic_snapshot(rng, num_servers=40, num_instances=10, num_vms=0, load_frac=0.3, forecast_age_s=300.0)
    d = routing_weights(snap, "ep0", now_s=0.0, params=RoutingParams(floor_frac=0.0))
    cap = snap.instances.capacity_tokens_per_s_at_slo
    assert np.allclose(d.weights, cap / cap.sum())
    assert "STALE" in d.reason
