"""Inlet and GPU temperature physics (pure NumPy).

* Inlet: ``supply(zone) + position offset + recirculation_weight × RECIRC_GAIN_C ×
  max(0, heat/capacity − RECIRC_ONSET_FRAC)`` — air handlers keep the cold aisle at the
  supply temperature until the zone's heat nears their capacity, after which hot
  exhaust recirculates over the racks (worst at the top).
* GPU: first-order lag toward ``inlet + R_th × P_gpu + slot offset`` with time
  constant ``GPU_TAU_S`` (DESIGN.md §5: lag of tens of seconds), integrated exactly
  for a constant target over a step: ``T ← T_ss + (T − T_ss)·exp(−dt/τ)``.
* Hardware thermal slowdown: while a GPU is at or above its slowdown temperature the
  clock drops by ``THROTTLE_STEP_FRAC`` per second down to ``THROTTLE_MIN_FRAC``; it
  recovers by ``RECOVER_STEP_FRAC`` per second once it is ``HYSTERESIS_C`` below.

Examples:
    >>> float(steady_gpu_temp_c(np.array([25.0]), np.array([0.1]), np.array([300.0]), np.array([2.0]))[0])
    57.0
    >>> round(float(lag_step(np.array([30.0]), np.array([60.0]), 30.0, 30.0)[0]), 3)
    48.964
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F = npt.NDArray[np.float64]

GPU_TAU_S = 30.0
INLET_TAU_S = 120.0
RECIRC_GAIN_C = 12.0
RECIRC_ONSET_FRAC = 0.75
#: Per-GPU-slot offsets over the server's airflow path (rear GPUs breathe pre-heated air), °C.
SLOT_OFFSETS_C = np.array([0.0, 0.5, 1.0, 1.5, 2.5, 3.0, 3.5, 4.0])
THROTTLE_STEP_FRAC = 0.08
THROTTLE_MIN_FRAC = 0.45
RECOVER_STEP_FRAC = 0.04
HYSTERESIS_C = 2.0


def inlet_temp_c(supply_c: F, offset_c: F, recirc_weight: F, zone_heat_frac: F) -> F:
    """Steady inlet temperature of each server from its zone's supply, position and the zone's heat load."""
    recirc = recirc_weight * RECIRC_GAIN_C * np.maximum(zone_heat_frac - RECIRC_ONSET_FRAC, 0.0)
    return np.asarray(supply_c + offset_c + recirc, dtype=np.float64)


def steady_gpu_temp_c(inlet_c: F, r_th_c_per_w: F, gpu_power_w: F, slot_offset_c: F | float = 0.0) -> F:
    """Steady-state GPU temperature: inlet + R_th × power (+ per-slot offset)."""
    return np.asarray(inlet_c + r_th_c_per_w * gpu_power_w + slot_offset_c, dtype=np.float64)


def lag_step(temp_c: F, target_c: F, dt_s: float, tau_s: float) -> F:
    """Advance a first-order lag by ``dt_s`` toward a target held constant over the step."""
    a = float(np.exp(-dt_s / tau_s))
    return np.asarray(target_c + (temp_c - target_c) * a, dtype=np.float64)


def thermal_clock_step(clock_frac: F, temp_c: F, slowdown_c: F | float, dt_s: float) -> F:
    """Hardware thermal slowdown: clocks fall at or above slowdown, recover below it minus hysteresis.

    Examples:
        >>> thermal_clock_step(np.array([1.0, 0.5, 0.5]), np.array([90.0, 80.0, 86.0]), 87.0, 1.0).round(2).tolist()
        [0.92, 0.54, 0.5]
    """
    hot = temp_c >= slowdown_c
    cool = temp_c <= slowdown_c - HYSTERESIS_C
    down = np.maximum(clock_frac - THROTTLE_STEP_FRAC * dt_s, THROTTLE_MIN_FRAC)
    up = np.minimum(clock_frac + RECOVER_STEP_FRAC * dt_s, 1.0)
    return np.asarray(np.where(hot, down, np.where(cool, up, clock_frac)), dtype=np.float64)
