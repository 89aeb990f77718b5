"""Small shared thermal estimates used by placement, routing and reconfiguration."""

from __future__ import annotations

import numpy as np

from controller.core.snapshot import FloatArray, Snapshot

MAX_OFFSET_C = 8.0
"""Largest per-server thermal residual trusted (a bigger one is a sensor or forecast problem)."""


def thermal_offset_c(snapshot: Snapshot) -> FloatArray:
    """Per-server residual of the forecast over ``inlet_hi + R × p``: slot position, lag and forecast margin.

    Learned from the snapshot itself (the per-server online correction of DESIGN.md §5): the
    hottest GPU's forecast-high minus what the plain model gives at the server's mean GPU power
    (the SaaS instance's measured GPU power where one runs), clipped to [0, ``MAX_OFFSET_C``].
    """
    gpus = np.maximum(snapshot.num_gpus, 1)
    p = snapshot.gpu_idle_power_w + np.maximum(snapshot.server_power_w - snapshot.server_idle_power_w, 0.0) / gpus
    inst = snapshot.instances
    if len(inst) and inst.gpu_power_w.size:
        p = p.copy()
        p[inst.server_index] = inst.gpu_power_w
    resid = snapshot.gpu_temp_hi_c - snapshot.inlet_hi_c - snapshot.thermal_resistance_c_per_w * p
    out: FloatArray = np.clip(resid, 0.0, MAX_OFFSET_C)
    return out
