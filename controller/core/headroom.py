"""Small shared thermal estimates used by placement, routing and reconfiguration (GPU die and HBM)."""

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


def hbm_headroom_c(snapshot: Snapshot) -> FloatArray:
    """Per-server HBM headroom: the memory's own maximum operating temperature minus its temperature, °C.

    HBM has its own limit (``NVML_TEMPERATURE_THRESHOLD_MEM_MAX``, nvidia-smi's "Memory Max
    Operating Temp", read per device) and can run hot under memory-bound decode while the
    die stays cool, so the die's slowdown margin can hide it; crossing it sets the
    SW-thermal clock-event reason like the die's limit does. ``+inf`` where the temperature or the
    threshold is unknown (no collector reports HBM, or the GPU has no such sensor).

    Examples:
        >>> from dataclasses import replace
        >>> import numpy as np
        >>> from controller.core.synthetic import synthetic_snapshot
        >>> s = synthetic_snapshot(np.random.default_rng(0), num_servers=3, num_instances=1, num_vms=1)
        >>> s = replace(s, memory_temp_c=np.array([80.0, np.nan, 93.0]), memory_max_temp_c=np.full(3, 95.0))
        >>> hbm_headroom_c(s).tolist()
        [15.0, inf, 2.0]
    """
    n = snapshot.num_servers
    temp, limit = snapshot.memory_temp_c, snapshot.memory_max_temp_c
    if temp.size != n or limit.size != n:
        return np.full(n, np.inf)
    head = limit - temp
    out: FloatArray = np.where(np.isnan(head), np.inf, head)
    return out


def thermal_headroom_c(snapshot: Snapshot) -> FloatArray:
    """Per-server thermal headroom, °C: the smaller of the GPU die's forecast margin to slowdown and the HBM's margin.

    The die term is ``slowdown_temp_c - gpu_temp_hi_c`` (the forecast-high hottest GPU); the
    HBM term is :func:`hbm_headroom_c` on its latest reading (no HBM forecast exists yet).
    """
    out: FloatArray = np.minimum(snapshot.thermal_headroom_hi_c, hbm_headroom_c(snapshot))
    return out


def thermal_limit_c(snapshot: Snapshot) -> FloatArray:
    """Per-server ceiling on the hottest GPU die's temperature, °C: slowdown, lowered where the HBM is nearer its limit.

    ``gpu_temp_hi_c + thermal_headroom_c``: the die may warm only as far as the tighter of its own
    slowdown margin and the HBM's margin allows. This takes the HBM to warm degree for degree with
    the die (they share the package and its cold plate), the first-order belief until an HBM
    forecast exists. Placement, routing and reconfiguration compare their die-temperature belief
    with this line instead of ``slowdown_temp_c``, so a hot HBM limits them too. Where HBM is
    unknown the HBM term is ``+inf`` and the result is ``slowdown_temp_c`` exactly (computed as a
    minimum, not as ``hi + (slowdown - hi)``, so the simulator, which reports no HBM, does not move
    by a rounding error).

    Examples:
        >>> from dataclasses import replace
        >>> import numpy as np
        >>> from controller.core.synthetic import synthetic_snapshot
        >>> s = synthetic_snapshot(np.random.default_rng(0), num_servers=2, num_instances=1, num_vms=1)
        >>> s = replace(s, gpu_temp_hi_c=np.array([60.0, 60.0]), memory_temp_c=np.array([93.0, np.nan]),
        ...             memory_max_temp_c=np.full(2, 95.0))
        >>> thermal_limit_c(s).tolist()
        [62.0, 87.0]
    """
    out: FloatArray = np.minimum(snapshot.slowdown_temp_c, snapshot.gpu_temp_hi_c + hbm_headroom_c(snapshot))
    return out
