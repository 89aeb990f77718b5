"""Placement hints: where a new GPU VM fits within cooling and power headroom.

For every server at once (NumPy over servers) we predict, after placing the VM:

* the peak hottest-GPU temperature — the larger of the server's own forecast-high and
  ``inlet_hi + R × p_vm`` for the VM's GPUs (DESIGN.md §5 thermal model, steady state);
* the row's peak power — forecast-high row power plus the VM's added GPU power;
* the cooling zone's heat — forecast-high zone heat plus the same added power.

Servers that keep all three under their limits minus the margins, and have enough free
GPUs, are feasible. Opaque IaaS VMs cannot be protected later, so they get larger
margins and the safest spots: their score is the *smallest normalised headroom* (the
bottleneck of thermal, row power and zone heat, each as a fraction of its limit, and of the
room the row would keep in a power emergency — its budget cut to
``iaas_emergency_budget_frac`` after SaaS sheds ``saas_shed_frac`` of its dynamic power —
so IaaS VMs spread to rows whose SaaS can absorb a cut and are not capped then), highest
first, ties (within ``TIE_BAND_FRAC``) to the server with the fewest free GPUs left, which
keeps whole servers free. SaaS VMs get small margins and are ranked by row-power and
zone-heat headroom (spreading power across domains), ties to the thermally *riskier*
feasible spot, leaving the coolest ones to IaaS: routing and reconfiguration protect SaaS
later.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from controller.core.belief import hottest_gpu_c, server_limit_c, server_offset_c
from controller.core.snapshot import (
    FloatArray,
    IntArray,
    PlacementCandidate,
    PlacementDecision,
    PlacementMargins,
    PlacementRequest,
    Snapshot,
)

TIE_BAND_FRAC = 0.01
"""Headroom differences below this share count as ties (broken by keeping whole servers free)."""

_CACHE_SIZE = 4
"""Snapshots whose per-server precomputation is kept (the live service and the simulator use one at a time)."""


@dataclass(frozen=True)
class _Prepared:
    """Per-snapshot, per-(kind, margins) arrays that do not depend on the VM: computed once, reused per request.

    Placement requests arrive many per snapshot (the service answers each against the latest
    one; the simulator places a batch per tick), so everything that depends only on the
    snapshot and the margins is computed on the first request and reused; a request then
    costs a few operations over the servers with enough free GPUs.
    """

    base_temp_c: FloatArray
    """inlet_hi + per-server offset: the VM's hottest GPU is this + R × p."""
    temp_hi_c: FloatArray
    thermal_limit_c: FloatArray
    inv_thermal_span: FloatArray
    row_room_w: FloatArray
    """Row limit minus forecast-high row power, per server (before the VM)."""
    inv_row_limit: FloatArray
    zone_room_w: FloatArray
    inv_zone_limit: FloatArray
    emergency_room_w: FloatArray
    """Room under the row's emergency budget once SaaS has shed what it can, per server (before the VM); IaaS only."""
    r_th: FloatArray
    idle_w: FloatArray
    tdp_w: FloatArray
    free_gpus: FloatArray
    inv_num_gpus: FloatArray


_prepared: dict[int, tuple[weakref.ref[Snapshot], dict[tuple[bool, PlacementMargins], _Prepared], dict[int, IntArray]]] = {}


def _entry(snapshot: Snapshot) -> tuple[dict[tuple[bool, PlacementMargins], _Prepared], dict[int, IntArray]]:
    key = id(snapshot)
    hit = _prepared.get(key)
    if hit is not None and hit[0]() is snapshot:
        return hit[1], hit[2]
    if len(_prepared) >= _CACHE_SIZE:
        _prepared.pop(next(iter(_prepared)))
    entry: tuple[dict[tuple[bool, PlacementMargins], _Prepared], dict[int, IntArray]] = ({}, {})
    _prepared[key] = (weakref.ref(snapshot), *entry)
    return entry


