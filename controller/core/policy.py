"""The decision policies, the one place they are defined: what ``tapas simulate`` evaluates is what ``tapas controller`` runs.

Pure: no clock (time is ``snapshot.now_s``), no I/O. Every policy has the
:class:`~controller.core.snapshot.Policy` shape — ``place(snapshot, request)`` and
``tick(snapshot, emergencies) -> TickActions`` — and keeps whatever it needs between ticks
on itself (the last routing decision per endpoint, the emergency plans in force, smoothed
inputs, when it last planned). The simulator's engine and the live controller's envelope
(``controller.service.Controller``) both build a policy from :data:`POLICIES` and call it
the same way; the envelope adds modes, staleness events, intents, ids, the safety gate
and publication, never a decision rule.

Policies (:data:`POLICIES`, the registry; ``tapas simulate --compare`` and
``tapas controller --policy`` / ``TAPAS_CONTROLLER__POLICY`` take their names from it):

* ``baseline`` — thermal- and power-unaware, as clusters run today: best-fit placement,
  no routing weights (the engine's least-outstanding-work router), fixed configurations,
  no emergency plans (the cluster's reactive power manager acts).
* ``tapas`` — placement hints, routing weights, reconfiguration and emergency plans.
* ``tapas-placement`` / ``tapas-routing`` / ``tapas-reconfig`` — one mechanism each, the
  rest as ``baseline``; ``tapas-reconfig`` includes emergency plans (reconfiguration under
  a reduced budget).
* ``oracle`` — ``tapas`` with perfect forecasts: the simulator passes true future demand
  and margin-free temperature and power in its snapshots. Live there is no future to
  pass, so it decides exactly as ``tapas``.

Every rule is a field of :class:`PolicyKnobs` with its default; the live service maps a few
settings onto knobs (``controller.service.knobs_from_settings``) and
``TAPAS_CONTROLLER__KNOBS`` overrides any of them by name (:meth:`PolicyKnobs.with_overrides`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from contracts.errors import ConfigError
from controller.core.catalogue import Catalogue
from controller.core.emergency import emergency_budget_w, feedback_caps, plan_emergency
from controller.core.placement import rank_servers
from controller.core.reconfigure import plan_reconfiguration
from controller.core.routing import routing_weights
from controller.core.snapshot import (
    ConfigChange,
    Emergency,
    EmergencyPlan,
    GpuCap,
    PlacementCandidate,
    PlacementDecision,
    PlacementMargins,
    PlacementRequest,
    Policy,
    ReconfigParams,
    RoutingDecision,
    RoutingParams,
    Snapshot,
    TickActions,
)

if TYPE_CHECKING:
    from foundation.topology import Topology


# ---------------------------------------------------------------------- baseline


class BaselinePolicy:
    """Best-fit placement, no routing/reconfiguration decisions (the engine's LOW router and reactive cap act).

    Mechanism by mechanism: placement is best-fit packing (the server with the fewest free
    GPUs that still fits the VM, whole free servers for SaaS instances, lowest index first;
    no temperature, power or cooling input); routing none; configuration fixed (the
    endpoint's default); emergencies nothing beyond the cluster's reactive power manager.
    """

    name = "baseline"
    perfect_forecasts = False

    def __init__(self, **_: Any) -> None:
        pass

    def place(self, snapshot: Snapshot, request: PlacementRequest) -> PlacementDecision:
        """Best fit: fewest free GPUs that still fit (SaaS needs a whole free server)."""
        free = snapshot.free_gpus
        fits = free >= (snapshot.num_gpus if request.vm_kind == "saas" else request.num_gpus)
        idx = np.flatnonzero(fits)
        if len(idx) == 0:
            return PlacementDecision(request.request_id, False, (), "best-fit: no server has enough free GPUs")
        order = idx[np.lexsort((idx, free[idx]))][:request.max_candidates or 10]
        cands = tuple(
            PlacementCandidate(server_index=int(s), server_id=snapshot.server_ids[int(s)], rank=r + 1,
                               score=float(free[s]), predicted_peak_gpu_temp_c=float("nan"),
                               thermal_headroom_c=float("nan"), row_power_headroom_w=float("nan"),
                               zone_heat_headroom_w=float("nan"), free_gpus=int(free[s]))
            for r, s in enumerate(order))
        return PlacementDecision(request.request_id, True, cands,
                                 f"best-fit: {int(free[order[0]])} free GPUs on {snapshot.server_ids[int(order[0])]}")

    def tick(self, snapshot: Snapshot, emergencies: Sequence[Emergency]) -> TickActions:
        """No decisions: fixed configurations, default routing."""
        del snapshot, emergencies
        return TickActions()


# ---------------------------------------------------------------------- knobs


@dataclass(frozen=True)
class PolicyKnobs:
    """Which mechanisms run, and every rule's parameter, with the default both simulator and live service use.

    Adding a knob: docs/controller.md, "Add a configuration knob".
    """

    placement: bool = True
    routing: bool = True
    reconfig: bool = True
    emergencies: bool = True
    margins: PlacementMargins = PlacementMargins()
    routing_params: RoutingParams = RoutingParams()
    reconfig_params: ReconfigParams = ReconfigParams(power_margin_frac=0.05, home_layout="efficient")
    """Row power margin 0.05 (the live service ran 0.03 before the policies merged: 0.05 is what the evaluated
    results rest on) and the efficient home layout (``TAPAS_CONTROLLER__HOME_LAYOUT`` can say ``default``)."""
    emergency_power_margin_frac: float = 0.06
    """Row margin of normal reconfiguration while a power emergency is in force. Wider than the plan's 2 %: SaaS
    raising clocks for a load burst must not eat the room the IaaS-cap feedback hands back (2 h power-failure,
    seed 0, 7 Dec: 0.02 → 3 row-cap events, IaaS loss 3.7 %; 0.04 → 1, 2.1 %; 0.06 → 0, 1.7 %)."""
    freeze_relaxation_in_emergency: bool = True
    """While any emergency plan is in force, nothing relaxes back to a hotter configuration (infinite hysteresis)."""
    block_power_raises_in_emergency_domain: bool = False
    """Drop every change that raises power at the instance's load on a server inside an active emergency's domain
    (the live service's rule before the merge). Off: the evaluated rule is narrower — no raise for load while any
    IaaS VM is capped, with ``emergency_power_margin_frac`` — and lets SaaS recover capacity the feedback frees."""
    block_power_raises_when_stale: bool = True
    """Drop every change that raises power while forecasts are stale (older than ``stale_after_s``)."""
    stale_after_s: float = 10.0
    """Forecast age beyond which inputs are stale: hotter configurations are not chosen, routing decays."""
    stale_decay_s: float = 30.0
    """While stale, routing weights decay from the last good ones to capacity-proportional ones with this time
    constant (seconds since forecasts went stale, measured on ``snapshot.now_s``)."""
    route_only_when_constrained: bool = True
    """Publish weights only while some instance's headroom binds (or inputs are stale, or one drains); otherwise
    leave the load-aware router alone."""
    binding_thermal_headroom_c: float = 3.0
    binding_power_headroom_frac: float = 0.0
    feedback_margin_frac: float = 0.02
    """Row margin the IaaS-cap feedback keeps under the reduced budget, on top of the forecast-high row power it
    measures headroom from. 7 Dec, power-failure, seeds 0-2 × 1 h/2 h: 0.04 left IaaS loss at up to 5.9 %, 0.02 at
    up to 4.0 %, with no row-cap event either way."""
    feedback_step_frac: float = 0.5
    """Share of a row's measured headroom the IaaS-cap feedback hands back (or takes) per decision tick."""
    feedback_min_step_w: float = 0.0
    """A feedback cap whose per-GPU limit moved less than this keeps its old limit and is not re-issued (the live
    service used 10 W before the merge, to spare agents; 0: every tick's caps are issued)."""
    lifted_caps: Literal["release", "tdp"] = "release"
    """A VM the feedback no longer caps: ``release`` lists its server in ``released_caps`` (the envelope reverts
    it) unless another VM on that server stays capped, ``tdp`` always issues a cap at the GPU's TDP instead.
    (Before the merge the simulator released such servers too, silently lifting the other VMs' caps for a tick.)"""
    merge_uniform_power_events: bool = True
    """Power events that cut every row by the same share at once (a UPS lost) get one cluster-wide plan instead
    of one per row (per-row plans each assume the other rows' slack and conflict)."""
    plan_against_raised_inlet: bool = True
    """During a cooling failure, reconfiguration plans against the inlet the failed zone is heading to (inlet +
    supply rise), not only the forecast-high inlet, which lags the failure."""
    emergency_slow_switches: bool = False
    """Reload weights into leaner layouts (e.g. TP4) while IaaS VMs are capped. Off: reloading during the emergency
    takes capacity out when it is scarcest (1 h power-failure from the TP8 default, 7 Dec: SaaS loss 44.5 %, IaaS
    11.9 %, SLO 0.929). The efficient home layout (``reconfig_params.home_layout``) gets there before emergencies."""
    capped_power_weight: float = 20.0
    """Reconfiguration power weight while IaaS VMs are capped in an emergency (with ``emergency_slow_switches``)."""
    emergency_max_quality_drop: float = 0.01
    """Quality points (0-1 scale) an emergency reconfiguration may give up per instance (precision yes, smaller model no)."""
    emergency_slow_interval_s: float = 20.0
    """Minimum spacing of slow-switch waves during an emergency (each wave is staggered per endpoint)."""
    smoothing_tau_s: float = 30.0
    """Time constant for low-passing forecast-high temperature and instance power (GPU thermal lag); 0 = none."""

    def with_overrides(self, overrides: Mapping[str, Any]) -> PolicyKnobs:
        """A copy with knobs replaced by name; ``reconfig_params.x`` / ``routing_params.x`` / ``margins.x`` reach in.

        >>> PolicyKnobs().with_overrides({"feedback_min_step_w": 10, "reconfig_params.power_margin_frac": 0.03}
        ...                              ).reconfig_params.power_margin_frac
        0.03
        >>> PolicyKnobs().with_overrides({"no_such_knob": 1})
        Traceback (most recent call last):
        ...
        contracts.errors.ConfigError: policy knob 'no_such_knob' unknown; knobs: placement, routing, ...
        """
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        names = [f.name for f in dataclasses.fields(self)]
        for key, value in overrides.items():
            head, _, sub = key.partition(".")
            if head not in names:
                raise ConfigError(f"policy knob {key!r} unknown; knobs: {', '.join(names[:2])}, ...")
            if sub:
                inner = getattr(self, head)
                if not dataclasses.is_dataclass(inner) or sub not in {f.name for f in dataclasses.fields(inner)}:
                    raise ConfigError(f"policy knob {key!r} unknown")
                nested.setdefault(head, {})[sub] = _coerce(getattr(inner, sub), value, key)
            else:
                top[head] = _coerce(getattr(self, head), value, key)
        for head, subs in nested.items():
            top[head] = replace(getattr(self, head), **subs)
        return replace(self, **top)


def _coerce(current: Any, value: Any, key: str) -> Any:
    """``value`` in the type of the knob's default (settings arrive as JSON: ints for floats, strings)."""
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"policy knob {key!r} is a group: set its fields ({key}.NAME)")
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"policy knob {key!r} takes true/false, got {value!r}")
        return value
    if isinstance(current, float | int):
        try:
            return type(current)(value)
        except (TypeError, ValueError):
            raise ConfigError(f"policy knob {key!r} takes a number, got {value!r}") from None
    return value


TapasKnobs = PolicyKnobs
"""The name the simulator's ablation knobs had before the policies merged."""


# ---------------------------------------------------------------------- tapas


class TapasPolicy:
    """Placement, routing, reconfiguration and emergency response from ``controller.core``."""

    def __init__(
        self,
        *,
        catalogue: Catalogue,
        topology: Topology | None = None,
        seed: int = 0,
        name: str = "tapas",
        knobs: PolicyKnobs | None = None,
        perfect_forecasts: bool = False,
        **_: Any,
    ) -> None:
        self.name = name
        self.perfect_forecasts = perfect_forecasts
        self.catalogue = catalogue
        self.k = knobs or PolicyKnobs()
        self.nominal_budget_w = None if topology is None else np.asarray(topology.row_budget_w, dtype=np.float64)
        self._baseline = BaselinePolicy()
        self._previous: dict[str, RoutingDecision] = {}
        self._last_good: dict[str, RoutingDecision] = {}
        self._stale_since_s: float | None = None
        self._plans: dict[str, EmergencyPlan] = {}
        self._last_reconfig_s = -np.inf
        self._last_slow_s = -np.inf
        self._last_now_s = -np.inf
        self._temp_hi: np.ndarray | None = None
        self._inst_power: np.ndarray | None = None
        del seed

    @property
    def plans(self) -> Mapping[str, EmergencyPlan]:
        """Emergency plans in force, by event id (a merged plan appears under each of its events)."""
        return dict(self._plans)

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
        snapshot = self._with_emergency_budgets(self._smoothed(snapshot), emergencies)
        stale = snapshot.forecast_age_s > self.k.stale_after_s
        if not stale:
            self._stale_since_s = None
        elif self._stale_since_s is None:
            self._stale_since_s = now
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
            planned = {c.instance_id for p in plans for c in p.changes}
            changes = [c for c in self._reconfigure(snapshot, now) if c.instance_id not in planned
                       and not self._blocked(c, snapshot, emergencies, stale)]

        routing: dict[str, RoutingDecision] = {}
        if self.k.routing:
            for e in snapshot.endpoint_ids:
                if not snapshot.instances.of_endpoint(e).size:
                    continue
                d = routing_weights(
                    snapshot, e, previous=None if stale else self._previous.get(e), now_s=now,
                    params=self.k.routing_params, catalogue=self.catalogue, stale_after_s=self.k.stale_after_s,
                )
                if stale:
                    d = self._decay_to(d, now)
                else:
                    self._last_good[e] = d
                self._previous[e] = d
                if not self.k.route_only_when_constrained or self._constrained(snapshot, d):
                    routing[e] = d
        return TickActions(routing=routing, changes=tuple(changes), caps=tuple(caps), released_caps=tuple(released),
                           plans=tuple(plans))

    # ------------------------------------------------------------ helpers
    def _reconfigure(self, snapshot: Snapshot, now: float) -> list[ConfigChange]:
        """Normal reconfiguration, with the rules an emergency in force adds."""
        allow_slow = now - self._last_slow_s >= self.k.reconfig_params.slow_interval_s and not self._plans
        inlet = self._planning_inlet(snapshot)
        params = self.k.reconfig_params
        if self._plans:
            if self.k.freeze_relaxation_in_emergency:
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
        out = plan_reconfiguration(snapshot, self.catalogue, now_s=now, params=params, inlet_c=inlet,
                                   allow_slow=allow_slow, stale_after_s=self.k.stale_after_s)
        if allow_slow and any(c.slow for c in out):
            self._last_slow_s = now
        return out

    def _blocked(self, change: ConfigChange, snap: Snapshot, emergencies: Sequence[Emergency], stale: bool) -> bool:
        """A change that raises power, while forecasts are stale or (knob) inside an active emergency's domain."""
        if not (self.k.block_power_raises_when_stale and stale) and not (
                self.k.block_power_raises_in_emergency_domain and emergencies):
            return False
        if not raises_power(change, snap, self.catalogue):
            return False
        if stale and self.k.block_power_raises_when_stale:
            return True
        srv = change.server_index
        for e in emergencies:
            if e.domain_kind == "cluster":
                return True
            if e.domain_kind == "row" and int(snap.server_row[srv]) == e.domain_index:
                return True
            if e.domain_kind == "zone" and int(snap.server_zone[srv]) == e.domain_index:
                return True
        return False

    def _decay_to(self, fallback: RoutingDecision, now: float) -> RoutingDecision:
        """Last good weights decaying toward the capacity-proportional fallback (time constant ``stale_decay_s``)."""
        good = self._last_good.get(fallback.endpoint_id)
        if good is None or self._stale_since_s is None:
            return fallback
        elapsed_s = max(0.0, now - self._stale_since_s)
        keep = math.exp(-elapsed_s / self.k.stale_decay_s)
        last = dict(zip(good.instance_ids, good.weights, strict=True))
        prev = np.asarray([last.get(i, w) for i, w in zip(fallback.instance_ids, fallback.weights, strict=True)])
        w = keep * prev + (1.0 - keep) * fallback.weights
        w = w / w.sum() if w.sum() > 0 else fallback.weights
        return replace(fallback, weights=w, stale_inputs=True, reason=(
            f"STALE forecasts for {elapsed_s:.0f}s: last good weights decaying to capacity-proportional "
            f"({keep:.0%} last good); " + fallback.reason)[:2000])

    def _with_emergency_budgets(self, snapshot: Snapshot, emergencies: Sequence[Emergency]) -> Snapshot:
        """Row budgets no higher than the active power emergencies allow.

        The simulator's snapshot already shows the reduced budget (then this changes nothing); the live
        snapshot shows the nominal one. Either way every mechanism below sees what the rows may draw now.
        """
        power = [e for e in emergencies if e.kind == "power"]
        if not power:
            return snapshot
        nominal = (self.nominal_budget_w if self.nominal_budget_w is not None
                   and self.nominal_budget_w.shape == snapshot.row_budget_w.shape else snapshot.row_budget_w)
        budget = np.asarray(snapshot.row_budget_w, dtype=np.float64).copy()
        for e in power:
            budget = np.minimum(budget, emergency_budget_w(nominal, e))
        return replace(snapshot, row_budget_w=budget)

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
        if not self.k.plan_against_raised_inlet:
            return None
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
        for plan in list(self._plans.values()):
            if id(plan) in skip or id(plan) in seen:
                continue
            seen.add(id(plan))
            new = feedback_caps(snapshot, plan, now_s=now, budget_w=snapshot.row_budget_w,
                                margin_frac=self.k.feedback_margin_frac, step_frac=self.k.feedback_step_frac)
            if new is None:
                continue
            old = {c.vm_id: c for c in plan.caps}
            kept = {c.vm_id for c in new}
            in_force: list[GpuCap] = []
            for c in new:
                prev = old.get(c.vm_id)
                moved = (prev is None or prev.power_limit_w is None or c.power_limit_w is None
                         or abs(prev.power_limit_w - c.power_limit_w) >= self.k.feedback_min_step_w)
                in_force.append(c if moved or prev is None else prev)
                if moved:
                    caps.append(c)
            still_capped = {c.server_index for c in in_force}
            for c in plan.caps:
                if c.vm_id in kept:
                    continue
                if self.k.lifted_caps == "tdp" or c.server_index in still_capped:
                    # Releasing the server would lift the caps of the other VMs it holds (a release, like the
                    # agent's revert, is per server): this VM alone goes back to TDP.
                    tdp = float(snapshot.gpu_tdp_w[c.server_index])
                    caps.append(replace(c, power_limit_w=tdp, issued_at_s=now,
                                        reason=f"{c.reason}; feedback: room again, limit back to TDP {tdp:.0f} W"))
                else:
                    lifted.append(c.server_index)
            updated = replace(plan, caps=tuple(in_force))
            for k, v in self._plans.items():
                if v is plan:
                    self._plans[k] = updated
        return caps, lifted

    def _emergencies(self, snapshot: Snapshot, emergencies: Sequence[Emergency], now: float
                     ) -> tuple[list[EmergencyPlan], list[int]]:
        """Plans for emergencies new this tick; the servers whose caps end with emergencies gone."""
        active = {e.event_id: e for e in emergencies}
        released: list[int] = []
        for eid in [k for k in self._plans if k not in active]:
            plan = self._plans.pop(eid)
            if not any(v is plan for v in self._plans.values()):
                released.extend(c.server_index for c in plan.caps)
        new = [e for eid, e in active.items() if eid not in self._plans]
        if not new:
            return [], released
        base = snapshot
        if self.nominal_budget_w is not None and self.nominal_budget_w.shape == snapshot.row_budget_w.shape:
            # Plans are relative to the nominal budget (the tick's snapshot already shows the reduced one).
            base = replace(snapshot, row_budget_w=self.nominal_budget_w)
        floor = self.k.reconfig_params.min_frequency_mhz or None
        out: list[EmergencyPlan] = []
        power = [e for e in new if e.kind == "power"]
        rows_hit = {e.domain_index for e in power if e.domain_kind == "row"}
        fracs = {e.budget_frac for e in power}
        if (self.k.merge_uniform_power_events and power and len(rows_hit) == len(snapshot.row_ids)
                and len(fracs) == 1):
            # Every row loses the same share at once (a UPS lost): one cluster-wide plan, not R conflicting ones.
            e0 = power[0]
            merged = replace(e0, event_id=f"{e0.event_id}+{len(power) - 1}", domain_kind="cluster", domain_index=0)
            plan = plan_emergency(base, self.catalogue, merged, now_s=now, min_frequency_mhz=floor)
            out.append(plan)
            for e in power:
                self._plans[e.event_id] = plan
            new = [e for e in new if e.kind != "power"]
        for e in new:
            plan = plan_emergency(base, self.catalogue, e, now_s=now, min_frequency_mhz=floor)
            self._plans[e.event_id] = plan
            out.append(plan)
        return out, released


def raises_power(change: ConfigChange, snap: Snapshot, catalogue: Catalogue) -> bool:
    """True when the target configuration draws more per-GPU power at the instance's load than the current one."""
    try:
        a = catalogue.option(change.from_config_id)
        b = catalogue.option(change.to_config_id)
    except KeyError:
        return True
    i = change.instance_index
    load = float(snap.instances.load_tokens_per_s[i]) if 0 <= i < len(snap.instances) else 0.0
    pf = float(snap.instances.prefill_frac[i]) if 0 <= i < len(snap.instances) else 0.5
    pa = a.gpu_power_w(pf * load, (1 - pf) * load)
    served = min(load, b.capacity_tokens_per_s_at_slo)
    pb = b.gpu_power_w(pf * served, (1 - pf) * served)
    return pb > pa + 1e-6 or b.frequency_cap_mhz > a.frequency_cap_mhz


# ---------------------------------------------------------------------- registry


def _tapas(name: str, knob_overrides: Mapping[str, Any] | None = None, *, perfect: bool = False
           ) -> Callable[..., Policy]:
    def factory(*, knobs: PolicyKnobs | None = None, **kwargs: Any) -> Policy:
        k = (knobs or PolicyKnobs())
        if knob_overrides:
            k = replace(k, **knob_overrides)
        return TapasPolicy(name=name, knobs=k, perfect_forecasts=perfect, **kwargs)

    factory.__doc__ = f"The {name!r} policy."
    factory.knobs_type = PolicyKnobs  # type: ignore[attr-defined]
    return factory


def _baseline(**kwargs: Any) -> Policy:
    kwargs.pop("knobs", None)
    return BaselinePolicy(**kwargs)


POLICIES: dict[str, Callable[..., Policy]] = {
    "baseline": _baseline,
    "tapas": _tapas("tapas"),
    "tapas-placement": _tapas("tapas-placement", {"routing": False, "reconfig": False, "emergencies": False}),
    "tapas-routing": _tapas("tapas-routing", {"placement": False, "reconfig": False, "emergencies": False}),
    "tapas-reconfig": _tapas("tapas-reconfig", {"placement": False, "routing": False}),
    "oracle": _tapas("oracle", perfect=True),
}
"""The one registry: name -> ``factory(*, catalogue, topology=None, seed=0, knobs=None) -> Policy``."""


def knobs_for(name: str, overrides: Mapping[str, Any] | None = None) -> PolicyKnobs:
    """The knobs policy ``name`` starts from (its factory's ``knobs_type``, default :class:`PolicyKnobs`), overridden.

    >>> knobs_for("tapas", {"smoothing_tau_s": 0}).smoothing_tau_s
    0.0
    """
    if name not in POLICIES:
        raise ConfigError(f"policy={name!r} unknown; choose from {', '.join(POLICIES)}")
    base: PolicyKnobs = getattr(POLICIES[name], "knobs_type", PolicyKnobs)()
    return base.with_overrides(overrides or {})


def make_policy(name: str, **kwargs: Any) -> Policy:
    """Instantiate a registered policy (kwargs: ``catalogue``, ``topology``, ``seed``, ``knobs``).

    >>> make_policy("nope", catalogue=None)
    Traceback (most recent call last):
    ...
    contracts.errors.ConfigError: policy='nope' unknown; choose from baseline, tapas, tapas-placement, tapas-routing, tapas-reconfig, oracle
    """
    if name not in POLICIES:
        raise ConfigError(f"policy={name!r} unknown; choose from {', '.join(POLICIES)}")
    return POLICIES[name](**kwargs)
