"""Core <-> wire translations for the live controller: pure functions, no state, no I/O.

The decision core speaks indices, seconds and dataclasses (``controller.core.snapshot``);
the wire speaks ids, datetimes and the typed contracts (``contracts``). Every mapping
between the two lives here, so ``controller.service.Controller`` only sequences them:
decisions to :class:`~contracts.ReconfigCommand` / :class:`~contracts.RoutingWeights` /
:class:`~contracts.PlacementHint`, wire requests and events to the core's
:class:`~controller.core.snapshot.PlacementRequest` / :class:`~controller.core.snapshot.Emergency`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np

from contracts import (
    ControlEvent,
    InstanceWeight,
    PlacementCandidate,
    PlacementHint,
    PlacementRequest,
    ReconfigCommand,
    ReconfigParams,
    RoutingWeights,
)
from controller.core.catalogue import Catalogue
from controller.core.snapshot import (
    ConfigChange,
    Emergency,
    GpuCap,
    PlacementDecision,
    RoutingDecision,
    Snapshot,
)
from controller.core.snapshot import PlacementRequest as CorePlacementRequest
from controller.safety import make_command_id
from foundation.topology import Topology

Mode = Literal["advisory", "enforce"]


def ts(seconds: float) -> datetime:
    """Epoch seconds (the core's clock) as an aware UTC datetime (the wire's).

    >>> ts(0.0).isoformat()
    '1970-01-01T00:00:00+00:00'
    """
    return datetime.fromtimestamp(seconds, tz=UTC)


_ts = ts


def core_request(req: PlacementRequest) -> CorePlacementRequest:
    """The core's placement request for a wire one (per-GPU power expectation, class, lifetime, endpoint)."""
    return CorePlacementRequest(
        request_id=req.request_id, vm_kind=req.vm_kind, num_gpus=req.num_gpus,
        gpu_power_w=req.expected_power_w_per_gpu, vm_class=req.vm_class,
        expected_lifetime_s=req.expected_lifetime_s, endpoint_id=req.endpoint_id)


def placement_hint(decision: PlacementDecision, *, now: datetime, advisory: bool) -> PlacementHint:
    """The wire hint for a core placement decision (non-finite scores become +-1e9: JSON has no infinity)."""
    return PlacementHint(
        request_id=decision.request_id, issued_at=now, feasible=decision.feasible, advisory=advisory,
        reason=decision.reason[:2000],
        candidates=[PlacementCandidate(
            server_id=c.server_id, rank=c.rank, score=_finite(c.score),
            predicted_peak_gpu_temp_c=_finite(c.predicted_peak_gpu_temp_c),
            thermal_headroom_c=_finite(c.thermal_headroom_c),
            row_power_headroom_w=_finite(c.row_power_headroom_w),
            zone_heat_headroom_w=_finite(c.zone_heat_headroom_w), free_gpus=c.free_gpus)
            for c in decision.candidates])


def weights_message(d: RoutingDecision, snap: Snapshot, *, now: datetime, valid_for_s: float, advisory: bool,
                    stale: bool) -> RoutingWeights:
    """The wire weights for one endpoint's routing decision (clipped to [0, 1] and renormalised)."""
    inst = snap.instances
    w = np.clip(d.weights, 0.0, 1.0)
    w = w / w.sum()
    lp = np.clip(d.long_prompt_weights, 0.0, 1.0)
    return RoutingWeights(
        endpoint_id=d.endpoint_id, issued_at=now, valid_until=now + timedelta(seconds=valid_for_s),
        advisory=advisory, stale_inputs=stale or d.stale_inputs, reason=d.reason[:2000],
        weights=[InstanceWeight(
            instance_id=iid, server_id=snap.server_ids[int(inst.server_index[int(d.instance_index[j])])],
            weight=float(w[j]), state="drain" if d.draining[j] else "active",
            thermal_headroom_c=_finite(d.thermal_headroom_c[j]),
            power_headroom_w=_finite(d.power_headroom_w[j]),
            capacity_tokens_per_s=max(0.0, _finite(d.capacity_tokens_per_s[j])),
            long_prompt_weight=float(lp[j])) for j, iid in enumerate(d.instance_ids)])