def _prepare(snapshot: Snapshot, iaas: bool, m: PlacementMargins) -> _Prepared:
    thermal_margin_c = m.iaas_thermal_margin_c if iaas else m.saas_thermal_margin_c
    power_margin = m.iaas_power_margin_frac if iaas else m.saas_power_margin_frac
    zone_margin = m.iaas_zone_margin_frac if iaas else m.saas_zone_margin_frac
    row = snapshot.server_row
    zone = snapshot.server_zone
    row_limit_w = snapshot.row_budget_w * (1.0 - power_margin)
    zone_limit_w = snapshot.zone_capacity_w * (1.0 - zone_margin)
    die_limit_c = (snapshot.slowdown_temp_c - thermal_margin_c).astype(np.float64)
    # A hot HBM lowers the line (server_limit_c); the score's span stays the die's, one scale for all.
    thermal_limit_c = (server_limit_c(snapshot) - thermal_margin_c).astype(np.float64)
    if iaas and m.iaas_emergency_budget_frac is not None:
        firm_w = snapshot.row_power_hi_w - m.saas_shed_frac * _saas_dynamic_w_per_row(snapshot)
        emergency_room = (m.iaas_emergency_budget_frac * row_limit_w - firm_w)[row].astype(np.float64)
    else:
        emergency_room = np.full(snapshot.num_servers, np.inf)
    return _Prepared(
        base_temp_c=hottest_gpu_c(snapshot.inlet_hi_c, server_offset_c(snapshot), 0.0, 0.0),
        temp_hi_c=snapshot.gpu_temp_hi_c.astype(np.float64),
        thermal_limit_c=thermal_limit_c,
        inv_thermal_span=1.0 / np.maximum(die_limit_c - snapshot.inlet_hi_c, 1.0),
        row_room_w=(row_limit_w - snapshot.row_power_hi_w)[row].astype(np.float64),
        inv_row_limit=(1.0 / np.maximum(row_limit_w, 1.0))[row],
        zone_room_w=(zone_limit_w - snapshot.zone_heat_hi_w)[zone].astype(np.float64),
        inv_zone_limit=(1.0 / np.maximum(zone_limit_w, 1.0))[zone],
        emergency_room_w=emergency_room,
        r_th=snapshot.thermal_resistance_c_per_w.astype(np.float64),
        idle_w=snapshot.gpu_idle_power_w.astype(np.float64),
        tdp_w=snapshot.gpu_tdp_w.astype(np.float64),
        free_gpus=snapshot.free_gpus.astype(np.float64),
        inv_num_gpus=1.0 / np.maximum(snapshot.num_gpus, 1).astype(np.float64),
    )


def _saas_dynamic_w_per_row(snapshot: Snapshot) -> FloatArray:
    """Dynamic (above idle) GPU power of the SaaS instances in each row: what reconfiguration can shed."""
    inst = snapshot.instances
    out = np.zeros(len(snapshot.row_ids))
    if len(inst) == 0 or inst.gpu_power_w.size == 0:
        return out
    srv = inst.server_index
    dyn = np.maximum(inst.gpu_power_w - snapshot.gpu_idle_power_w[srv], 0.0) * inst.num_gpus
    np.add.at(out, snapshot.server_row[srv], dyn)
    return out


def predicted_vm_gpu_power_w(snapshot: Snapshot, request: PlacementRequest) -> FloatArray:
    """Per-GPU power the VM is expected to draw on each server: its history, else the GPU's TDP."""
    if request.gpu_power_w is not None:
        return np.full(snapshot.num_servers, float(request.gpu_power_w))
    return snapshot.gpu_tdp_w.astype(np.float64, copy=True)


