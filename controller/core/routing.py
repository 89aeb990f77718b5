"""Routing weights across an endpoint's SaaS instances, from thermal, power and SLO-capacity headroom.

weight_i ∝ spare_i × h_i^γ with h_i = min(thermal headroom, row power headroom), each
normalised to [0, 1] (DESIGN.md §6), and spare_i = max(0, safe capacity − load) + a floor
share of capacity, so instances already busy get less (load-aware, like the routers we feed). The raw weights are smoothed against the previous
decision, floored for active instances, and finally water-filled so that no instance
gets more than its capacity at the SLO (weight × demand ≤ capacity) whenever the
endpoint's capacity covers its demand. Instances too hot or in a row over budget are
drained (weight 0) while the others can carry the load; reconfiguration then deals
with them. Prefill-heavy (long-prompt) requests get a second weight vector restricted
to the coolest instances, because prefill runs at or above TDP.

When forecasts are stale the headroom terms are dropped (capacity-proportional
weights, the safe fallback) and the decision says so.
"""

from __future__ import annotations

import numpy as np

from controller.core.belief import power_for_temp_w, server_limit_c, server_offset_c
from controller.core.catalogue import Catalogue
from controller.core.snapshot import BoolArray, FloatArray, IntArray, RoutingDecision, RoutingParams, Snapshot

STALE_AFTER_S = 30.0
"""Forecasts older than this are not trusted for headroom (overridden by ``stale_after_s``)."""


def cap_weights(weights: FloatArray, upper: FloatArray) -> FloatArray:
    """Normalise ``weights`` to sum 1 with ``weights_i <= upper_i`` (water-filling).

    When ``sum(upper) < 1`` no such vector exists; the result is then ``upper`` scaled to
    sum 1 (every instance equally over its cap).

    Examples:
        >>> cap_weights(np.array([0.8, 0.1, 0.1]), np.array([0.5, 1.0, 1.0])).round(3).tolist()
        [0.5, 0.25, 0.25]
    """
    w = np.maximum(weights, 0.0).astype(np.float64)
    ub = np.maximum(upper, 0.0).astype(np.float64)
    if w.size == 0:
        return w
    if ub.sum() <= 1.0 + 1e-12:
        total = ub.sum()
        return ub / total if total > 0 else np.full(w.size, 1.0 / w.size)
    if w.sum() <= 1e-12:
        w = ub.copy()
    w = w / w.sum()
    fixed = np.zeros(w.size, dtype=np.bool_)
    for _ in range(w.size):
        over = (w > ub + 1e-12) & ~fixed
        if not over.any():
            break
        fixed |= over
        w[fixed] = ub[fixed]
        rest = 1.0 - w[fixed].sum()
        free_w = w[~fixed]
        s = free_w.sum()
        if s <= 1e-12:
            # Remaining mass goes to the free instances in proportion to their spare caps.
            spare = ub[~fixed]
            w[~fixed] = rest * spare / spare.sum() if spare.sum() > 0 else 0.0
        else:
            w[~fixed] = free_w * (rest / s)
    out: FloatArray = w / w.sum()
    return out


