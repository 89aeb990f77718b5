"""Reconfiguration of SaaS instances: choose each instance's catalogue configuration.

A greedy optimisation whose result is checked against the constraints (DESIGN.md §6):

1. For every instance and every option of its endpoint (a padded N × K matrix) predict the
   instance's expected load served, its per-GPU power (catalogue power model) and its
   hottest-GPU temperature ``inlet_hi + R × power``.
2. Cost = α·quality loss + β·performance loss + δ·switch cost (+ a small power term so
   that, all else equal, the cooler option wins). Performance loss is the load above the
   option's SLO capacity plus its capacity shortfall against the endpoint default.
   Options that would cross ``slowdown − margin`` are infeasible.
3. Transition rules: slow knobs (variant, TP, precision: weights reload) only after
   ``slow_interval_s`` in the current configuration and staggered (at most
   ``max_slow_frac`` of an endpoint's instances reloading at once, and never when the
   remaining capacity would fall below demand); moving to a hotter option needs
   ``hysteresis_s`` in the current one, ``revert_margin_c`` extra headroom and fresh
   forecasts (no new aggressive configuration on stale forecasts).
4. Per row, while predicted row power exceeds ``budget × (1 − margin)``, move the instance
   whose next cooler option costs least per watt saved.
5. Per endpoint, while SLO capacity is below forecast-high demand × (1 + headroom), move the
   instance whose next faster option costs least per token/s gained, if it keeps the
   thermal and row limits.

The result is a list of ``ConfigChange`` records, each with its trigger and reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from controller.core.belief import hottest_gpu_c, server_limit_c, server_offset_c
from controller.core.catalogue import Catalogue
from controller.core.snapshot import (
    BoolArray,
    ConfigChange,
    FloatArray,
    IntArray,
    ReconfigParams,
    Snapshot,
)

INFEASIBLE = 1e9

POWER_CALIBRATION_RANGE = (0.7, 1.5)
"""Bounds of the measured/modelled dynamic-power ratio applied to an instance's options."""



@dataclass(frozen=True)
class OptionMatrix:
    """Per-instance candidate options as padded (N, K) matrices (K = most options of any endpoint)."""

    instance_index: IntArray
    config_ids: list[tuple[str, ...]]
    valid: BoolArray
    capacity: FloatArray
    quality: FloatArray
    switch_cost_s: FloatArray
    layout: FloatArray
    power_w: FloatArray
    """Per-GPU power at the instance's expected load served by the option."""
    temp_c: FloatArray
    current: IntArray
    default_capacity: FloatArray
    default_quality: FloatArray
    expected_load: FloatArray
    endpoint_of: tuple[str, ...]
    frequency_mhz: FloatArray
    default_frequency_mhz: FloatArray
    default_layout: FloatArray


