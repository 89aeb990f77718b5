"""Capacity at equal tolerance: how many servers per power domain each policy can run.

The search keeps the base cluster's row budgets and cooling capacities fixed (the
budget of a ``base_servers_per_row`` row at ``oversubscription``) and adds racks to
every row, ``step_racks`` at a time, until a policy first breaks the tolerance:

* SLO attainment ≥ ``min_slo_attainment`` (0.95), and
* throttled GPU-seconds ≤ ``max_throttled_frac`` (1 %) of the in-use GPU-seconds
  (thermal slowdown or a row power cap), and
* no row over its budget for longer than the power manager's deadline (10 s).

SaaS load scales with the added servers (the same share of servers hosts SaaS at the
same target utilisation), as it does when a provider adds servers to serve more demand.
A policy's maximum is the largest size that passed; ``ratio = tapas / baseline``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundation.topology import DEFAULT_CLUSTER_FILE, _read_layout, build_topology
from simulator.engine import RunResult, SimParams, run
from simulator.workload import load_trace


@dataclass(frozen=True)
class Tolerance:
    """What counts as breaking: documented in the module docstring."""

    min_slo_attainment: float = 0.95
    max_throttled_frac: float = 0.01
    max_deadline_violation_s: float = 0.0


def passes(result: RunResult, tol: Tolerance) -> tuple[bool, str]:
    """Whether a run is within tolerance, and why not."""
    m = result.metrics
    in_use_gpu_s = result.info.get("in_use_gpu_seconds", 0.0) or 1.0
    thr = m["throttled_gpu_seconds"] / in_use_gpu_s
    if not m["slo_attainment"] >= tol.min_slo_attainment:
        return False, f"slo_attainment {m['slo_attainment']:.3f} < {tol.min_slo_attainment}"
    if thr > tol.max_throttled_frac:
        return False, f"throttled fraction {thr:.4f} > {tol.max_throttled_frac}"
    if m["power_deadline_violation_s"] > tol.max_deadline_violation_s:
        return False, f"power deadline violated for {m['power_deadline_violation_s']:.0f} s"
    return True, "within tolerance"


def search_capacity(
    policies: Sequence[str],
    *,
    trace_path: Path | str,
    hours: float = 1.0,
    seed: int = 0,
    rows: int = 2,
    oversubscription: float = 1.0,
    step_racks: int = 1,
    max_racks: int = 30,
    scenario: str = "normal",
    tolerance: Tolerance | None = None,
    params: SimParams | None = None,
    progress: Callable[[str], None] | None = None,
    past_failure: int = 0,
) -> dict[str, Any]:
    """Raise racks per row until each policy breaks; return the ``tapas simulate capacity`` JSON.

    ``past_failure`` more sizes are run after a policy's first failure (they do not change its
    maximum, which is the largest size before the first failure): how far past the edge it is.
    """
    tol = tolerance or Tolerance()
    layout = _read_layout(DEFAULT_CLUSTER_FILE)
    spr = int(layout["servers_per_rack"])
    base_racks = int(layout["racks_per_row"])
    rows_per_zone = int(layout["rows_per_zone"])
    base = build_topology(**{**layout, "num_servers": rows * spr * base_racks, "oversubscription": oversubscription})
    row_budget = base.rows[0].budget_w
    zone_cap = base.zones[0].capacity_w
    zone_rows = min(rows, rows_per_zone)
    trace = load_trace(trace_path)
    out: dict[str, Any] = {"policies": {}, "tolerance": tol.__dict__, "row_budget_w": row_budget,
                           "zone_capacity_w": zone_cap, "hours": hours, "seed": seed, "scenario": scenario,
                           "past_failure": past_failure}
    for name in policies:
        best = 0
        steps: list[dict[str, Any]] = []
        racks = base_racks
        failed_at: int | None = None
        while racks <= max_racks:
            topo = build_topology(**{**layout, "num_servers": rows * spr * racks, "racks_per_row": racks,
                                     "row_budget_w": row_budget, "zone_capacity_w": zone_cap * zone_rows / rows_per_zone
                                     if rows < rows_per_zone else zone_cap, "oversubscription": oversubscription})
            res = run(topo, scenario, name, hours=hours, seed=seed, trace=trace, params=params)
            ok, why = passes(res, tol)
            steps.append({"servers_per_domain": spr * racks, "passed": ok, "why": why,
                          "slo_attainment": res.metrics["slo_attainment"],
                          "throttled_gpu_seconds": res.metrics["throttled_gpu_seconds"],
                          "peak_row_power_frac": res.metrics["peak_row_power_frac"],
                          "mean_row_power_w": res.info["mean_row_power_w"],
                          "mean_saas_gpu_power_w": res.info["mean_saas_gpu_power_w"]})
            if progress:
                progress(f"{name}: {spr * racks} servers/domain → {'pass' if ok else 'FAIL'} ({why})")
            if not ok and failed_at is None:
                failed_at = len(steps) - 1
            if failed_at is not None:
                if len(steps) - failed_at > past_failure:
                    break
            else:
                best = spr * racks
            racks += step_racks
        out["policies"][name] = {"max_servers_per_domain": best, "steps": steps}
    b = out["policies"].get("baseline", {}).get("max_servers_per_domain")
    tp = out["policies"].get("tapas", {}).get("max_servers_per_domain")
    out["ratio"] = (tp / b) if (b and tp is not None) else None
    return out
