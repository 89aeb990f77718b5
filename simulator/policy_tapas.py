"""The TAPAS policies for the simulator: thin wrappers that call the controller's pure core.

Every decision comes from ``controller.core`` (the same functions the live service
calls); this module only keeps the little state a policy needs between ticks (the last
routing decision per endpoint, the emergency plans in force, when it last planned) and
maps the simulator's view onto the core's inputs.

Policies (factories registered in ``simulator.policies.POLICIES``):

* ``tapas`` — placement hints, routing weights, reconfiguration and emergency plans;
* ``tapas-placement`` / ``tapas-routing`` / ``tapas-reconfig`` — one mechanism each, the
  rest as ``baseline`` (best-fit placement, the engine's least-outstanding-work router,
  fixed configurations); ``tapas-reconfig`` includes the emergency plans, which are
  reconfiguration under a reduced budget;
* ``oracle`` — ``tapas`` with perfect forecasts (the engine passes true future demand and
  margin-free temperature/power in its snapshots).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from controller.core.catalogue import Catalogue
from controller.core.emergency import feedback_caps, plan_emergency
from controller.core.placement import rank_servers
from controller.core.reconfigure import plan_reconfiguration
from controller.core.routing import routing_weights
from controller.core.snapshot import (
    ConfigChange,
    Emergency,
    EmergencyPlan,
    GpuCap,
    PlacementDecision,
    PlacementMargins,
    PlacementRequest,
    ReconfigParams,
    RoutingDecision,
    RoutingParams,
    Snapshot,
    TickActions,
)
from foundation.topology import Topology
from simulator.policies import BaselinePolicy


@dataclass(frozen=True)
class TapasKnobs:
    """Which mechanisms run, and their parameters."""

    placement: bool = True
    routing: bool = True
    reconfig: bool = True
    emergencies: bool = True
    margins: PlacementMargins = PlacementMargins()
    routing_params: RoutingParams = RoutingParams()
    reconfig_params: ReconfigParams = ReconfigParams(power_margin_frac=0.05, home_layout="efficient")
    emergency_power_margin_frac: float = 0.06
    """Row margin of normal reconfiguration while a power emergency is in force. Wider than the plan's 2 %: SaaS
    raising clocks for a load burst must not eat the room the IaaS-cap feedback hands back (2 h power-failure,
    seed 0, 7 Dec: 0.02 → 3 row-cap events, IaaS loss 3.7 %; 0.04 → 1, 2.1 %; 0.06 → 0, 1.7 %)."""
    route_only_when_constrained: bool = True
    """Publish weights only while some instance's headroom binds; otherwise leave the load-aware router alone."""
    binding_thermal_headroom_c: float = 3.0
    feedback_margin_frac: float = 0.02
    """Row margin the IaaS-cap feedback keeps under the reduced budget, on top of the forecast-high row power it
    measures headroom from. 7 Dec, power-failure, seeds 0-2 × 1 h/2 h: 0.04 left IaaS loss at up to 5.9 %, 0.02 at
    up to 4.0 %, with no row-cap event either way."""
    feedback_step_frac: float = 0.5
    """Share of a row's measured headroom the IaaS-cap feedback hands back (or takes) per decision tick."""
    emergency_slow_switches: bool = False
    """Reload weights into leaner layouts (e.g. TP4) while IaaS VMs are capped. Off: reloading during the emergency
    takes capacity out when it is scarcest (1 h power-failure from the TP8 default, 7 Dec: SaaS loss 44.5 %, IaaS
    11.9 %, SLO 0.929). The efficient home layout (``reconfig_params.home_layout``) gets there before emergencies."""
    capped_power_weight: float = 20.0
    """Reconfiguration power weight while IaaS VMs are capped in an emergency."""
    emergency_max_quality_drop: float = 0.01
    """Quality points (0-1 scale) an emergency reconfiguration may give up per instance (precision yes, smaller model no)."""
    emergency_slow_interval_s: float = 20.0
    """Minimum spacing of slow-switch waves during an emergency (each wave is staggered per endpoint)."""
    smoothing_tau_s: float = 30.0
    """Time constant for low-passing forecast-high temperature and instance power (GPU thermal lag)."""
    binding_power_headroom_frac: float = 0.0