def build_option_matrix(
    snapshot: Snapshot,
    catalogue: Catalogue,
    instance_index: IntArray,
    *,
    inlet_c: FloatArray | None = None,
    efficient_home: bool = False,
) -> OptionMatrix:
    """Predict load served, per-GPU power and temperature of every option for the given instances.

    ``default_layout`` is the endpoint default's weight layout, or ``Catalogue.efficient``'s
    when ``efficient_home`` is set (the layout the objective pulls instances toward).
    """
    inst = snapshot.instances
    n = instance_index.size
    endpoints = tuple(inst.endpoint_ids[i] for i in instance_index)
    kmax = max((len(catalogue.options[e]) for e in set(endpoints)), default=1)
    shape = (n, kmax)
    valid = np.zeros(shape, dtype=np.bool_)
    cap = np.zeros(shape)
    q = np.zeros(shape)
    sw = np.zeros(shape)
    layout = np.full(shape, -1.0)
    idle = np.zeros(shape)
    maxw = np.zeros(shape)
    ap = np.zeros(shape)
    ad = np.zeros(shape)
    current = np.zeros(n, dtype=np.int64)
    freq = np.ones(shape)
    dfreq = np.ones(n)
    dlayout = np.zeros(n)
    dcap = np.zeros(n)
    dq = np.zeros(n)

    by_endpoint: dict[str, list[int]] = {}
    for j, e in enumerate(endpoints):
        by_endpoint.setdefault(e, []).append(j)
    demand_scale = _demand_scale(snapshot)
    for e, rows_list in by_endpoint.items():
        a = catalogue.arrays(e)
        k = len(a.config_ids)
        rows = np.asarray(rows_list, dtype=np.int64)
        valid[rows, :k] = True
        cap[rows, :k] = a.capacity_tokens_per_s
        q[rows, :k] = a.quality_score
        sw[rows, :k] = a.switch_cost_s
        layout[rows, :k] = a.layout_code
        idle[rows, :k] = a.gpu_idle_w
        maxw[rows, :k] = a.gpu_max_w
        ap[rows, :k] = a.prefill_w_per_token_s
        ad[rows, :k] = a.decode_w_per_token_s
        freq[rows, :k] = a.frequency_cap_mhz
        col = {c: i for i, c in enumerate(a.config_ids)}
        d = catalogue.default(e)
        dfreq[rows] = d.frequency_cap_mhz
        home = catalogue.efficient(e) if efficient_home else d
        dlayout[rows] = a.layout_code[col[home.config_id]]
        dcap[rows] = d.capacity_tokens_per_s_at_slo
        dq[rows] = d.quality_score
        for r in rows_list:
            current[r] = col.get(inst.config_ids[int(instance_index[r])], col[d.config_id])
    ids = [catalogue.arrays(e).config_ids for e in endpoints]

    load = inst.load_tokens_per_s[instance_index] * demand_scale.get_many(endpoints)
    pf = inst.prefill_frac[instance_index] if inst.prefill_frac.size else np.full(n, 0.5)
    served = np.minimum(load[:, None], cap)
    model = np.clip(idle + (ap * pf[:, None] + ad * (1.0 - pf[:, None])) * served, idle, np.maximum(maxw, idle))
    srv = inst.server_index[instance_index]
    rows_n = np.arange(n)
    # Online calibration: scale every option's dynamic power by measured / modelled in the current configuration.
    measured = inst.gpu_power_w[instance_index] if inst.gpu_power_w.size else model[rows_n, current]
    cur_dyn = model[rows_n, current] - idle[rows_n, current]
    ratio = np.where(cur_dyn > 1.0, (measured - idle[rows_n, current]) / np.maximum(cur_dyn, 1.0), 1.0)
    ratio = np.clip(ratio, POWER_CALIBRATION_RANGE[0], POWER_CALIBRATION_RANGE[1])
    power = np.minimum(idle + (model - idle) * ratio[:, None], np.maximum(snapshot.gpu_tdp_w[srv][:, None], idle))
    inlet = (inlet_c if inlet_c is not None else snapshot.inlet_hi_c)[srv]
    r_th = snapshot.thermal_resistance_c_per_w[srv]
    offset = server_offset_c(snapshot)[srv]
    temp = hottest_gpu_c(inlet[:, None], offset[:, None], r_th[:, None], power)
    return OptionMatrix(
        instance_index=instance_index,
        config_ids=ids,
        valid=valid,
        capacity=cap,
        quality=q,
        switch_cost_s=sw,
        layout=layout,
        power_w=power,
        temp_c=temp,
        current=current,
        default_capacity=dcap,
        default_quality=dq,
        expected_load=load,
        endpoint_of=endpoints,
        frequency_mhz=freq,
        default_frequency_mhz=dfreq,
        default_layout=dlayout,
    )


class _DemandScale:
    """Forecast-high over current demand per endpoint (how much the next minutes grow the load)."""

    def __init__(self, scale: dict[str, float]) -> None:
        self._scale = scale

    def get_many(self, endpoints: Sequence[str]) -> FloatArray:
        return np.asarray([self._scale.get(e, 1.0) for e in endpoints], dtype=np.float64)