def rank_servers(
    snapshot: Snapshot,
    request: PlacementRequest,
    *,
    now_s: float,
    margins: PlacementMargins | None = None,
) -> PlacementDecision:
    """Rank servers for one VM request; every candidate keeps the limits it reports headroom against.

    The VM-independent arrays are computed once per snapshot (snapshots are immutable) and the
    per-request work runs only over the servers with enough free GPUs; top-k by argpartition.

    Args:
        snapshot: cluster state and forecasts.
        request: the VM to place.
        now_s: decision time (only recorded in the reason; the core never reads a clock).
        margins: safety margins; IaaS uses the larger ones.

    Returns:
        A decision with at most ``request.max_candidates`` (else ``margins.max_candidates``) candidates, best first, and a reason.
    """
    m = margins or PlacementMargins()
    iaas = request.vm_kind == "iaas"
    thermal_margin_c = m.iaas_thermal_margin_c if iaas else m.saas_thermal_margin_c
    power_margin = m.iaas_power_margin_frac if iaas else m.saas_power_margin_frac
    zone_margin = m.iaas_zone_margin_frac if iaas else m.saas_zone_margin_frac
    by_margins, fit_index = _entry(snapshot)
    pre = by_margins.get((iaas, m))
    if pre is None:
        pre = by_margins[(iaas, m)] = _prepare(snapshot, iaas, m)

    n = request.num_gpus
    fit = fit_index.get(n)
    if fit is None:
        fit = fit_index[n] = np.flatnonzero(snapshot.free_gpus >= n).astype(np.int64)
    # Everything below is over the servers that have room (``fit``), not all servers.
    if request.gpu_power_w is not None:
        p_vm: FloatArray | float = float(request.gpu_power_w)
    else:
        p_vm = pre.tdp_w[fit]
    added_w = n * np.maximum(p_vm - pre.idle_w[fit], 0.0)
    peak_temp_c = np.maximum(pre.temp_hi_c[fit], hottest_gpu_c(pre.base_temp_c[fit], 0.0, pre.r_th[fit], p_vm))
    thermal_headroom_c = pre.thermal_limit_c[fit] - peak_temp_c
    row_headroom_w = pre.row_room_w[fit] - added_w
    zone_headroom_w = pre.zone_room_w[fit] - added_w

    ok_thermal = thermal_headroom_c >= 0.0
    ok_power = row_headroom_w >= 0.0
    ok_zone = zone_headroom_w >= 0.0
    feasible = ok_thermal & ok_power & ok_zone
    sel = np.flatnonzero(feasible)
    idx = fit[sel]

    row_norm = row_headroom_w[sel] * pre.inv_row_limit[idx]
    zone_norm = zone_headroom_w[sel] * pre.inv_zone_limit[idx]
    thermal_norm = thermal_headroom_c[sel] * pre.inv_thermal_span[idx]
    if iaas:
        primary = np.minimum(np.minimum(thermal_norm, row_norm), zone_norm)
        # ... and the room a power emergency would leave its row once SaaS has shed what it can (module doc).
        emergency_norm = (pre.emergency_room_w[idx] - added_w[sel]) * pre.inv_row_limit[idx]
        primary = np.minimum(primary, emergency_norm)
        secondary = np.clip((pre.free_gpus[idx] - n) * pre.inv_num_gpus[idx], 0.0, 1.0)
    else:
        # SaaS: balance power and cooling, but leave the thermally safest spots to opaque IaaS VMs.
        primary = np.minimum(row_norm, zone_norm)
        secondary = np.clip(thermal_norm, 0.0, 1.0)
    score = np.floor(primary / TIE_BAND_FRAC) * TIE_BAND_FRAC - 0.5 * TIE_BAND_FRAC * secondary

    k = min(request.max_candidates or m.max_candidates, idx.size)
    if k > 0:
        part = np.argpartition(-score, k - 1)[:k] if idx.size > k else np.arange(idx.size)
        # Stable order: score descending, then server position, so equal inputs give equal hints.
        top_local = part[np.lexsort((idx[part], -score[part]))]
    else:
        top_local = np.zeros(0, dtype=np.int64)
    at = sel[top_local]
    candidates = tuple(
        PlacementCandidate(
            server_index=int(idx[j]),
            server_id=snapshot.server_ids[int(idx[j])],
            rank=r + 1,
            score=float(score[j]),
            predicted_peak_gpu_temp_c=float(peak_temp_c[a]),
            thermal_headroom_c=float(thermal_headroom_c[a]),
            row_power_headroom_w=float(row_headroom_w[a]),
            zone_heat_headroom_w=float(zone_headroom_w[a]),
            free_gpus=int(snapshot.free_gpus[idx[j]]),
        )
        for r, (j, a) in enumerate(zip(top_local.tolist(), at.tolist(), strict=True))
    )
    num_fit = int(fit.size)
    n_thermal = int(fit.size - np.count_nonzero(ok_thermal))
    n_power = int(np.count_nonzero(ok_thermal & ~ok_power))
    n_zone = int(np.count_nonzero(ok_thermal & ok_power & ~ok_zone))
    rejected = (
        f"{snapshot.num_servers - num_fit} without {n} free GPUs, "
        f"{n_thermal} thermal, {n_power} row power, {n_zone} zone heat"
    )
    order = (
        "most headroom first, ties to the fullest server" if iaas
        else "most row/zone headroom first, ties to the thermally riskier spot (safest kept for IaaS)"
    )
    p_desc = f"{request.gpu_power_w:.0f} W/GPU" if request.gpu_power_w is not None else "TDP"
    reason = (
        f"{request.vm_kind} {n} GPU(s) at {p_desc}, t={now_s:.0f}s: {idx.size} of {snapshot.num_servers} servers feasible "
        f"(rejected {rejected}); margins {thermal_margin_c:.1f} °C, {power_margin:.0%} row power, "
        f"{zone_margin:.0%} zone heat; ranked by smallest normalised headroom, {order}"
    )
    if snapshot.forecast_age_s > 0 and k > 0:
        reason += f"; forecasts {snapshot.forecast_age_s:.0f}s old"
    return PlacementDecision(request_id=request.request_id, feasible=k > 0, candidates=candidates, reason=reason)
