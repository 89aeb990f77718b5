"""Placement hints: where a new GPU VM fits within cooling and power headroom.

For every server at once (NumPy over servers) we predict, after placing the VM:

* the peak hottest-GPU temperature — the larger of the server's own forecast-high and
  ``inlet_hi + R × p_vm`` for the VM's GPUs (DESIGN.md §5 thermal model, steady state);
* the row's peak power — forecast-high row power plus the VM's added GPU power;
* the cooling zone's heat — forecast-high zone heat plus the same added power.

Servers that keep all three under their limits minus the margins, and have enough free
GPUs, are feasible. Opaque IaaS VMs cannot be protected later, so they get larger
margins and the safest spots: their score is the *smallest normalised headroom* (the
bottleneck of thermal, row power and zone heat, each as a fraction of its limit), highest
first, ties (within ``TIE_BAND_FRAC``) to the server with the fewest free GPUs left, which
keeps whole servers free. SaaS VMs get small margins and are ranked by row-power and
zone-heat headroom (spreading power across domains), ties to the thermally *riskier*
feasible spot, leaving the coolest ones to IaaS: routing and reconfiguration protect SaaS
later.
"""

from __future__ import annotations

import numpy as np

from controller.core.headroom import thermal_offset_c
from controller.core.snapshot import (
    FloatArray,
    PlacementCandidate,
    PlacementDecision,
    PlacementMargins,
    PlacementRequest,
    Snapshot,
)

TIE_BAND_FRAC = 0.01
"""Headroom differences below this share count as ties (broken by keeping whole servers free)."""


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

    Args:
        snapshot: cluster state and forecasts.
        request: the VM to place.
        now_s: decision time (only recorded in the reason; the core never reads a clock).
        margins: safety margins; IaaS uses the larger ones.

    Returns:
        A decision with at most ``margins.max_candidates`` candidates, best first, and a reason.
    """
    m = margins or PlacementMargins()
    iaas = request.vm_kind == "iaas"
    thermal_margin_c = m.iaas_thermal_margin_c if iaas else m.saas_thermal_margin_c
    power_margin = m.iaas_power_margin_frac if iaas else m.saas_power_margin_frac
    zone_margin = m.iaas_zone_margin_frac if iaas else m.saas_zone_margin_frac

    n = request.num_gpus
    p_vm = predicted_vm_gpu_power_w(snapshot, request)
    added_w = n * np.maximum(p_vm - snapshot.gpu_idle_power_w, 0.0)

    vm_temp_c = snapshot.inlet_hi_c + thermal_offset_c(snapshot) + snapshot.thermal_resistance_c_per_w * p_vm
    peak_temp_c = np.maximum(snapshot.gpu_temp_hi_c, vm_temp_c)
    thermal_limit_c = snapshot.slowdown_temp_c - thermal_margin_c
    thermal_headroom_c = thermal_limit_c - peak_temp_c

    row = snapshot.server_row
    row_limit_w = snapshot.row_budget_w * (1.0 - power_margin)
    row_headroom_w = row_limit_w[row] - (snapshot.row_power_hi_w[row] + added_w)

    zone = snapshot.server_zone
    zone_limit_w = snapshot.zone_capacity_w * (1.0 - zone_margin)
    zone_headroom_w = zone_limit_w[zone] - (snapshot.zone_heat_hi_w[zone] + added_w)

    fits = snapshot.free_gpus >= n
    ok_thermal = thermal_headroom_c >= 0.0
    ok_power = row_headroom_w >= 0.0
    ok_zone = zone_headroom_w >= 0.0
    feasible = fits & ok_thermal & ok_power & ok_zone

    thermal_span_c = np.maximum(thermal_limit_c - snapshot.inlet_hi_c, 1.0)
    norm = np.minimum(
        np.minimum(thermal_headroom_c / thermal_span_c, row_headroom_w / np.maximum(row_limit_w[row], 1.0)),
        zone_headroom_w / np.maximum(zone_limit_w[zone], 1.0),
    )
    left_frac = (snapshot.free_gpus - n) / np.maximum(snapshot.num_gpus, 1)
    thermal_norm = thermal_headroom_c / thermal_span_c
    if iaas:
        primary = norm
        secondary = np.clip(left_frac, 0.0, 1.0)
    else:
        # SaaS: balance power and cooling, but leave the thermally safest spots to opaque IaaS VMs.
        primary = np.minimum(row_headroom_w / np.maximum(row_limit_w[row], 1.0), zone_headroom_w / np.maximum(zone_limit_w[zone], 1.0))
        secondary = np.clip(thermal_norm, 0.0, 1.0)
    score = np.floor(primary / TIE_BAND_FRAC) * TIE_BAND_FRAC - 0.5 * TIE_BAND_FRAC * secondary

    idx = np.flatnonzero(feasible)
    k = min(m.max_candidates, idx.size)
    if k > 0:
        sub = score[idx]
        top = idx[np.argpartition(-sub, k - 1)[:k]] if idx.size > k else idx
        # Stable order: score descending, then server position, so equal inputs give equal hints.
        top = top[np.lexsort((top, -score[top]))]
    else:
        top = idx
    candidates = tuple(
        PlacementCandidate(
            server_index=int(s),
            server_id=snapshot.server_ids[s],
            rank=r + 1,
            score=float(score[s]),
            predicted_peak_gpu_temp_c=float(peak_temp_c[s]),
            thermal_headroom_c=float(thermal_headroom_c[s]),
            row_power_headroom_w=float(row_headroom_w[s]),
            zone_heat_headroom_w=float(zone_headroom_w[s]),
            free_gpus=int(snapshot.free_gpus[s]),
        )
        for r, s in enumerate(top)
    )
    num_fit = int(fits.sum())
    rejected = (
        f"{snapshot.num_servers - num_fit} without {n} free GPUs, "
        f"{int((fits & ~ok_thermal).sum())} thermal, {int((fits & ok_thermal & ~ok_power).sum())} row power, "
        f"{int((fits & ok_thermal & ok_power & ~ok_zone).sum())} zone heat"
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
