"""Server and row power, and the reactive row power manager (pure NumPy).

Server power = base (CPUs, memory, NICs, fans at idle) + ``CPU_DYNAMIC_W`` × busy share
+ Σ GPU power. Row power = Σ server power.

Reactive power manager (what clusters run today; POLCA §2, TAPAS §2): it reads each
row's power every ``PM_SAMPLE_S`` seconds; when a row is over its budget it computes
the uniform row frequency cap that brings the row's GPU dynamic power under
``PM_TARGET_FRAC`` × budget (from the measured GPU share and the f**2 power law),
and the cap takes effect ``PM_ACTUATION_S`` later (out-of-band GPU control; within the
~10 s UPS deadline). When the row has stayed under ``PM_RELEASE_FRAC`` × budget for
``PM_RELEASE_HOLD_S`` the cap rises by ``PM_RELEASE_STEP_FRAC`` per sample.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from simulator.physics.perf import POWER_FREQ_EXP

F = npt.NDArray[np.float64]

CPU_DYNAMIC_W = 400.0
PM_SAMPLE_S = 2.0
PM_ACTUATION_S = 4.0
PM_DEADLINE_S = 10.0
PM_TARGET_FRAC = 0.95
PM_RELEASE_FRAC = 0.90
PM_RELEASE_HOLD_S = 30.0
PM_RELEASE_STEP_FRAC = 0.05
PM_MIN_CAP_FRAC = 0.4


def server_power_w(base_w: F, busy_frac: F, gpu_power_sum_w: F) -> F:
    """Server wall power from its base, its busy share and its GPUs' power.

    Examples:
        >>> float(server_power_w(np.array([1200.0]), np.array([0.5]), np.array([3200.0]))[0])
        4600.0
    """
    return np.asarray(base_w + CPU_DYNAMIC_W * np.clip(busy_frac, 0.0, 1.0) + gpu_power_sum_w, dtype=np.float64)


def row_power_w(server_power: F, server_row: npt.NDArray[np.int64], num_rows: int) -> F:
    """Sum of server power per row."""
    return np.asarray(np.bincount(server_row, weights=server_power, minlength=num_rows), dtype=np.float64)


def cap_needed_frac(row_power: F, gpu_dyn_w: F, budget_w: F, current_cap: F) -> F:
    """Uniform frequency cap (fraction of max clock) bringing each row to ``PM_TARGET_FRAC`` × budget.

    The GPUs' dynamic power (above idle) at the current cap scales as (cap'/cap)**exp;
    everything else is taken as fixed. Rows under budget keep ``current_cap``.

    Examples:
        >>> cap_needed_frac(np.array([120.0]), np.array([60.0]), np.array([100.0]), np.array([1.0])).round(3).tolist()
        [0.764]
    """
    target = PM_TARGET_FRAC * budget_w
    fixed = row_power - gpu_dyn_w
    allowed_dyn = np.maximum(target - fixed, 0.0)
    ratio = np.where(gpu_dyn_w > 0, allowed_dyn / np.maximum(gpu_dyn_w, 1e-9), 1.0)
    new = current_cap * np.power(np.clip(ratio, 0.0, 1.0), 1.0 / POWER_FREQ_EXP)
    over = row_power > budget_w
    return np.asarray(np.where(over, np.clip(new, PM_MIN_CAP_FRAC, 1.0), current_cap), dtype=np.float64)
