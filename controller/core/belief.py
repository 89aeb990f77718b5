"""The controller's one thermal and power belief: hottest GPU ≈ inlet + slot offset + R × P, and its inverse.

Written once, called by placement (peak temperature of a new VM), routing (load an
instance can take before its GPUs reach the drain line), reconfiguration (temperature of
every candidate option), emergencies (IaaS power limits that keep a failed zone's GPUs
under the line) and snapshot building (temperatures before any reading arrived).

* ``inlet`` — the server's inlet (forecast-high, or a raised one while cooling fails);
* ``offset`` — the per-server slot offset learned from the snapshot
  (:func:`controller.core.headroom.thermal_offset_c`: rear slots breathe pre-heated air,
  plus lag and forecast margin), 0 where nothing is known yet;
* ``R`` — ``thermal_resistance_c_per_w``, the hottest GPU's °C per W of its own power.

The line the hottest GPU must stay under is :func:`server_limit_c`: the slowdown
temperature, lowered where the HBM is nearer its own limit than the die is to slowdown
(:func:`controller.core.headroom.thermal_headroom_c`).

Arrays broadcast like numpy; scalars give floats.

Examples:
    >>> hottest_gpu_c(25.0, 3.0, 0.06, 500.0)
    58.0
    >>> power_for_temp_w(58.0, 25.0, 3.0, 0.06)
    500.0
"""

from __future__ import annotations

from typing import Any, overload

import numpy as np

from controller.core.headroom import thermal_limit_c, thermal_offset_c
from controller.core.snapshot import FloatArray, Snapshot

MIN_R_C_PER_W = 1e-6
"""Smallest thermal resistance the inverse divides by (a zero in the topology is a data error, not a free lunch)."""

__all__ = ["MIN_R_C_PER_W", "hottest_gpu_c", "power_for_temp_w", "server_limit_c", "server_offset_c"]


@overload
def hottest_gpu_c(inlet_c: float, offset_c: float, r_c_per_w: float, gpu_power_w: float) -> float: ...
@overload
def hottest_gpu_c(inlet_c: Any, offset_c: Any, r_c_per_w: Any, gpu_power_w: Any) -> FloatArray: ...
def hottest_gpu_c(inlet_c: Any, offset_c: Any, r_c_per_w: Any, gpu_power_w: Any) -> Any:
    """Steady-state temperature of a server's hottest GPU at per-GPU power ``gpu_power_w``."""
    out = np.asarray(inlet_c, dtype=np.float64) + offset_c + np.asarray(r_c_per_w, dtype=np.float64) * gpu_power_w
    return float(out) if out.ndim == 0 else out


@overload
def power_for_temp_w(temp_c: float, inlet_c: float, offset_c: float, r_c_per_w: float) -> float: ...
@overload
def power_for_temp_w(temp_c: Any, inlet_c: Any, offset_c: Any, r_c_per_w: Any) -> FloatArray: ...
def power_for_temp_w(temp_c: Any, inlet_c: Any, offset_c: Any, r_c_per_w: Any) -> Any:
    """The inverse: per-GPU power at which the hottest GPU reaches ``temp_c`` (may be negative: already over)."""
    r = np.maximum(np.asarray(r_c_per_w, dtype=np.float64), MIN_R_C_PER_W)
    out = (np.asarray(temp_c, dtype=np.float64) - inlet_c - offset_c) / r
    return float(out) if out.ndim == 0 else out


def server_offset_c(snapshot: Snapshot) -> FloatArray:
    """Per-server slot offset the belief adds over ``inlet + R × P`` (see ``thermal_offset_c``)."""
    return thermal_offset_c(snapshot)


def server_limit_c(snapshot: Snapshot) -> FloatArray:
    """Per-server line the hottest GPU's temperature is held under: slowdown, lowered by a hot HBM.

    See :func:`controller.core.headroom.thermal_limit_c`; exactly ``slowdown_temp_c`` where HBM is unknown.
    """
    return thermal_limit_c(snapshot)