class TapasPolicy:
    """Placement, routing, reconfiguration and emergency response from ``controller.core``."""

    def __init__(
        self,
        *,
        catalogue: Catalogue,
        topology: Topology | None = None,
        seed: int = 0,
        name: str = "tapas",
        knobs: TapasKnobs | None = None,
        perfect_forecasts: bool = False,
        **_: Any,
    ) -> None:
        self.name = name
        self.perfect_forecasts = perfect_forecasts
        self.catalogue = catalogue
        self.k = knobs or TapasKnobs()
        self.nominal_budget_w = None if topology is None else np.asarray(topology.row_budget_w, dtype=np.float64)
        self._baseline = BaselinePolicy()
        self._previous: dict[str, RoutingDecision] = {}
        self._plans: dict[str, EmergencyPlan] = {}
        self._last_reconfig_s = -np.inf
        self._last_slow_s = -np.inf
        self._last_now_s = -np.inf
        self._temp_hi: np.ndarray | None = None
        self._inst_power: np.ndarray | None = None
        del seed

    def initial_config(self, endpoint_id: str) -> str:
        """Configuration new instances of ``endpoint_id`` are deployed in: the home layout at the default's clock.

        With ``home_layout="efficient"`` that is ``Catalogue.efficient``'s weight layout (where reconfiguration
        keeps instances in calm times anyway), so a run starts from TAPAS's steady state instead of migrating.
        """
        d = self.catalogue.default(endpoint_id)
        if self.k.reconfig_params.home_layout != "efficient" or not self.k.reconfig:
            return d.config_id
        layout = self.catalogue.efficient(endpoint_id).weight_layout
        for o in self.catalogue.options[endpoint_id]:
            if o.weight_layout == layout and o.frequency_cap_mhz == d.frequency_cap_mhz and o.max_batch == d.max_batch:
                return o.config_id
        return d.config_id

    # ------------------------------------------------------------ placement
    def place(self, snapshot: Snapshot, request: PlacementRequest) -> PlacementDecision:
        """Thermal- and power-aware hints (or best fit when placement is ablated)."""
        if not self.k.placement:
            return self._baseline.place(snapshot, request)
        d = rank_servers(snapshot, request, now_s=snapshot.now_s, margins=self.k.margins)
        if not d.feasible:
            # Never refuse a VM the cluster can hold: fall back to best fit, saying so.
            fb = self._baseline.place(snapshot, request)
            return replace(fb, reason=f"no server within limits ({d.reason}); fallback {fb.reason}")
        return d

    # ------------------------------------------------------------ tick
    def tick(self, snapshot: Snapshot, emergencies: Sequence[Emergency]) -> TickActions:
        """Routing every call; reconfiguration on its fast/slow cadence; emergency plans when events arrive."""
        now = snapshot.now_s
        snapshot = self._smoothed(snapshot)
        plans: list[EmergencyPlan] = []
        released: list[int] = []
        changes: list[ConfigChange] = []
        caps: list[GpuCap] = []

        if self.k.emergencies and self.k.reconfig:
            plans, released = self._emergencies(snapshot, emergencies, now)
            new_ids = {id(p) for p in plans}
            caps, lifted = self._feedback_caps(snapshot, now, skip=new_ids)
            released.extend(lifted)

        if self.k.reconfig and now - self._last_reconfig_s >= self.k.reconfig_params.fast_interval_s:
            self._last_reconfig_s = now
            allow_slow = now - self._last_slow_s >= self.k.reconfig_params.slow_interval_s and not self._plans
            inlet = self._planning_inlet(snapshot)
            params = self.k.reconfig_params
            if self._plans:
                # While an emergency plan is in force nothing relaxes back to a hotter configuration.
                params = replace(params, hysteresis_s=float("inf"))
                if any(p.emergency.kind == "power" for p in self._plans.values()):
                    # SaaS capacity gives before IaaS power: no raising for load while any IaaS VM is capped.
                    iaas_capped = any(p.caps for p in self._plans.values())
                    params = replace(params, power_margin_frac=self.k.emergency_power_margin_frac,
                                     raise_for_load=not iaas_capped)
                    if iaas_capped and self.k.emergency_slow_switches:
                        # Every SaaS watt saved lifts an IaaS cap: value power, and let weight layouts that
                        # serve the same load on less power (e.g. fewer GPUs per replica) load in, staggered.
                        params = replace(params, power_weight=self.k.capped_power_weight,
                                         slow_interval_s=self.k.emergency_slow_interval_s,
                                         max_quality_drop=self.k.emergency_max_quality_drop, layout_weight=0.0)
                        allow_slow = now - self._last_slow_s >= self.k.emergency_slow_interval_s
            planned = {c.instance_id for p in plans for c in p.changes}
            for c in plan_reconfiguration(
                snapshot, self.catalogue, now_s=now, params=params, inlet_c=inlet, allow_slow=allow_slow
            ):
                if c.instance_id not in planned:
                    changes.append(c)
            if allow_slow and any(c.slow for c in changes):
                self._last_slow_s = now

        routing: dict[str, RoutingDecision] = {}
        if self.k.routing:
            for e in snapshot.endpoint_ids:
                if not snapshot.instances.of_endpoint(e).size:
                    continue
                d = routing_weights(
                    snapshot, e, previous=self._previous.get(e), now_s=now, params=self.k.routing_params,
                    catalogue=self.catalogue,
                )
                self._previous[e] = d
                if not self.k.route_only_when_constrained or self._constrained(snapshot, d):
                    routing[e] = d
        return TickActions(routing=routing, changes=tuple(changes), caps=tuple(caps), released_caps=tuple(released),
                           plans=tuple(plans))

    # ------------------------------------------------------------ helpers
    def _smoothed(self, snapshot: Snapshot) -> Snapshot:
        """Low-pass the spiky inputs over the GPU thermal lag (``smoothing_tau_s``).

        The simulator's forecast-high temperature is the steady state at the *instantaneous*
        GPU power, and prefill bursts last seconds while GPU temperature lags by tens of
        seconds; the measured instance power is just as spiky. An exponential average with the
        lag's time constant is what the die actually integrates. Never below the current reading.
        """
        tau = self.k.smoothing_tau_s
        if tau <= 0:
            return snapshot
        now = snapshot.now_s
        dt = now - self._last_now_s if np.isfinite(self._last_now_s) else tau
        self._last_now_s = now
        a = float(min(max(dt / tau, 0.0), 1.0))
        hi = snapshot.gpu_temp_hi_c
        if self._temp_hi is None or self._temp_hi.shape != hi.shape:
            self._temp_hi = hi.astype(np.float64).copy()
        else:
            self._temp_hi = self._temp_hi + a * (hi - self._temp_hi)
        inst = snapshot.instances
        p = inst.gpu_power_w
        if self._inst_power is None or self._inst_power.shape != p.shape:
            self._inst_power = p.astype(np.float64).copy()
        else:
            self._inst_power = self._inst_power + a * (p - self._inst_power)
        temp_hi = np.maximum(self._temp_hi, snapshot.gpu_temp_c)
        return replace(snapshot, gpu_temp_hi_c=temp_hi, instances=replace(inst, gpu_power_w=self._inst_power.copy()))

    def _constrained(self, snapshot: Snapshot, d: RoutingDecision) -> bool:
        """True when some instance is drained or its thermal or row-power headroom binds."""
        if d.stale_inputs or bool(d.draining.any()):
            return True
        budget = snapshot.row_budget_w[snapshot.server_row[snapshot.instances.server_index[d.instance_index]]]
        return bool(
            (d.thermal_headroom_c < self.k.binding_thermal_headroom_c).any()
            or (d.power_headroom_w < self.k.binding_power_headroom_frac * budget).any()
        )

    def _planning_inlet(self, snapshot: Snapshot) -> np.ndarray | None:
        """Inlet to plan against: forecast-high, raised in zones whose cooling has failed."""
        rises = [p.emergency for p in self._plans.values() if p.emergency.kind == "cooling"]
        if not rises:
            return None
        inlet = np.maximum(snapshot.inlet_hi_c, snapshot.inlet_c).astype(np.float64).copy()
        for e in rises:
            zone = snapshot.server_zone == e.domain_index if e.domain_kind == "zone" else np.ones(snapshot.num_servers, bool)
            target = snapshot.inlet_c + (e.supply_temp_rise_c or 0.0)
            inlet[zone] = np.maximum(inlet[zone], target[zone])
        return inlet

    def _feedback_caps(self, snapshot: Snapshot, now: float, *, skip: set[int]) -> tuple[list[GpuCap], list[int]]:
        """Close the loop on emergency plans' IaaS limits from measured row power and inlet (``feedback_caps``)."""
        caps: list[GpuCap] = []
        lifted: list[int] = []
        seen: set[int] = set()
        for eid, plan in list(self._plans.items()):
            if id(plan) in skip or id(plan) in seen:
                continue
            # The engine's snapshot already shows the reduced budget.
            new = feedback_caps(snapshot, plan, now_s=now, budget_w=snapshot.row_budget_w,
                                margin_frac=self.k.feedback_margin_frac, step_frac=self.k.feedback_step_frac)
            if new is None:
                continue
            seen.add(id(plan))
            kept = {c.vm_id for c in new}
            lifted.extend(c.server_index for c in plan.caps if c.vm_id not in kept)
            caps.extend(new)
            updated = replace(plan, caps=new)
            for k, v in self._plans.items():
                if v is plan:
                    self._plans[k] = updated
            del eid
        # A lifted VM's server may hold another capped VM: re-issue those after the release.
        return caps, lifted

    def _emergencies(self, snapshot: Snapshot, emergencies: Sequence[Emergency], now: float) -> tuple[list[EmergencyPlan], list[int]]:
        active = {e.event_id: e for e in emergencies}
        released: list[int] = []
        for eid in [k for k in self._plans if k not in active]:
            plan = self._plans.pop(eid)
            released.extend(c.server_index for c in plan.caps)
        new = [e for eid, e in active.items() if eid not in self._plans]
        if not new:
            return [], released
        base = snapshot
        if self.nominal_budget_w is not None and self.nominal_budget_w.shape == snapshot.row_budget_w.shape:
            # The engine's snapshot already shows the reduced budget; plans are relative to the nominal one.
            base = replace(snapshot, row_budget_w=self.nominal_budget_w)
        out: list[EmergencyPlan] = []
        power = [e for e in new if e.kind == "power"]
        rows_hit = {e.domain_index for e in power if e.domain_kind == "row"}
        fracs = {e.budget_frac for e in power}
        if power and len(rows_hit) == len(snapshot.row_ids) and len(fracs) == 1:
            # Every row loses the same share at once (a UPS lost): one cluster-wide plan, not R conflicting ones.
            e0 = power[0]
            merged = replace(e0, event_id=f"{e0.event_id}+{len(power) - 1}", domain_kind="cluster", domain_index=0)
            plan = plan_emergency(base, self.catalogue, merged, now_s=now)
            out.append(plan)
            for e in power:
                self._plans[e.event_id] = plan
            new = [e for e in new if e.kind != "power"]
        for e in new:
            plan = plan_emergency(base, self.catalogue, e, now_s=now)
            self._plans[e.event_id] = plan
            out.append(plan)
        return out, released


def make_tapas(**kwargs: Any) -> TapasPolicy:
    """All mechanisms."""
    return TapasPolicy(name="tapas", **kwargs)


def make_tapas_placement(**kwargs: Any) -> TapasPolicy:
    """Placement hints only."""
    return TapasPolicy(name="tapas-placement", knobs=TapasKnobs(routing=False, reconfig=False, emergencies=False), **kwargs)


def make_tapas_routing(**kwargs: Any) -> TapasPolicy:
    """Routing weights only."""
    return TapasPolicy(name="tapas-routing", knobs=TapasKnobs(placement=False, reconfig=False, emergencies=False), **kwargs)


def make_tapas_reconfig(**kwargs: Any) -> TapasPolicy:
    """Reconfiguration and emergency plans only."""
    return TapasPolicy(name="tapas-reconfig", knobs=TapasKnobs(placement=False, routing=False), **kwargs)


def make_oracle(**kwargs: Any) -> TapasPolicy:
    """``tapas`` with perfect forecasts."""
    return TapasPolicy(name="oracle", perfect_forecasts=True, **kwargs)
