"""``tapas bench policies``: closed-loop comparison of policies on the same cluster, trace, scenario and seed.

Figures are flat: ``{scenario}.{policy}.{metric}`` for the headline metrics, and
``{scenario}.{metric}_ratio`` = tapas / baseline (below 1 is better for throttling,
temperature and row power; above 1 for SLO attainment; null when baseline is 0). One seeded run per cell: the
simulator is deterministic, so repeats would only repeat the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

from contracts.errors import ConfigError
from foundation.settings import load_settings
from foundation.topology import default_topology
from simulator.engine import run as run_sim
from simulator.workload import load_trace

HEADLINE = ("thermal_throttle_events", "power_throttle_events", "throttled_gpu_seconds", "max_gpu_temp_c",
            "peak_row_power_frac", "slo_attainment", "p99_ttft_s", "quality_loss", "saas_perf_loss", "iaas_perf_loss")
RATIO_KEYS = ("throttled_gpu_seconds", "max_gpu_temp_c", "peak_row_power_frac", "slo_attainment", "p99_ttft_s")


def run(quick: bool = False) -> dict[str, Any]:
    """Baseline against tapas (and its ablations unless quick) in ``normal`` and ``power-failure``."""
    servers, hours = (80, 0.25) if quick else (240, 1.0)
    policies = ["baseline", "tapas"] if quick else ["baseline", "tapas", "tapas-placement", "tapas-routing",
                                                    "tapas-reconfig", "oracle"]
    scenarios = ["power-failure"] if quick else ["normal", "power-failure"]
    trace = load_trace(load_settings().resolved_trace_file)
    topo = default_topology(servers, oversubscription=1.5)
    out: dict[str, Any] = {"servers": servers, "hours": hours, "oversubscription": 1.5}
    for sc in scenarios:
        got: dict[str, dict[str, float]] = {}
        for name in policies:
            try:
                res = run_sim(topo, sc, name, hours=hours, seed=0, trace=trace)
            except ConfigError as exc:  # tapas family not present in this checkout
                out[f"{sc}.{name}.error"] = str(exc)
                continue
            got[name] = res.metrics
            for k in HEADLINE:
                out[f"{sc}.{name}.{k}"] = res.metrics[k]
        if "baseline" in got and "tapas" in got:
            for k in RATIO_KEYS:
                b, t = got["baseline"][k], got["tapas"][k]
                out[f"{sc}.{k}_ratio"] = t / b if b and math.isfinite(b) and b != 0 else None
    return out