def _demand_scale(snapshot: Snapshot) -> _DemandScale:
    scale: dict[str, float] = {}
    for j, e in enumerate(snapshot.endpoint_ids):
        now = float(snapshot.endpoint_demand_tokens_per_s[j]) if snapshot.endpoint_demand_tokens_per_s.size else 0.0
        hi = float(snapshot.endpoint_demand_hi_tokens_per_s[j]) if snapshot.endpoint_demand_hi_tokens_per_s.size else 0.0
        scale[e] = max(1.0, hi / now) if now > 0 else 1.0
    return _DemandScale(scale)


def plan_reconfiguration(
    snapshot: Snapshot,
    catalogue: Catalogue,
    *,
    now_s: float,
    params: ReconfigParams | None = None,
    row_budget_w: FloatArray | None = None,
    inlet_c: FloatArray | None = None,
    allow_slow: bool = True,
    trigger_hint: str = "",
    stale_after_s: float | None = None,
) -> list[ConfigChange]:
    """Choose configurations for the SaaS instances of ``snapshot``; return the changes.

    Args:
        snapshot: cluster state and forecasts.
        catalogue: the options of every endpoint.
        now_s: decision time.
        params: objective weights and timing rules.
        row_budget_w: per-row budgets to plan against (emergencies lower them); default the snapshot's.
        inlet_c: per-server inlet to plan against (cooling failures raise it); default ``inlet_hi_c``.
        allow_slow: False restricts the plan to fast knobs (frequency cap, batch size).
        trigger_hint: recorded as the trigger of every change when non-empty (e.g. ``emergency``).
        stale_after_s: forecast age beyond which no hotter configuration is chosen.

    Returns:
        Changes for the instances whose best configuration differs from the current one.
    """
    p = params or ReconfigParams()
    inst = snapshot.instances
    if len(inst) == 0:
        return []
    stale = snapshot.forecast_age_s > (stale_after_s if stale_after_s is not None else p.stale_after_s)
    budget = snapshot.row_budget_w if row_budget_w is None else row_budget_w
    # Draining (routing) instances still draw power and may be reconfigured; reloading ones may not.
    serving = inst.busy_until_s <= now_s
    idx = np.flatnonzero(serving).astype(np.int64)
    if idx.size == 0:
        return []
    m = build_option_matrix(snapshot, catalogue, idx, inlet_c=inlet_c, efficient_home=p.home_layout == "efficient")
    n, _ = m.valid.shape
    rows_n = np.arange(n)
    srv = inst.server_index[idx]
    gpus = inst.num_gpus[idx].astype(np.float64)
    tdp = snapshot.gpu_tdp_w[srv]
    limit_c = server_limit_c(snapshot)[srv] - p.thermal_margin_c  # slowdown, lowered where the HBM is hot
    cur = m.current
    cur_power = m.power_w[rows_n, cur]
    cur_layout = m.layout[rows_n, cur]
    since = inst.config_since_s[idx] if inst.config_since_s.size else np.full(n, -np.inf)

    # ---- cost of each option
    load = m.expected_load
    need = load * (1.0 + p.slo_headroom_frac)
    overload = np.maximum(need[:, None] - m.capacity, 0.0) / np.maximum(need[:, None], 1.0)
    shortfall = np.maximum(m.default_capacity[:, None] - m.capacity, 0.0) / np.maximum(m.default_capacity[:, None], 1.0)
    quality_loss = np.maximum(m.default_quality[:, None] - m.quality, 0.0)
    slow = m.layout != cur_layout[:, None]
    switch_s = np.where(slow, m.switch_cost_s, 0.0)
    changed = np.ones_like(m.valid)
    changed[rows_n, cur] = False
    cost = (
        p.quality_weight * quality_loss
        + p.performance_weight * (overload + 0.1 * shortfall)
        + p.switch_weight * (switch_s + changed * 1.0)
        + p.power_weight * m.power_w / tdp[:, None]
        + p.performance_weight * p.speed_weight * np.clip(1.0 - m.frequency_mhz / m.default_frequency_mhz[:, None], 0.0, 1.0)
        + p.layout_weight * (m.layout != m.default_layout[:, None])
    )

    # ---- feasibility and transition rules
    thermal_ok = m.temp_c <= limit_c[:, None]
    allowed = m.valid.copy()
    slow_ok = allow_slow & ((now_s - since) >= p.slow_interval_s)
    allowed &= ~slow | slow_ok[:, None]
    hotter = m.power_w > cur_power[:, None] + 1e-6
    relax_ok = ((now_s - since) >= p.hysteresis_s)[:, None] & (m.temp_c <= (limit_c - p.revert_margin_c)[:, None]) & (not stale)
    cur_thermal_ok = thermal_ok[rows_n, cur]
    # Hotter options are allowed when relaxing is permitted, or to escape an overload on a thermally safe instance.
    escape = cur_thermal_ok[:, None] & thermal_ok & (overload[rows_n, cur] > 0)[:, None] & (not stale) & p.raise_for_load
    allowed &= ~hotter | relax_ok | escape
    allowed &= m.quality >= (m.quality[rows_n, cur] - p.max_quality_drop)[:, None]
    # The operator's frequency floor (the live safety gate refuses anything below it): never propose such an option.
    below_floor = m.frequency_mhz < p.min_frequency_mhz - 1e-9
    allowed &= ~below_floor
    allowed[rows_n, cur] = True
    feasible = allowed & thermal_ok
    c = np.where(feasible, cost, INFEASIBLE)
    # No feasible option at all: take the coolest allowed one.
    none = ~feasible.any(axis=1)
    coolest = np.argmin(np.where(allowed, m.power_w, np.inf), axis=1)
    choice = np.where(none, coolest, np.argmin(c, axis=1))

    # ---- stagger slow switches per endpoint
    choice = _stagger_slow(snapshot, m, choice, slow, cost, c, p, now_s)

    # ---- row power limit
    row = snapshot.server_row[srv]
    limit_row_w = budget * (1.0 - p.power_margin_frac)
    delta_w = gpus * (m.power_w[rows_n, choice] - cur_power)
    row_pred = snapshot.row_power_hi_w.astype(np.float64).copy()
    np.add.at(row_pred, row, delta_w)
    choice = _fit_rows(m, choice, allowed, cost, gpus, row, row_pred, limit_row_w)

    # ---- endpoint capacity
    boost_ok = m.valid & thermal_ok & ~slow & (not stale) & p.raise_for_load & ~below_floor
    choice = _fit_capacity(snapshot, m, choice, boost_ok, cost, gpus, row, limit_row_w, cur_power, p)

    # ---- emit changes
    out: list[ConfigChange] = []
    row_after = snapshot.row_power_hi_w.astype(np.float64).copy()
    np.add.at(row_after, row, gpus * (m.power_w[rows_n, choice] - cur_power))
    for j in np.flatnonzero(choice != cur):
        i = int(idx[j])
        k = int(choice[j])
        from_id = inst.config_ids[i]
        to_id = m.config_ids[j][k]
        th_cur = float(limit_c[j] + p.thermal_margin_c - m.temp_c[j, cur[j]])
        th_new = float(limit_c[j] + p.thermal_margin_c - m.temp_c[j, k])
        r = int(row[j])
        if trigger_hint:
            trigger, headroom = trigger_hint, float(limit_row_w[r] - row_after[r])
        elif not thermal_ok[j, cur[j]]:
            trigger, headroom = "thermal", th_cur
        elif m.power_w[j, k] < cur_power[j] and row_pred[r] > limit_row_w[r]:
            trigger, headroom = "power", float(limit_row_w[r] - row_pred[r])
        elif m.power_w[j, k] > cur_power[j]:
            trigger, headroom = ("load" if overload[j, cur[j]] > 0 else "relax"), float(need[j] - m.capacity[j, cur[j]])
        else:
            trigger, headroom = "load", float(m.capacity[j, k] - need[j])
        reason = (
            f"{trigger}: {from_id} -> {to_id}; predicted hottest GPU {m.temp_c[j, cur[j]]:.1f} -> {m.temp_c[j, k]:.1f} °C "
            f"(headroom {th_cur:.1f} -> {th_new:.1f} °C), GPU power {cur_power[j]:.0f} -> {m.power_w[j, k]:.0f} W, "
            f"capacity {m.capacity[j, cur[j]]:.0f} -> {m.capacity[j, k]:.0f} tok/s for {need[j]:.0f} tok/s needed, "
            f"quality {m.quality[j, cur[j]]:.3f} -> {m.quality[j, k]:.3f}; row {snapshot.row_ids[r]} predicted "
            f"{row_after[r]:.0f} W of {limit_row_w[r]:.0f} W limit"
        )
        if stale:
            reason += "; forecasts stale: no hotter configuration"
        out.append(
            ConfigChange(
                instance_id=inst.instance_ids[i],
                instance_index=i,
                server_index=int(srv[j]),
                server_id=snapshot.server_ids[int(srv[j])],
                from_config_id=from_id,
                to_config_id=to_id,
                slow=bool(slow[j, k]),
                trigger=trigger,
                headroom=headroom,
                reason=reason,
                issued_at_s=now_s,
                expires_at_s=now_s + p.command_ttl_s,
            )
        )
    return out


