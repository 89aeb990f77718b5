"""Emergency plans: a power budget cut or a cooling failure, met within the domain's deadline.

SaaS absorbs first: its instances move to cooler fast-knob configurations (frequency cap,
batch size; no weight reloads, which would miss a 10 s deadline) through the same
``plan_reconfiguration`` as normal operation, planned against the reduced row budget or
the raised inlet temperature. Only the remainder is taken from opaque IaaS VMs, with the
smallest uniform per-GPU power limit ("water level") that closes the gap, so that the
hungriest GPUs give first and lightly loaded VMs are untouched. Every promise given up —
an IaaS VM's uncapped power, an endpoint's SLO capacity or quality — is recorded with its
expiry and estimated cost.

IaaS performance under a power limit is estimated as ``((L − idle)/(p − idle))^(1/2.5)``:
dynamic power grows roughly with f^2.5 under DVFS (voltage scaling), throughput with f
(POLCA, Patel et al. 2024, frequency vs power curves). It is a planning estimate only.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from controller.core.belief import hottest_gpu_c, power_for_temp_w, server_offset_c
from controller.core.catalogue import Catalogue
from controller.core.reconfigure import build_option_matrix, plan_reconfiguration
from controller.core.snapshot import (
    BoolArray,
    ConfigChange,
    Emergency,
    EmergencyPlan,
    FloatArray,
    GpuCap,
    ReconfigParams,
    RelaxedPromise,
    Snapshot,
)

APPLY_LATENCY_S = 2.0
"""Seconds for an in-band frequency lock / power limit or a batch-size change to take effect (NVML is ~ms; serving ~1 s)."""

DEFAULT_EMERGENCY_S = 300.0
"""Assumed duration when an emergency has no announced end (the paper's power failure lasts 5 minutes)."""

DEFAULT_BUDGET_FRAC = 0.75
"""Assumed share of the budget left when a power emergency does not state one (the paper's lost UPS)."""

DEFAULT_SUPPLY_RISE_C = 8.0
"""Assumed inlet rise of a failed cooling zone when the event does not state one."""

MIN_GPU_POWER_FRAC = 0.3
"""IaaS power limits stay at or above idle + this share of (TDP − idle): a floor vendors allow and VMs survive."""

POWER_MARGIN_FRAC = 0.02
"""Emergency plans aim this far under the reduced budget, on top of the forecast-high row power."""

THERMAL_MARGIN_C = 2.0

EMERGENCY_RECONFIG = ReconfigParams(
    thermal_margin_c=THERMAL_MARGIN_C,
    power_margin_frac=POWER_MARGIN_FRAC,
    slo_headroom_frac=0.0,
    hysteresis_s=0.0,
    command_ttl_s=DEFAULT_EMERGENCY_S,
    raise_for_load=False,
)


def estimated_perf_frac(limit_w: FloatArray, power_w: FloatArray, idle_w: FloatArray) -> FloatArray:
    """Throughput fraction a GPU keeps when limited from ``power_w`` to ``limit_w`` (DVFS estimate, module doc)."""
    dyn = np.maximum(power_w - idle_w, 1e-9)
    kept = np.clip((np.minimum(limit_w, power_w) - idle_w) / dyn, 0.0, 1.0)
    out: FloatArray = np.power(kept, 1.0 / 2.5)
    return out


def plan_emergency(
    snapshot: Snapshot,
    catalogue: Catalogue,
    emergency: Emergency,
    *,
    now_s: float,
    params: ReconfigParams | None = None,
    min_frequency_mhz: float | None = None,
) -> EmergencyPlan:
    """Plan the response to ``emergency``: SaaS fast knobs first, IaaS power limits for the rest.

    ``min_frequency_mhz`` (the operator's safety floor) overrides ``params.min_frequency_mhz``
    so that no planned SaaS configuration has a frequency cap the live safety gate would refuse.
    """
    p = params or EMERGENCY_RECONFIG
    if min_frequency_mhz is not None:
        p = replace(p, min_frequency_mhz=min_frequency_mhz)
    if emergency.kind == "power":
        return _plan_power(snapshot, catalogue, emergency, now_s=now_s, params=p)
    return _plan_cooling(snapshot, catalogue, emergency, now_s=now_s, params=p)


def emergency_budget_w(row_budget_w: FloatArray, emergency: Emergency) -> FloatArray:
    """Per-row budgets while a power emergency holds: its rows (or every row) cut to ``budget_frac``."""
    budget = np.asarray(row_budget_w, dtype=np.float64).copy()
    if emergency.kind != "power":
        return budget
    frac = emergency.budget_frac if emergency.budget_frac is not None else DEFAULT_BUDGET_FRAC
    if emergency.domain_kind == "cluster":
        budget *= frac
    else:
        budget[emergency.domain_index] *= frac
    return budget


def feedback_caps(
    snapshot: Snapshot,
    plan: EmergencyPlan,
    *,
    now_s: float,
    budget_w: FloatArray,
    margin_frac: float = POWER_MARGIN_FRAC,
    step_frac: float = 0.5,
) -> tuple[GpuCap, ...] | None:
    """The IaaS caps a plan should have now, from what is measured: ``rebalance_iaas_caps`` for a power plan
    with caps (``budget_w`` = the reduced budgets), ``tighten_cooling_caps`` for a cooling plan; None when
    there is nothing to close the loop on. The simulator's ``tapas`` policy and the live controller call it."""
    if plan.emergency.kind == "power":
        if not plan.caps:
            return None
        return rebalance_iaas_caps(snapshot, plan, now_s=now_s, budget_w=budget_w, margin_frac=margin_frac,
                                   step_frac=step_frac)
    return tighten_cooling_caps(snapshot, plan, now_s=now_s)


def _zone_mask(snapshot: Snapshot, emergency: Emergency) -> BoolArray:
    """Servers inside a cooling emergency's domain."""
    if emergency.domain_kind == "cluster":
        return np.ones(snapshot.num_servers, dtype=np.bool_)
    return np.asarray(snapshot.server_zone == emergency.domain_index, dtype=np.bool_)


def _floor_w(snapshot: Snapshot, s: int) -> float:
    """Lowest power limit an IaaS GPU on server ``s`` is given (``MIN_GPU_POWER_FRAC`` above idle)."""
    idle = float(snapshot.gpu_idle_power_w[s])
    return idle + MIN_GPU_POWER_FRAC * (float(snapshot.gpu_tdp_w[s]) - idle)


def _until(emergency: Emergency, now_s: float) -> float:
    return emergency.ends_at_s if emergency.ends_at_s is not None else now_s + DEFAULT_EMERGENCY_S


def _saas_power_delta(snapshot: Snapshot, catalogue: Catalogue, changes: list[ConfigChange]) -> FloatArray:
    """Per-row power change the SaaS changes are predicted to make (catalogue model, same load)."""
    delta = np.zeros(len(snapshot.row_ids))
    if not changes:
        return delta
    idx = np.asarray([c.instance_index for c in changes], dtype=np.int64)
    m = build_option_matrix(snapshot, catalogue, idx)
    for j, c in enumerate(changes):
        k = m.config_ids[j].index(c.to_config_id)
        d = (m.power_w[j, k] - m.power_w[j, m.current[j]]) * float(snapshot.instances.num_gpus[c.instance_index])
        delta[snapshot.server_row[c.server_index]] += d
    return delta


def _saas_relaxed(snapshot: Snapshot, catalogue: Catalogue, changes: list[ConfigChange], until_s: float) -> list[RelaxedPromise]:
    out: list[RelaxedPromise] = []
    for c in changes:
        a, b = catalogue.option(c.from_config_id), catalogue.option(c.to_config_id)
        if b.capacity_tokens_per_s_at_slo < a.capacity_tokens_per_s_at_slo or b.quality_score < a.quality_score:
            out.append(
                RelaxedPromise(
                    subject=c.instance_id,
                    promise="SaaS capacity at SLO" if b.quality_score >= a.quality_score else "SaaS output quality",
                    until_s=until_s,
                    quality_cost=max(a.quality_score - b.quality_score, 0.0),
                    performance_cost_frac=max(1.0 - b.capacity_tokens_per_s_at_slo / max(a.capacity_tokens_per_s_at_slo, 1e-9), 0.0),
                )
            )
    return out


def _plan_power(
    snapshot: Snapshot, catalogue: Catalogue, emergency: Emergency, *, now_s: float, params: ReconfigParams
) -> EmergencyPlan:
    frac = emergency.budget_frac if emergency.budget_frac is not None else DEFAULT_BUDGET_FRAC
    rows = np.arange(len(snapshot.row_ids)) if emergency.domain_kind == "cluster" else np.asarray([emergency.domain_index])
    budget = emergency_budget_w(snapshot.row_budget_w, emergency)
    until_s = _until(emergency, now_s)

    changes = plan_reconfiguration(
        snapshot, catalogue, now_s=now_s, params=params, row_budget_w=budget, allow_slow=False, trigger_hint="emergency"
    )
    row_power = np.maximum(snapshot.row_power_hi_w, snapshot.row_power_w).astype(np.float64)
    pred = row_power + _saas_power_delta(snapshot, catalogue, changes)
    target = budget * (1.0 - params.power_margin_frac)

    caps: list[GpuCap] = []
    relaxed = _saas_relaxed(snapshot, catalogue, changes, until_s)
    vms = snapshot.vms
    for r in rows:
        excess = float(pred[r] - target[r])
        if excess <= 0 or len(vms) == 0:
            continue
        sel = np.flatnonzero(snapshot.server_row[vms.server_index] == r)
        if sel.size == 0:
            continue
        srv = vms.server_index[sel]
        p = vms.gpu_power_w[sel].astype(np.float64)
        n = vms.num_gpus[sel].astype(np.float64)
        idle = snapshot.gpu_idle_power_w[srv]
        floor = idle + MIN_GPU_POWER_FRAC * (snapshot.gpu_tdp_w[srv] - idle)
        level = _water_level(p, n, floor, excess)
        limit = np.minimum(p, np.maximum(level, floor))
        saved = float((n * (p - limit)).sum())
        pred[r] -= saved
        perf = estimated_perf_frac(limit, p, idle)
        for j, v in enumerate(sel):
            if limit[j] >= p[j] - 1e-6:
                continue
            vm_id = vms.vm_ids[int(v)]
            s = int(srv[j])
            caps.append(
                GpuCap(
                    server_index=s,
                    server_id=snapshot.server_ids[s],
                    vm_id=vm_id,
                    power_limit_w=float(limit[j]),
                    frequency_cap_mhz=None,
                    reason=(
                        f"power emergency {emergency.event_id}: row {snapshot.row_ids[r]} at {frac:.0%} budget; SaaS "
                        f"reconfiguration left {excess:.0f} W over; IaaS GPUs limited to {limit[j]:.0f} W (from {p[j]:.0f} W)"
                    ),
                    issued_at_s=now_s,
                    expires_at_s=until_s,
                )
            )
            relaxed.append(
                RelaxedPromise(
                    subject=vm_id,
                    promise="IaaS uncapped GPU power",
                    until_s=until_s,
                    quality_cost=0.0,
                    performance_cost_frac=float(1.0 - perf[j]),
                )
            )
    meets = bool(np.all(pred[rows] <= budget[rows] + 1e-6))
    effective_by = now_s + APPLY_LATENCY_S
    num_iaas = len({c.vm_id for c in caps})
    reason = (
        f"power emergency {emergency.event_id} on {emergency.domain_kind} {_domain_name(snapshot, emergency)}: budget "
        f"{frac:.0%} until t={until_s:.0f}s; {len(changes)} SaaS reconfigurations (fast knobs), {num_iaas} IaaS VMs "
        f"power-limited; predicted {pred[rows].sum():.0f} W of {budget[rows].sum():.0f} W"
        f" ({'meets' if meets else 'MISSES'} budget), effective by t={effective_by:.0f}s "
        f"(deadline t={emergency.started_at_s + emergency.deadline_s:.0f}s)"
    )
    return EmergencyPlan(
        emergency=emergency,
        changes=tuple(changes),
        caps=tuple(caps),
        predicted_power_w=float(pred[rows].sum()),
        budget_w=float(budget[rows].sum()),
        meets_budget=meets,
        relaxed=tuple(relaxed),
        planned_at_s=now_s,
        effective_by_s=effective_by,
        reason=reason,
    )


def _water_level(power_w: FloatArray, num: FloatArray, floor_w: FloatArray, excess_w: float) -> float:
    """Largest per-GPU level L with sum(num × (power − min(power, max(L, floor)))) >= excess (or the floor).

    A GPU already below its floor saves nothing (its limit is never above what it draws), rather than
    counting as negative saving that would hide the others' caps from the row's predicted power.
    """
    lo, hi = float(floor_w.min()), float(power_w.max())
    if hi <= lo:
        return lo

    def saved(level: float) -> float:
        lim = np.minimum(power_w, np.maximum(level, floor_w))
        return float((num * (power_w - lim)).sum())

    if saved(lo) < excess_w:
        return lo
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if saved(mid) >= excess_w:
            lo = mid
        else:
            hi = mid
    return lo


def _plan_cooling(
    snapshot: Snapshot, catalogue: Catalogue, emergency: Emergency, *, now_s: float, params: ReconfigParams
) -> EmergencyPlan:
    rise = emergency.supply_temp_rise_c if emergency.supply_temp_rise_c is not None else DEFAULT_SUPPLY_RISE_C
    until_s = _until(emergency, now_s)
    in_zone = _zone_mask(snapshot, emergency)
    inlet = np.maximum(snapshot.inlet_hi_c, snapshot.inlet_c) + np.where(in_zone, rise, 0.0)
    planned = plan_reconfiguration(
        snapshot, catalogue, now_s=now_s, params=params, inlet_c=inlet, allow_slow=False, trigger_hint="emergency"
    )
    # Outside the failed zone keep only the moves that add capacity for load shifted away from it.
    changes = [
        c for c in planned
        if in_zone[c.server_index]
        or catalogue.option(c.to_config_id).capacity_tokens_per_s_at_slo > catalogue.option(c.from_config_id).capacity_tokens_per_s_at_slo
    ]
    relaxed = _saas_relaxed(snapshot, catalogue, changes, until_s)
    limit_c = snapshot.slowdown_temp_c - params.thermal_margin_c
    # The hottest slot sits above inlet + R × p (rear GPUs breathe pre-heated air): the same per-server
    # offset placement and reconfiguration use, so a VM on the rear slots is not predicted cooler than it runs.
    offset_c = server_offset_c(snapshot)
    caps: list[GpuCap] = []
    vms = snapshot.vms
    worst_c = -np.inf
    for v in range(len(vms)):
        s = int(vms.server_index[v])
        if not in_zone[s]:
            continue
        r_th = float(snapshot.thermal_resistance_c_per_w[s])
        p = float(max(vms.gpu_power_w[v], vms.expected_gpu_power_w[v] if vms.expected_gpu_power_w.size else 0.0))
        base_c = float(inlet[s] + offset_c[s])
        temp = hottest_gpu_c(base_c, 0.0, r_th, p)
        idle = float(snapshot.gpu_idle_power_w[s])
        if temp <= limit_c[s]:
            worst_c = max(worst_c, temp)
            continue
        lim = max(power_for_temp_w(float(limit_c[s]), base_c, 0.0, r_th), _floor_w(snapshot, s))
        worst_c = max(worst_c, hottest_gpu_c(base_c, 0.0, r_th, lim))
        perf = float(estimated_perf_frac(np.asarray([lim]), np.asarray([p]), np.asarray([idle]))[0])
        caps.append(
            GpuCap(
                server_index=s,
                server_id=snapshot.server_ids[s],
                vm_id=vms.vm_ids[v],
                power_limit_w=lim,
                frequency_cap_mhz=None,
                reason=(
                    f"cooling failure {emergency.event_id}: inlet +{rise:.1f} °C predicts {temp:.1f} °C > {limit_c[s]:.1f} °C; "
                    f"IaaS GPUs limited to {lim:.0f} W"
                ),
                issued_at_s=now_s,
                expires_at_s=until_s,
            )
        )
        relaxed.append(RelaxedPromise(vms.vm_ids[v], "IaaS uncapped GPU power", until_s, 0.0, 1.0 - perf))
    zone_ids = np.unique(snapshot.server_zone[in_zone])
    heat = float(snapshot.zone_heat_hi_w[zone_ids].sum()) + float(_saas_power_delta(snapshot, catalogue, changes).sum())
    cap_w = float(snapshot.zone_capacity_w[zone_ids].sum())
    meets = bool(worst_c <= float(limit_c[in_zone].max()) if np.isfinite(worst_c) else True)
    reason = (
        f"cooling failure {emergency.event_id} in {emergency.domain_kind} {_domain_name(snapshot, emergency)}: inlet "
        f"+{rise:.1f} °C until t={until_s:.0f}s; {len(changes)} SaaS reconfigurations toward cooler options, "
        f"{len(caps)} IaaS VMs power-limited"
    )
    return EmergencyPlan(
        emergency=replace(emergency, supply_temp_rise_c=rise),
        changes=tuple(changes),
        caps=tuple(caps),
        predicted_power_w=heat,
        budget_w=cap_w,
        meets_budget=meets,
        relaxed=tuple(relaxed),
        planned_at_s=now_s,
        effective_by_s=now_s + APPLY_LATENCY_S,
        reason=reason,
    )


def rebalance_iaas_caps(
    snapshot: Snapshot,
    plan: EmergencyPlan,
    *,
    now_s: float,
    budget_w: FloatArray,
    margin_frac: float = POWER_MARGIN_FRAC,
    step_frac: float = 0.5,
) -> tuple[GpuCap, ...]:
    """Feedback on a power plan's IaaS limits: raise them where measured row power leaves room, lower them where it does not.

    The plan is computed from forecasts; this closes the loop on what the rows really draw, so
    opaque VMs give back no more than needed. Per row, the common limit ``L`` moves by
    ``step_frac × headroom / capped GPUs`` (headroom = budget × (1 − margin) − forecast-high row
    power), between the floor and the VMs' expected uncapped power; caps that reach it are lifted.

    Returns:
        The caps now in force (the same VMs as the plan, with new limits; lifted ones omitted).
    """
    if not plan.caps:
        return ()
    vms = snapshot.vms
    where = {v: i for i, v in enumerate(vms.vm_ids)}
    by_row: dict[int, list[GpuCap]] = {}
    for c in plan.caps:
        by_row.setdefault(int(snapshot.server_row[c.server_index]), []).append(c)
    row_power = np.maximum(snapshot.row_power_hi_w, snapshot.row_power_w)
    out: list[GpuCap] = []
    for r, caps in by_row.items():
        headroom = float(budget_w[r] * (1.0 - margin_frac) - row_power[r])
        live = [(c, where[c.vm_id]) for c in caps if c.vm_id in where and c.power_limit_w is not None]
        num = float(sum(int(vms.num_gpus[i]) for _, i in live))
        if num == 0:
            continue
        delta = step_frac * headroom / num
        for c, i in live:
            s = c.server_index
            floor = _floor_w(snapshot, s)
            current = float(vms.power_limit_w[i]) if np.isfinite(vms.power_limit_w[i]) else float(c.power_limit_w or 0.0)
            ceiling = float(vms.expected_gpu_power_w[i]) if vms.expected_gpu_power_w.size else float(snapshot.gpu_tdp_w[s])
            new = max(current + delta, floor)
            if new >= ceiling:
                continue  # lifted
            out.append(replace(c, power_limit_w=new, issued_at_s=now_s,
                               reason=f"{c.reason}; feedback: row {snapshot.row_ids[r]} headroom {headroom:.0f} W -> {new:.0f} W"))
    return tuple(out)


def tighten_cooling_caps(
    snapshot: Snapshot,
    plan: EmergencyPlan,
    *,
    now_s: float,
    margin_c: float = THERMAL_MARGIN_C,
) -> tuple[GpuCap, ...]:
    """Feedback on a cooling plan's IaaS limits from the inlet measured now.

    The plan assumed a supply rise; recirculation in the failed zone can push inlets higher
    over the following minutes, and VMs placed since are not in the plan. Each call caps, at
    ``(slowdown − margin − inlet_hi − offset) / R`` (not below the vendor floor), every IaaS VM
    in the failed domain whose uncapped power would cross that line, and keeps the tighter of
    an existing limit and the new one: limits only tighten while the emergency lasts (they are
    all lifted when it ends), so the loop cannot oscillate.

    Returns:
        The caps now in force (the plan's, tightened, plus new ones).
    """
    e = plan.emergency
    in_zone = _zone_mask(snapshot, e)
    inlet = np.maximum(snapshot.inlet_hi_c, snapshot.inlet_c)
    offset_c = server_offset_c(snapshot)
    limit_c = snapshot.slowdown_temp_c - margin_c
    by_vm = {c.vm_id: c for c in plan.caps}
    vms = snapshot.vms
    out: list[GpuCap] = []
    for v in range(len(vms)):
        s = int(vms.server_index[v])
        vm_id = vms.vm_ids[v]
        old = by_vm.pop(vm_id, None)
        if not in_zone[s]:
            if old is not None:
                out.append(old)
            continue
        r_th = float(snapshot.thermal_resistance_c_per_w[s])
        p = float(max(vms.gpu_power_w[v], vms.expected_gpu_power_w[v] if vms.expected_gpu_power_w.size else 0.0))
        lim = max(power_for_temp_w(float(limit_c[s]), float(inlet[s]), float(offset_c[s]), r_th), _floor_w(snapshot, s))
        current = old.power_limit_w if old is not None and old.power_limit_w is not None else np.inf
        if lim >= min(p, current) - 1.0:
            if old is not None:
                out.append(old)
            continue
        out.append(
            GpuCap(
                server_index=s,
                server_id=snapshot.server_ids[s],
                vm_id=vm_id,
                power_limit_w=lim,
                frequency_cap_mhz=None,
                reason=(
                    f"cooling failure {e.event_id}: measured inlet {inlet[s]:.1f} °C puts this VM's hottest GPU over "
                    f"{limit_c[s]:.1f} °C at {min(p, current):.0f} W; limited to {lim:.0f} W"
                ),
                issued_at_s=now_s,
                expires_at_s=_until(e, now_s),
            )
        )
    return tuple(out)  # caps of VMs that have left (still in by_vm) are dropped


def _domain_name(snapshot: Snapshot, emergency: Emergency) -> str:
    if emergency.domain_kind == "row":
        return snapshot.row_ids[emergency.domain_index]
    if emergency.domain_kind == "zone":
        return snapshot.zone_ids[emergency.domain_index]
    return "cluster"