def revert_command(server_id: str, *, reason: str, mode: Mode, now: datetime, ttl_s: float) -> ReconfigCommand:
    """The host command that lifts every cap on a server (an emergency's IaaS caps ending or released)."""
    return ReconfigCommand(
        command_id=make_command_id(target=server_id, action="revert", params=ReconfigParams(),
                                   epoch=int(now.timestamp())),
        issued_at=now, expires_at=now + timedelta(seconds=ttl_s), server_id=server_id,
        action="revert", reason=reason[:2000], trigger="emergency", mode=mode, layer="host")


def change_to_commands(change: ConfigChange, catalogue: Catalogue, *, mode: Mode, now: datetime, ttl_s: float,
                       epoch_s: float) -> list[ReconfigCommand]:
    """The commands that carry one configuration change.

    The host command (frequency cap, applied by ``tapas agent``) and, when the batch size
    or the weight layout changes, one serving-layer command carrying the whole target
    configuration (``params.config_id`` plus every knob). For a slow change its action
    names the heaviest knob (variant > precision > tensor parallelism). Contract for
    the serving layer: docs/serving-commands.md.
    """
    a = catalogue.option(change.from_config_id)
    b = catalogue.option(change.to_config_id)
    expires_s = min(change.expires_at_s, now.timestamp() + ttl_s) if change.expires_at_s > now.timestamp() \
        else now.timestamp() + ttl_s
    expires_at = _ts(expires_s)
    epoch = int(change.issued_at_s // max(epoch_s, 1e-3))
    common = dict(issued_at=now, expires_at=expires_at, server_id=change.server_id, instance_id=change.instance_id,
                  trigger=change.trigger[:64], headroom=_finite(change.headroom), mode=mode)
    reason = f"{change.from_config_id} -> {change.to_config_id}: {change.reason}"[:2000]
    out: list[ReconfigCommand] = []
    if b.frequency_cap_mhz != a.frequency_cap_mhz:
        p = ReconfigParams(frequency_cap_mhz=b.frequency_cap_mhz, config_id=b.config_id)
        out.append(ReconfigCommand(command_id=make_command_id(target=change.instance_id, action="set_frequency_cap",
                                                              params=p, epoch=epoch),
                                   action="set_frequency_cap", params=p, reason=reason, layer="host",
                                   **common))  # type: ignore[arg-type]
    action: str | None = None
    if b.model_variant != a.model_variant:
        action = "set_model_variant"
    elif b.precision != a.precision:
        action = "set_precision"
    elif b.tensor_parallelism != a.tensor_parallelism:
        action = "set_tensor_parallelism"
    elif b.max_batch != a.max_batch:
        action = "set_max_batch"
    if action is not None:
        p = ReconfigParams(max_batch=b.max_batch, tensor_parallelism=b.tensor_parallelism,
                           precision=b.precision if b.precision in ("fp16", "bf16", "fp8", "int8", "int4") else None,  # type: ignore[arg-type]
                           model_variant=b.model_variant[:64], config_id=b.config_id,
                           frequency_cap_mhz=b.frequency_cap_mhz)
        out.append(ReconfigCommand(command_id=make_command_id(target=change.instance_id, action=action, params=p,
                                                              epoch=epoch),
                                   action=action, params=p, reason=reason, layer="serving",  # type: ignore[arg-type]
                                   **common))  # type: ignore[arg-type]
    return out


def cap_to_commands(cap: GpuCap, *, mode: Mode, now: datetime, max_ttl_s: float,
                    ends_at: datetime | None) -> list[ReconfigCommand]:
    """Host commands for an emergency cap on a server's GPUs (power limit and/or frequency cap)."""
    end_s = cap.expires_at_s if cap.expires_at_s > now.timestamp() else (
        ends_at.timestamp() if ends_at is not None else now.timestamp() + max_ttl_s)
    expires_at = _ts(min(end_s, now.timestamp() + max_ttl_s))
    out: list[ReconfigCommand] = []
    target = cap.vm_id or cap.server_id
    for action, p in (("set_power_limit", ReconfigParams(power_limit_w=cap.power_limit_w)
                       if cap.power_limit_w is not None else None),
                      ("set_frequency_cap", ReconfigParams(frequency_cap_mhz=cap.frequency_cap_mhz)
                       if cap.frequency_cap_mhz is not None else None)):
        if p is None:
            continue
        out.append(ReconfigCommand(
            command_id=make_command_id(target=target, action=action, params=p, epoch=int(cap.issued_at_s)),
            issued_at=now, expires_at=expires_at, server_id=cap.server_id, instance_id=cap.vm_id,
            action=action, params=p, reason=cap.reason[:2000], trigger="emergency", mode=mode,  # type: ignore[arg-type]
            layer="host"))
    return out


def to_emergency(ev: ControlEvent, topology: Topology) -> Emergency | None:
    """The core's Emergency for an event, mapping PDU/rack/server domains to their row or zone.

    >>> from foundation.topology import default_topology
    >>> topo = default_topology(8)
    >>> ev = ControlEvent(event_id="e1", event_kind="power_emergency", severity="critical",
    ...                   occurred_at=ts(100.0), domain_kind="server", domain_id=topo.server_ids[0], budget_frac=0.8)
    >>> em = to_emergency(ev, topo)
    >>> (em.kind, em.domain_kind, em.domain_index, em.started_at_s, em.budget_frac)
    ('power', 'row', 0, 100.0, 0.8)
    >>> to_emergency(ev.model_copy(update={"domain_id": "nowhere"}), topo) is None
    True
    """
    kind: Literal["power", "cooling"] = "power" if ev.event_kind == "power_emergency" else "cooling"
    dk, did = ev.domain_kind, ev.domain_id
    row_id: str | None = None
    zone_id: str | None = None
    if dk == "cluster":
        return Emergency(event_id=ev.event_id, kind=kind, domain_kind="cluster", domain_index=0,
                         started_at_s=ev.occurred_at.timestamp(),
                         ends_at_s=ev.ends_at.timestamp() if ev.ends_at else None, budget_frac=ev.budget_frac,
                         supply_temp_rise_c=ev.supply_temp_rise_c)
    if dk == "row":
        row_id = did
    elif dk == "zone":
        zone_id = did
    elif dk in ("rack", "pdu"):
        rack = next((r for r in topology.racks if did in (r.rack_id, r.pdu_id)), None)
        if rack is not None:
            row_id, zone_id = rack.row_id, rack.zone_id
    elif dk == "server" and did in topology.by_id:
        s = topology.by_id[did]
        row_id, zone_id = s.row_id, s.zone_id
    if kind == "power" and row_id in topology.row_ids:
        return Emergency(event_id=ev.event_id, kind="power", domain_kind="row",
                         domain_index=topology.row_ids.index(row_id), started_at_s=ev.occurred_at.timestamp(),
                         ends_at_s=ev.ends_at.timestamp() if ev.ends_at else None, budget_frac=ev.budget_frac)
    if kind == "cooling":
        if zone_id is None and row_id is not None:
            zone_id = next((r.zone_id for r in topology.rows if r.row_id == row_id), None)
        if zone_id in topology.zone_ids:
            return Emergency(event_id=ev.event_id, kind="cooling", domain_kind="zone",
                             domain_index=topology.zone_ids.index(zone_id), started_at_s=ev.occurred_at.timestamp(),
                             ends_at_s=ev.ends_at.timestamp() if ev.ends_at else None,
                             supply_temp_rise_c=ev.supply_temp_rise_c)
    return None


def _finite(x: float) -> float:
    """A float the wire accepts: JSON has no infinity or NaN, so +inf -> 1e9, -inf and NaN -> -1e9.

    >>> _finite(3.5), _finite(float("inf")), _finite(float("nan"))
    (3.5, 1000000000.0, -1000000000.0)
    """
    v = float(x)
    return v if math.isfinite(v) else (1e9 if v > 0 else -1e9)


def _age(age_s: float) -> str:
    return "never received" if age_s >= 1e8 else f"{age_s:.0f} s"
