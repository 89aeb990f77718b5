"""The oscillation model of smooth load: bucketed RLS recursion, restarts at steps, exact lag response."""

from __future__ import annotations

import math
import struct

import pytest

from forecasting.features import (
    _lag_of_path,
    ar_spectral_radius,
    physics_forecast,
    smooth_power_path,
)
from forecasting.online import Observation, OnlineForecaster, ServerModelState
from forecasting.state import _STATE_FLOATS, _STATE_STRUCTS, ForecasterParams


def vm_obs(t: float, gpu_w_per_gpu: float, temp: float = 60.0) -> Observation:
    """A smooth (VM-like) server: no serving load, no configuration."""
    return Observation("vm1", t, temp, 8 * gpu_w_per_gpu, 8 * gpu_w_per_gpu + 1400.0, 24.0, 50.0, 0.0, 0.0, 0.0,
                       None, None, 8, 87.0)


def oscillating(t: float, period_s: float = 1200.0) -> float:
    return 300.0 + 100.0 * math.sin(2.0 * math.pi * t / period_s)


def fold(f: OnlineForecaster, powers: list[float]) -> ServerModelState:
    st = f.new_state()
    for i, p in enumerate(powers):
        st = f.update(st, vm_obs(float(i), p))
    return st


def test_oscillating_load_is_extrapolated_far_better_than_persistence() -> None:
    """A VM whose utilisation oscillates (period 20 min) is forecast 5 minutes ahead within a few W."""
    f = OnlineForecaster()
    errs, pers = [], []
    for end in (2400, 2700, 3000, 3300):
        st = fold(f, [oscillating(t) for t in range(end)])
        assert ar_spectral_radius(st) == pytest.approx(1.0, abs=0.02)
        pgpu = physics_forecast(f.params, st, (300.0,))[0][1]
        truth = oscillating(end - 1 + 300)
        errs.append(abs(pgpu - truth))
        pers.append(abs(oscillating(end - 1) - truth))
    assert max(errs) < 5.0
    assert sum(errs) < 0.1 * sum(pers)


def test_a_step_restarts_the_model_and_forecasts_persist_until_it_has_buckets() -> None:
    """A VM arriving steps power by 150 W/GPU: no extrapolation across it, persistence until refitted."""
    f = OnlineForecaster()
    p = f.params
    powers = [oscillating(t) for t in range(1800)]
    st = fold(f, powers)
    assert len(smooth_power_path(p, st, 300.0)) > 1
    # the step shows in the open bucket first: the stale fit is not extrapolated from the new level
    st = f.update(st, vm_obs(1800.0, powers[-1] + 150.0))
    assert smooth_power_path(p, st, 300.0) == [(0.0, powers[-1] + 150.0)]
    t = 1801
    while st.ar_n != 1.0 or st.ar_cnt != 1.0:  # until the bucket holding the step closes and restarts the model
        st = f.update(st, vm_obs(float(t), oscillating(t) + 150.0))
        t += 1
    assert st.ar_ref == pytest.approx(oscillating(t - 2) + 150.0, abs=20.0)
    for _ in range(int((p.ar_min_buckets - 2) * p.ar_bucket_s)):
        assert len(smooth_power_path(p, st, 300.0)) == 1
        st = f.update(st, vm_obs(float(t), oscillating(t) + 150.0))
        t += 1


def test_a_configuration_change_restarts_the_model() -> None:
    f = OnlineForecaster()
    st = fold(f, [oscillating(t) for t in range(1800)])
    assert st.ar_n > 10
    changed = Observation("vm1", 1800.0, 60.0, 8 * 300.0, 8 * 300.0 + 1400.0, 24.0, 50.0, 0.0, 0.0, 0.0, 1200.0,
                          None, 8, 87.0)
    st = f.update(st, changed)
    assert st.ar_n == 0.0 and st.ar_cnt == 1.0


def test_lag_of_a_piecewise_linear_path_matches_numerical_integration() -> None:
    knots = [(0.0, 300.0), (20.0, 340.0), (50.0, 310.0), (80.0, 260.0), (110.0, 255.0)]
    tau = 30.0
    for h in (10.0, 35.0, 80.0, 200.0):
        dt, temp, t = 0.001, 0.0, 0.0
        while t < h - 1e-9:
            # input relative to the first knot, piecewise linear, held after the last knot
            u = next((v0 + (v1 - v0) * (t - t0) / (t1 - t0) for (t0, v0), (t1, v1) in zip(knots, knots[1:], strict=False)
                      if t0 <= t <= t1), knots[-1][1]) - knots[0][1]
            temp += (u - temp) / tau * dt
            t += dt
        assert _lag_of_path(knots, tau, h) == pytest.approx(temp, abs=0.01)


def test_format2_state_payloads_still_load_without_the_oscillation_model() -> None:
    """Worker tables written before format 3 restore; the oscillation model starts empty."""
    f = OnlineForecaster()
    st = fold(f, [oscillating(t) for t in range(120)])
    old_fields = _STATE_FLOATS[:_STATE_STRUCTS[2].size // 8]
    raw = struct.pack(_STATE_STRUCTS[2].format, 2, *(getattr(st, n) for n in old_fields)) + b"cfg"
    loaded = ServerModelState.from_bytes(raw)
    assert loaded.ar_n == 0.0 and loaded.ar_cnt == 0.0 and loaded.pgpu_w == st.pgpu_w
    nxt = f.update(loaded, vm_obs(120.0, oscillating(120)))
    assert nxt.ar_cnt == 1.0 and nxt.num_obs == loaded.num_obs + 1
    assert ServerModelState.from_bytes(nxt.to_bytes()) == nxt


def test_params_without_the_oscillation_keys_still_load() -> None:
    """Artifacts trained before the oscillation model carry no ``ar_*`` keys: the defaults apply."""
    raw = {k: v for k, v in ForecasterParams().to_json_dict().items() if not k.startswith("ar_")}
    assert ForecasterParams.from_json_dict(raw).ar_bucket_s == ForecasterParams().ar_bucket_s