def _stagger_slow(
    snapshot: Snapshot,
    m: OptionMatrix,
    choice: IntArray,
    slow: BoolArray,
    cost: FloatArray,
    masked_cost: FloatArray,
    p: ReconfigParams,
    now_s: float,
) -> IntArray:
    """Keep at most ``max_slow_frac`` of each endpoint's instances reloading, and capacity above demand."""
    n = choice.size
    rows_n = np.arange(n)
    is_slow = slow[rows_n, choice]
    if not is_slow.any():
        return choice
    inst = snapshot.instances
    choice = choice.copy()
    fast_cost = np.where(slow, INFEASIBLE, masked_cost)
    fast_choice = np.argmin(fast_cost, axis=1)
    fast_choice = np.where(fast_cost[rows_n, fast_choice] >= INFEASIBLE, m.current, fast_choice)
    gain = cost[rows_n, fast_choice] - cost[rows_n, choice]
    endpoints = np.asarray(m.endpoint_of)
    for e in dict.fromkeys(endpoints[is_slow].tolist()):  # first-appearance order: set order follows the hash seed
        members = np.flatnonzero(endpoints == e)
        all_of_e = inst.of_endpoint(e)
        in_transit = int((inst.busy_until_s[all_of_e] > now_s).sum()) if inst.busy_until_s.size else 0
        quota = max(int(np.floor(p.max_slow_frac * all_of_e.size)) - in_transit, 0)
        if all_of_e.size >= 1 and quota == 0 and in_transit == 0:
            quota = 1
        cand = members[is_slow[members]]
        order = cand[np.argsort(-gain[cand], kind="stable")]
        keep = order[:quota]
        demand = snapshot.endpoint_demand_hi(e)
        cap_now = float(m.capacity[members, choice[members]].sum())
        accepted: list[int] = []
        for j in keep:
            cap_after = cap_now - float(m.capacity[j, choice[j]])
            if cap_after >= demand:
                accepted.append(int(j))
                cap_now = cap_after
        for j in cand:
            if int(j) not in accepted:
                choice[j] = fast_choice[j]
    return choice


