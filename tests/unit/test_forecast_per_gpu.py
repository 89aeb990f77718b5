"""Per-GPU power in the observation: the thermal model is fed the hottest GPU's own power, not the mean.

When the GPUs of a server carry different loads (IaaS VMs of one or two GPUs, a
tensor-parallel group beside idle GPUs) the mean says little about the hottest GPU;
these tests build such a server from the lag model (hand-computed, not the
simulator) and check the forecast follows the hottest GPU's power.
"""

from __future__ import annotations

import math
import struct

import pytest

from forecasting.online import Observation, OnlineForecaster, ServerModelState
from forecasting.state import _STATE_FLOATS, _STATE_STRUCTS

R, B, TAU, INLET, IDLE_W = 6.0, 5.0, 30.0, 24.0, 100.0  # °C per 100 W, °C, s, °C, W of the 7 other GPUs


def hot_power(t: float) -> float:
    """GPU 0's power: a load that varies (so R is identifiable), then a step from 250 W to 600 W at 1800 s."""
    return 250.0 + 100.0 * math.sin(2 * math.pi * t / 300.0) if t < 1800 else 600.0


def history(n: int) -> list[tuple[float, float, float]]:
    """``(t, hottest temperature, hot GPU power)`` of the lag model driven by GPU 0's own power."""
    out, temp = [], INLET + B + R * hot_power(0) / 100.0
    for i in range(n):
        p = hot_power(float(i))
        ss = INLET + B + R * p / 100.0
        temp = ss + (temp - ss) * math.exp(-1.0 / TAU)
        out.append((float(i), temp, p))
    return out


def observation(t: float, temp: float, hot_w: float, *, per_gpu: bool) -> Observation:
    gpu_w = hot_w + 7 * IDLE_W
    return Observation("iaas-1", t, temp, gpu_w, gpu_w + 1400.0, INLET, 50.0, 0.0, 0.0, 0.0, None, "vm", 8, 87.0,
                       hottest_gpu_power_w=hot_w if per_gpu else None)


def forecast_error_after_step(per_gpu: bool) -> float:
    f = OnlineForecaster()
    rows = history(2400)
    st = f.new_state()
    origin = 1830
    for t, temp, p in rows[: origin + 1]:
        st = f.update(st, observation(t, temp, p, per_gpu=per_gpu))
    t, temp, p = rows[origin]
    (h,) = f.forecast(st, observation(t, temp, p, per_gpu=per_gpu), [300])
    return abs(h.gpu_temp_c - rows[origin + 300][1])


def test_a_step_on_the_hottest_gpu_is_forecast_from_its_own_power() -> None:
    with_hot, with_mean = forecast_error_after_step(True), forecast_error_after_step(False)
    assert with_hot < 1.0
    assert with_hot < 0.5 * with_mean  # the mean moves by an eighth of the step: the old model under-shoots


def test_without_per_gpu_power_the_model_is_the_mean_power_model() -> None:
    f = OnlineForecaster()
    a = b = f.new_state()
    for t, temp, p in history(200):
        a = f.update(a, observation(t, temp, p, per_gpu=False))
        mean = (p + 7 * IDLE_W) / 8
        b = f.update(b, Observation("iaas-1", t, temp, mean * 8, mean * 8 + 1400.0, INLET, 50.0, 0.0, 0.0, 0.0,
                                    None, "vm", 8, 87.0, hottest_gpu_power_w=mean))
    assert a.phot_dev_w == 0.0 and a == b


def test_format3_state_payloads_load_with_no_hot_gpu_offset() -> None:
    f = OnlineForecaster()
    st = f.new_state()
    for t, temp, p in history(120):
        st = f.update(st, observation(t, temp, p, per_gpu=True))
    assert st.phot_dev_w > 100.0
    old = _STATE_FLOATS[: _STATE_STRUCTS[3].size // 8]
    raw = struct.pack(_STATE_STRUCTS[3].format, 3, *(getattr(st, n) for n in old)) + b"vm|none"
    loaded = ServerModelState.from_bytes(raw)
    assert loaded.phot_dev_w == 0.0 and loaded.pgpu_f_w == st.pgpu_f_w and loaded.config_key == "vm|none"
    assert ServerModelState.from_bytes(st.to_bytes()) == st
    assert st.phot_dev_w == pytest.approx(ServerModelState.from_bytes(st.to_bytes()).phot_dev_w)