def routing_weights(
    snapshot: Snapshot,
    endpoint_id: str,
    *,
    previous: RoutingDecision | None = None,
    now_s: float,
    params: RoutingParams | None = None,
    catalogue: Catalogue | None = None,
    stale_after_s: float = STALE_AFTER_S,
) -> RoutingDecision:
    """Weights for one endpoint's instances; non-negative, summing to 1, capped at SLO capacity when possible.

    Args:
        snapshot: cluster state and forecasts.
        endpoint_id: the endpoint to route.
        previous: the last decision for this endpoint (smoothing); None on the first call.
        now_s: decision time.
        params: routing knobs.
        catalogue: optional; when given, each instance's load is also capped at what keeps its
            GPUs under the slowdown temperature in its current configuration.
        stale_after_s: forecast age beyond which headroom is ignored.

    Raises:
        ValueError: the endpoint has no instances.
    """
    p = params or RoutingParams()
    inst = snapshot.instances
    idx = inst.of_endpoint(endpoint_id)
    if idx.size == 0:
        raise ValueError(f"routing: endpoint {endpoint_id!r} has no instances in the snapshot")
    srv = inst.server_index[idx]
    row = snapshot.server_row[srv]
    stale = bool(snapshot.forecast_age_s > stale_after_s)

    temp_c = snapshot.gpu_temp_c[srv] if stale else np.maximum(snapshot.gpu_temp_hi_c[srv], snapshot.gpu_temp_c[srv])
    limit_c = server_limit_c(snapshot)[srv]  # slowdown, lowered where the HBM is hot
    thermal_headroom_c = limit_c - temp_c
    row_power_w = snapshot.row_power_w if stale else np.maximum(snapshot.row_power_hi_w, snapshot.row_power_w)
    power_headroom_w = (snapshot.row_budget_w - row_power_w)[row]
    budget_w = np.maximum(snapshot.row_budget_w[row], 1.0)

    capacity = inst.capacity_tokens_per_s_at_slo[idx].astype(np.float64)
    out_of_service = inst.draining[idx] | (inst.busy_until_s[idx] > now_s)
    capacity = np.where(out_of_service, 0.0, capacity)

    th = np.clip(thermal_headroom_c / p.thermal_scale_c, 0.0, 1.0)
    pw = np.clip(power_headroom_w / (budget_w * p.power_scale_frac), 0.0, 1.0)
    h = np.ones(idx.size) if stale else np.minimum(th, pw)

    hot = (thermal_headroom_c < p.drain_thermal_headroom_c) | (power_headroom_w < p.drain_power_headroom_frac * budget_w)
    drain: BoolArray = out_of_service.copy() if stale else out_of_service | hot
    demand = max(snapshot.endpoint_demand_hi(endpoint_id), float(inst.load_tokens_per_s[idx].sum()), 1e-9)
    if capacity[~drain].sum() < demand and not stale:
        # Draining the hot instances would overload the rest: keep them, at their (low) headroom weight.
        drain = out_of_service.copy()

    safe_capacity = capacity.copy()
    if catalogue is not None and not stale:
        safe_capacity = np.minimum(safe_capacity, _thermal_safe_load(snapshot, catalogue, idx, now_s,
                                                                    p.drain_thermal_headroom_c))

    load = inst.load_tokens_per_s[idx]
    spare = capacity if stale else np.maximum(safe_capacity - load, 0.0) + p.spare_floor_frac * capacity
    raw = np.where(drain, 0.0, spare * np.power(np.maximum(h, 1e-3), p.gamma))
    if raw.sum() <= 0:
        raw = np.where(drain, 0.0, np.maximum(capacity, 1e-9))
        if raw.sum() <= 0:
            raw = np.ones(idx.size)
    new = raw / raw.sum()

    if previous is not None and previous.instance_ids == tuple(inst.instance_ids[i] for i in idx):
        new = p.smoothing * new + (1.0 - p.smoothing) * np.where(drain, 0.0, previous.weights)
    active = ~drain
    if active.any():
        new = np.where(active, np.maximum(new, p.floor_frac / active.sum()), 0.0)

    upper = np.where(drain, 0.0, safe_capacity / demand)
    if upper.sum() < 1.0:
        upper = np.where(drain, 0.0, capacity / demand)
    weights = cap_weights(new, upper)

    cool_order = np.argsort(-thermal_headroom_c, kind="stable")
    num_cool = max(1, int(np.ceil(p.long_prompt_coolest_frac * active.sum())))
    cool = np.zeros(idx.size, dtype=np.bool_)
    cool[[i for i in cool_order if active[i]][:num_cool]] = True
    lp = np.where(cool, np.maximum(weights, 1e-12) * np.maximum(th, 1e-3), 0.0)
    long_prompt = lp / lp.sum() if lp.sum() > 0 else weights.copy()

    num_drain = int(drain.sum())
    served = float(np.minimum(weights * demand, capacity).sum())
    reason = (
        f"{endpoint_id}: {idx.size} instances, {num_drain} drained, demand {demand:.0f} tok/s vs capacity "
        f"{capacity.sum():.0f} tok/s at SLO; weight ∝ spare capacity × min(thermal, row power headroom)^{p.gamma:g}, "
        f"min thermal headroom {thermal_headroom_c.min():.1f} °C, min row headroom {power_headroom_w.min():.0f} W"
    )
    if stale:
        reason = f"STALE forecasts ({snapshot.forecast_age_s:.0f}s old): capacity-proportional fallback; " + reason
    if served + 1e-6 < demand:
        reason += f"; overloaded: {demand - served:.0f} tok/s above SLO capacity"
    return RoutingDecision(
        endpoint_id=endpoint_id,
        instance_ids=tuple(inst.instance_ids[i] for i in idx),
        instance_index=idx,
        weights=weights,
        long_prompt_weights=long_prompt,
        draining=drain,
        thermal_headroom_c=thermal_headroom_c,
        power_headroom_w=power_headroom_w,
        capacity_tokens_per_s=capacity,
        reason=reason,
        stale_inputs=stale,
        valid_until_s=now_s + p.valid_for_s,
    )


def _thermal_safe_load(snapshot: Snapshot, catalogue: Catalogue, idx: IntArray, now_s: float,
                       margin_c: float) -> FloatArray:
    """Tokens/s each instance can take in its current configuration before its GPUs reach the drain line.

    The drain line is slowdown (lowered by a hot HBM: ``server_limit_c``) − ``margin_c`` (``RoutingParams.drain_thermal_headroom_c``); the GPU power
    that reaches it comes from the shared belief, slot offset included (before the merge this ignored
    the offset and hard-coded a 1 °C margin).
    """
    del now_s
    inst = snapshot.instances
    srv = inst.server_index[idx]
    cfg = [inst.config_ids[i] for i in idx]
    lookup = {c: catalogue.option(c) for c in set(cfg)}
    idle = np.asarray([lookup[c].gpu_idle_w for c in cfg])
    a_p = np.asarray([lookup[c].prefill_w_per_token_s for c in cfg])
    a_d = np.asarray([lookup[c].decode_w_per_token_s for c in cfg])
    pf = inst.prefill_frac[idx] if inst.prefill_frac.size else np.full(idx.size, 0.5)
    w_per_tok = np.maximum(pf * a_p + (1.0 - pf) * a_d, 1e-9)
    p_max = power_for_temp_w(server_limit_c(snapshot)[srv] - margin_c, snapshot.inlet_hi_c[srv],
                             server_offset_c(snapshot)[srv], snapshot.thermal_resistance_c_per_w[srv])
    out: FloatArray = np.maximum(p_max - idle, 0.0) / w_per_tok
    return out