def _fit_rows(
    m: OptionMatrix,
    choice: IntArray,
    allowed: BoolArray,
    cost: FloatArray,
    gpus: FloatArray,
    row: IntArray,
    row_pred: FloatArray,
    limit_row_w: FloatArray,
) -> IntArray:
    """Move instances in rows over their limit to cooler options, cheapest cost per watt first.

    Each round gives every instance its best cooler move (least extra cost per watt saved), then
    takes moves in that order until the row's excess is covered; at most K rounds.
    """
    over_rows = np.flatnonzero(row_pred > limit_row_w)
    if over_rows.size == 0:
        return choice
    choice = choice.copy()
    k_max = m.valid.shape[1]
    for r in over_rows:
        members = np.flatnonzero(row == r)
        if members.size == 0:
            continue
        excess = float(row_pred[r] - limit_row_w[r])
        for _ in range(k_max):
            if excess <= 0:
                break
            pc = m.power_w[members, choice[members]]
            cc = cost[members, choice[members]]
            saved = (pc[:, None] - m.power_w[members]) * gpus[members][:, None]
            extra = np.maximum(cost[members] - cc[:, None], 0.0)
            ok = allowed[members] & (saved > 1e-6)
            if not ok.any():
                break
            ratio = np.full(ok.shape, np.inf)
            np.divide(extra, np.maximum(np.minimum(saved, excess), 1e-9), out=ratio, where=ok)
            best_k = np.argmin(ratio, axis=1)
            a_idx = np.arange(members.size)
            best_ratio = ratio[a_idx, best_k]
            movable = np.flatnonzero(np.isfinite(best_ratio))
            order = movable[np.argsort(best_ratio[movable], kind="stable")]
            gain = saved[order, best_k[order]]
            before = np.cumsum(gain) - gain
            take = order[before < excess]
            choice[members[take]] = best_k[take]
            got = float(saved[take, best_k[take]].sum())
            excess -= got
            row_pred[r] -= got
    return choice


