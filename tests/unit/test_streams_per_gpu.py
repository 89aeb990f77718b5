"""The worker keeps the hottest GPU's own power and hands it to the forecaster's observation."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime

import numpy as np

from contracts import GpuReading, GpuSample
from streams.joins import apply_gpu, summarize_gpu
from streams.state import _HEAD_PREFIX, _NUM_SCALARS, SCALARS, WINDOW, ServerStates

T0 = datetime(2026, 12, 8, tzinfo=UTC)


def sample(temps: list[float], powers: list[float | None]) -> GpuSample:
    gpus = [GpuReading(gpu_index=i, gpu_temp_c=t, power_usage_w=p, invalid_fields=[] if p is not None else
                       ["power_usage_w"]) for i, (t, p) in enumerate(zip(temps, powers, strict=True))]
    return GpuSample(server_id="s1", sampled_at=T0, gpus=gpus, source="nvml")


def test_the_hottest_gpus_own_power_reaches_the_observation() -> None:
    s = sample([55.0, 71.0, 60.0, 58.0], [200.0, 610.0, 250.0, 240.0])
    summary = summarize_gpu(s)
    assert summary is not None and summary.hottest_gpu_power_w == 610.0
    states = ServerStates()
    i = apply_gpu(states, s, summary, default_slowdown_temp_c=87.0)
    assert i is not None
    obs = states.observation(i)
    assert obs.hottest_gpu_power_w == 610.0 and obs.gpu_power_w == 1300.0 and obs.hottest_gpu_temp_c == 71.0


def test_a_flagged_power_on_the_hottest_gpu_falls_back_to_the_mean() -> None:
    s = sample([55.0, 71.0], [200.0, None])
    summary = summarize_gpu(s)
    assert summary is not None and math.isnan(summary.hottest_gpu_power_w)
    states = ServerStates()
    i = apply_gpu(states, s, summary, default_slowdown_temp_c=87.0)
    assert i is not None and states.observation(i).hottest_gpu_power_w is None


def test_format1_slots_restore_with_the_hottest_gpu_power_unknown() -> None:
    st = ServerStates()
    i = st.slot("s1")
    st.arr["hottest_gpu_temp_c"][i] = 61.5
    st.arr["hottest_gpu_power_w"][i] = 500.0
    st.push_window(i, 61.5, 4000.0)
    new = st.slot_bytes(i)
    n1 = _NUM_SCALARS[1]
    assert SCALARS[n1:] == ("hottest_gpu_power_w",)
    old = (_HEAD_PREFIX.pack(1, WINDOW) + st.matrix[i, :n1].tobytes()
           + new[_HEAD_PREFIX.size + len(SCALARS) * 8:])
    other = ServerStates()
    j = other.load_slot("s1", old)
    assert other.arr["hottest_gpu_temp_c"][j] == 61.5 and math.isnan(other.arr["hottest_gpu_power_w"][j])
    assert np.array_equal(other.temp_window[j], st.temp_window[i], equal_nan=True)
    k = ServerStates().load_slot("s1", new)
    assert k == 0 and struct.unpack_from("<B", new)[0] == 2
