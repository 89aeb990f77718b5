"""Decision-core latency: placement over 10,000 servers, routing and reconfiguration for 1,000 instances.

Each figure sits beside a same-run naive baseline — the same decision written as a
per-server / per-instance Python loop over objects, the way a first version would — and
their ratio (naive / vectorised, so > 1 means the core is faster). Targets (issue 4):
placement p99 < 10 ms, routing < 5 ms, reconfiguration plan < 200 ms.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from controller.core.catalogue import Catalogue
from controller.core.placement import rank_servers
from controller.core.reconfigure import plan_reconfiguration
from controller.core.routing import routing_weights
from controller.core.snapshot import PlacementMargins, PlacementRequest, Snapshot
from controller.core.synthetic import synthetic_catalogue, synthetic_snapshot


def _times_ms(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _p99(xs: list[float]) -> float:
    return float(np.percentile(np.asarray(xs), 99))


def naive_placement(snapshot: Snapshot, request: PlacementRequest, margins: PlacementMargins) -> list[tuple[float, int]]:
    """Per-server loop computing the same feasibility and score as ``rank_servers`` (the baseline)."""
    out = []
    for s in range(snapshot.num_servers):
        if snapshot.free_gpus[s] < request.num_gpus:
            continue
        p = float(snapshot.gpu_tdp_w[s])
        added = request.num_gpus * max(p - float(snapshot.gpu_idle_power_w[s]), 0.0)
        peak = max(float(snapshot.gpu_temp_hi_c[s]), float(snapshot.inlet_hi_c[s]) + float(snapshot.thermal_resistance_c_per_w[s]) * p)
        limit = float(snapshot.slowdown_temp_c[s]) - margins.iaas_thermal_margin_c
        r = int(snapshot.server_row[s])
        z = int(snapshot.server_zone[s])
        row_lim = float(snapshot.row_budget_w[r]) * (1 - margins.iaas_power_margin_frac)
        zone_lim = float(snapshot.zone_capacity_w[z]) * (1 - margins.iaas_zone_margin_frac)
        th = limit - peak
        rh = row_lim - float(snapshot.row_power_hi_w[r]) - added
        zh = zone_lim - float(snapshot.zone_heat_hi_w[z]) - added
        if th < 0 or rh < 0 or zh < 0:
            continue
        score = min(th / max(limit - float(snapshot.inlet_hi_c[s]), 1.0), rh / row_lim, zh / zone_lim)
        out.append((score, s))
    out.sort(reverse=True)
    return out[: margins.max_candidates]


def naive_routing(snapshot: Snapshot, endpoint_id: str) -> dict[str, float]:
    """Per-instance loop: capacity × headroom weights, normalised (no capping or smoothing)."""
    inst = snapshot.instances
    raw: dict[str, float] = {}
    for i, e in enumerate(inst.endpoint_ids):
        if e != endpoint_id:
            continue
        s = int(inst.server_index[i])
        r = int(snapshot.server_row[s])
        th = min(max((float(snapshot.slowdown_temp_c[s]) - float(snapshot.gpu_temp_hi_c[s])) / 15.0, 0.0), 1.0)
        budget = float(snapshot.row_budget_w[r])
        pw = min(max((budget - float(snapshot.row_power_hi_w[r])) / (0.15 * budget), 0.0), 1.0)
        raw[inst.instance_ids[i]] = float(inst.capacity_tokens_per_s_at_slo[i]) * max(min(th, pw), 1e-3)
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def naive_reconfiguration(snapshot: Snapshot, catalogue: Catalogue) -> list[tuple[str, str]]:
    """Per-instance, per-option loop picking the cheapest thermally feasible option (no row or capacity pass)."""
    inst = snapshot.instances
    out = []
    for i in range(len(inst)):
        s = int(inst.server_index[i])
        e = inst.endpoint_ids[i]
        d = catalogue.default(e)
        load = float(inst.load_tokens_per_s[i])
        pf = float(inst.prefill_frac[i])
        best: tuple[float, str] | None = None
        for o in catalogue.options[e]:
            served = min(load, o.capacity_tokens_per_s_at_slo)
            p = o.gpu_power_w(served * pf, served * (1 - pf))
            t = float(snapshot.inlet_hi_c[s]) + float(snapshot.thermal_resistance_c_per_w[s]) * p
            if t > float(snapshot.slowdown_temp_c[s]) - 3.0:
                continue
            cost = 10 * max(d.quality_score - o.quality_score, 0) + max(load * 1.1 - o.capacity_tokens_per_s_at_slo, 0) / max(load, 1)
            cost += 0.05 * p / float(snapshot.gpu_tdp_w[s])
            if best is None or cost < best[0]:
                best = (cost, o.config_id)
        if best is not None and best[1] != inst.config_ids[i]:
            out.append((inst.instance_ids[i], best[1]))
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Measure the three decision latencies and their naive baselines.

    p99 is sensitive to CPU contention (other processes on the machine): read it beside the median.
    """
    rng = np.random.default_rng(7)
    repeats = 20 if quick else 200
    naive_repeats = 3 if quick else 10
    endpoints = tuple(f"ep{i}" for i in range(10))

    big = synthetic_snapshot(rng, num_servers=10_000, num_instances=2_000, num_vms=3_000, endpoint_ids=endpoints)
    margins = PlacementMargins()
    requests = [PlacementRequest(f"r{k}", "iaas" if k % 2 else "saas", 8 if k % 3 else 4) for k in range(repeats)]
    it = iter(requests * 2)
    place = _times_ms(lambda: rank_servers(big, next(it), now_s=0.0, margins=margins), repeats)
    req = PlacementRequest("naive", "iaas", 8)
    place_naive = _times_ms(lambda: naive_placement(big, req, margins), naive_repeats)

    one = ("ep0",)
    cat1 = synthetic_catalogue(one)
    snap1 = synthetic_snapshot(rng, num_servers=1_200, num_instances=1_000, num_vms=100, endpoint_ids=one, load_frac=0.75)
    prev = routing_weights(snap1, "ep0", now_s=0.0)
    route = _times_ms(lambda: routing_weights(snap1, "ep0", previous=prev, now_s=1.0, catalogue=cat1), repeats)
    route_naive = _times_ms(lambda: naive_routing(snap1, "ep0"), naive_repeats)

    cat10 = synthetic_catalogue(endpoints)
    hot = synthetic_snapshot(
        rng, num_servers=1_200, num_instances=1_000, num_vms=100, endpoint_ids=endpoints, load_frac=0.8, oversubscription=1.6
    )
    hot = _warmer(hot, 8.0)
    reconf_repeats = 5 if quick else 30
    reconf = _times_ms(lambda: plan_reconfiguration(hot, cat10, now_s=0.0), reconf_repeats)
    num_changes = len(plan_reconfiguration(hot, cat10, now_s=0.0))
    reconf_naive = _times_ms(lambda: naive_reconfiguration(hot, cat10), naive_repeats)

    p99 = _p99(place)
    routing_ms = statistics.median(route)
    reconfig_ms = statistics.median(reconf)
    return {
        "placement_p99_ms": round(p99, 3),
        "placement_median_ms": round(statistics.median(place), 3),
        "placement_naive_p99_ms": round(_p99(place_naive), 3),
        "placement_ratio": round(_p99(place_naive) / p99, 1),
        "placement_servers": big.num_servers,
        "routing_ms": round(routing_ms, 3),
        "routing_naive_ms": round(statistics.median(route_naive), 3),
        "routing_ratio": round(statistics.median(route_naive) / routing_ms, 1),
        "routing_instances": len(snap1.instances),
        "reconfig_ms": round(reconfig_ms, 3),
        "reconfig_naive_ms": round(statistics.median(reconf_naive), 3),
        "reconfig_ratio": round(statistics.median(reconf_naive) / reconfig_ms, 1),
        "reconfig_instances": len(hot.instances),
        "reconfig_changes": num_changes,
        "placement_target_met": p99 < 10.0,
        "routing_target_met": routing_ms < 5.0,
        "reconfig_target_met": reconfig_ms < 200.0,
    }


def _warmer(snapshot: Snapshot, rise_c: float) -> Snapshot:
    """The same snapshot with hotter inlets, so reconfiguration has work to do."""
    from dataclasses import replace

    return replace(snapshot, inlet_hi_c=snapshot.inlet_hi_c + rise_c, inlet_c=snapshot.inlet_c + rise_c)
