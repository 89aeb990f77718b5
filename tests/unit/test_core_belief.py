"""The one thermal belief: its inverse inverts it, and routing's thermally safe load uses it (slot offset too)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from controller.core.belief import hottest_gpu_c, power_for_temp_w, server_offset_c
from controller.core.routing import _thermal_safe_load
from controller.core.synthetic import synthetic_catalogue, synthetic_snapshot


@given(inlet=st.floats(10, 45), offset=st.floats(0, 8), r=st.floats(0.01, 0.2), p=st.floats(0, 1200))
def test_power_for_temp_inverts_hottest_gpu(inlet: float, offset: float, r: float, p: float) -> None:
    t = hottest_gpu_c(inlet, offset, r, p)
    assert abs(power_for_temp_w(t, inlet, offset, r) - p) < 1e-6 * max(1.0, p)


def test_routing_safe_load_counts_the_slot_offset_and_the_drain_margin() -> None:
    cat = synthetic_catalogue()
    snap = synthetic_snapshot(np.random.default_rng(1), num_servers=16, num_instances=8, num_vms=4, load_frac=0.3)
    idx = np.arange(len(snap.instances))
    # Rear slots run hotter than inlet + R × P: raise every server's forecast so the learned offset is large.
    hot = replace(snap, gpu_temp_hi_c=snap.gpu_temp_hi_c + 6.0)
    assert (server_offset_c(hot) > server_offset_c(snap)).any()
    base = _thermal_safe_load(snap, cat, idx, snap.now_s, 1.0)
    with_offset = _thermal_safe_load(hot, cat, idx, hot.now_s, 1.0)
    wider_margin = _thermal_safe_load(snap, cat, idx, snap.now_s, 3.0)
    assert (with_offset <= base).all() and (with_offset < base).any()
    assert (wider_margin <= base).all() and (wider_margin < base).any()