def _fit_capacity(
    snapshot: Snapshot,
    m: OptionMatrix,
    choice: IntArray,
    ok_opts: BoolArray,
    cost: FloatArray,
    gpus: FloatArray,
    row: IntArray,
    limit_row_w: FloatArray,
    cur_power: FloatArray,
    p: ReconfigParams,
) -> IntArray:
    """Raise capacity on endpoints below forecast-high demand, within thermal and row limits."""
    n = choice.size
    rows_n = np.arange(n)
    row_pred = snapshot.row_power_hi_w.astype(np.float64).copy()
    np.add.at(row_pred, row, gpus * (m.power_w[rows_n, choice] - cur_power))
    endpoints = np.asarray(m.endpoint_of)
    for e in dict.fromkeys(m.endpoint_of):  # a fixed order: endpoints share row power, so order matters
        members = np.flatnonzero(endpoints == e)
        target = snapshot.endpoint_demand_hi(e) * (1.0 + p.slo_headroom_frac)
        if target <= 0:
            continue
        cap = float(m.capacity[members, choice[members]].sum())
        for _ in range(members.size * m.valid.shape[1]):
            if cap >= target:
                break
            cc = m.capacity[members, choice[members]]
            gain = m.capacity[members] - cc[:, None]
            extra_w = (m.power_w[members] - m.power_w[members, choice[members]][:, None]) * gpus[members][:, None]
            room = (limit_row_w - row_pred)[row[members]]
            ok = ok_opts[members] & (gain > 1e-6) & (extra_w <= room[:, None])
            if not ok.any():
                break
            extra_cost = cost[members] - cost[members, choice[members]][:, None]
            ratio = np.full(ok.shape, np.inf)
            np.divide(np.maximum(extra_cost, 1e-9), np.minimum(gain, target - cap), out=ratio, where=ok)
            flat = int(np.argmin(ratio))
            a, k = divmod(flat, m.valid.shape[1])
            j = members[a]
            cap += float(gain[a, k])
            row_pred[row[j]] += float(extra_w[a, k])
            choice[j] = k
    return choice
