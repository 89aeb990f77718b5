"""What the decision core sees and what it decides: the ``Snapshot``, decision records and the ``Policy`` protocol.

A ``Snapshot`` is a struct-of-arrays over servers (NumPy arrays indexed by server
position), rows (power domains), cooling zones, SaaS instances and IaaS VMs, plus the
time ``now_s`` and the age of the forecasts behind it. The live service builds one
from forecast and state messages; the simulator builds one from its state every tick.
Both hand it to the same pure functions (``placement``, ``routing``, ``reconfigure``,
``emergency``), which never read the clock.

Conventions:
    * temperatures are the hottest GPU of a server, in °C;
    * ``*_hi_*`` values are upper-quantile forecasts at the decision horizon;
    * ``thermal_resistance_c_per_w`` maps the per-GPU power of the hottest GPU to its
      steady-state rise over inlet (temp ≈ inlet + R × gpu_power, DESIGN.md §5);
    * server power includes the idle/base power; row power is the sum of its servers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

VmKind = Literal["iaas", "saas"]


def _empty_f() -> FloatArray:
    return np.zeros(0, dtype=np.float64)


def _empty_i() -> IntArray:
    return np.zeros(0, dtype=np.int64)


def _empty_b() -> BoolArray:
    return np.zeros(0, dtype=np.bool_)


@dataclass(frozen=True)
class SaasInstances:
    """SaaS inference instances (struct-of-arrays, one entry per instance).

    Load and capacity are in tokens/s (prompt + generated tokens) of the instance as a whole;
    ``prefill_frac`` is the share of those tokens that are prompt tokens (prefill).
    """

    instance_ids: tuple[str, ...] = ()
    endpoint_ids: tuple[str, ...] = ()
    server_index: IntArray = field(default_factory=_empty_i)
    num_gpus: IntArray = field(default_factory=_empty_i)
    config_ids: tuple[str, ...] = ()
    load_tokens_per_s: FloatArray = field(default_factory=_empty_f)
    prefill_frac: FloatArray = field(default_factory=_empty_f)
    capacity_tokens_per_s_at_slo: FloatArray = field(default_factory=_empty_f)
    gpu_power_w: FloatArray = field(default_factory=_empty_f)
    """Current per-GPU power of the instance's GPUs."""
    draining: BoolArray = field(default_factory=_empty_b)
    """True while the instance is being drained (reloading weights or held out of routing)."""
    config_since_s: FloatArray = field(default_factory=_empty_f)
    """Time the current configuration was applied (for hysteresis and staggering)."""
    busy_until_s: FloatArray = field(default_factory=_empty_f)
    """Until when a slow (reloading) switch keeps the instance out of service; <= now when serving."""

    def __len__(self) -> int:
        return len(self.instance_ids)

    def of_endpoint(self, endpoint_id: str) -> IntArray:
        """Positions of the instances serving ``endpoint_id``."""
        return np.asarray([i for i, e in enumerate(self.endpoint_ids) if e == endpoint_id], dtype=np.int64)


@dataclass(frozen=True)
class IaasVms:
    """Opaque customer GPU VMs (struct-of-arrays). The provider may only place them, or cap them in an emergency."""

    vm_ids: tuple[str, ...] = ()
    server_index: IntArray = field(default_factory=_empty_i)
    num_gpus: IntArray = field(default_factory=_empty_i)
    gpu_power_w: FloatArray = field(default_factory=_empty_f)
    """Current per-GPU power."""
    expected_gpu_power_w: FloatArray = field(default_factory=_empty_f)
    """Expected (uncapped, high-quantile) per-GPU power from the VM's class history, TDP when unknown."""
    power_limit_w: FloatArray = field(default_factory=_empty_f)
    """Per-GPU power limit in force (NaN when uncapped)."""

    def __len__(self) -> int:
        return len(self.vm_ids)


@dataclass(frozen=True)
class Snapshot:
    """Everything one decision needs, at time ``now_s`` (seconds on the caller's clock)."""

    now_s: float
    forecast_age_s: float
    """Seconds since the newest forecast behind the ``*_hi_*`` arrays; large means stale."""
    horizon_s: float
    """Horizon the ``*_hi_*`` arrays forecast."""

    # --- servers (length S)
    server_ids: tuple[str, ...]
    server_row: IntArray
    server_rack: IntArray
    server_zone: IntArray
    server_pdu: IntArray
    num_gpus: IntArray
    free_gpus: IntArray
    gpu_tdp_w: FloatArray
    gpu_idle_power_w: FloatArray
    slowdown_temp_c: FloatArray
    gpu_temp_c: FloatArray
    """Current hottest-GPU temperature."""
    gpu_temp_hi_c: FloatArray
    """Upper-quantile forecast of the hottest-GPU temperature at the horizon."""
    inlet_c: FloatArray
    inlet_hi_c: FloatArray
    server_power_w: FloatArray
    server_power_hi_w: FloatArray
    server_idle_power_w: FloatArray
    """Server power with every GPU idle (base + idle GPUs)."""
    thermal_resistance_c_per_w: FloatArray

    # --- rows = power domains (length R)
    row_ids: tuple[str, ...]
    row_budget_w: FloatArray
    row_power_w: FloatArray
    row_power_hi_w: FloatArray

    # --- cooling zones (length Z)
    zone_ids: tuple[str, ...]
    zone_capacity_w: FloatArray
    zone_heat_w: FloatArray
    zone_heat_hi_w: FloatArray

    # --- tenants
    instances: SaasInstances = field(default_factory=SaasInstances)
    vms: IaasVms = field(default_factory=IaasVms)

    # --- endpoints (length E)
    endpoint_ids: tuple[str, ...] = ()
    endpoint_demand_tokens_per_s: FloatArray = field(default_factory=_empty_f)
    endpoint_demand_hi_tokens_per_s: FloatArray = field(default_factory=_empty_f)

    gpu_max_freq_mhz: FloatArray = field(default_factory=_empty_f)
    """Per-server maximum GPU clock (empty when unknown)."""
    memory_temp_c: FloatArray = field(default_factory=_empty_f)
    """Per-server hottest HBM temperature, °C (empty when no collector reports it; NaN for a server without)."""
    memory_max_temp_c: FloatArray = field(default_factory=_empty_f)
    """Per-server HBM maximum operating temperature, °C: the HBM's own threshold (empty/NaN when unknown)."""

    @property
    def num_servers(self) -> int:
        """Number of servers."""
        return len(self.server_ids)

    @property
    def row_headroom_hi_w(self) -> FloatArray:
        """Row budget minus forecast-high row power."""
        return self.row_budget_w - self.row_power_hi_w

    @property
    def thermal_headroom_hi_c(self) -> FloatArray:
        """Slowdown temperature minus forecast-high hottest-GPU temperature, per server."""
        return self.slowdown_temp_c - self.gpu_temp_hi_c

    def endpoint_demand_hi(self, endpoint_id: str) -> float:
        """Forecast-high demand of one endpoint in tokens/s (0 when unknown)."""
        try:
            return float(self.endpoint_demand_hi_tokens_per_s[self.endpoint_ids.index(endpoint_id)])
        except (ValueError, IndexError):
            return 0.0


# ---------------------------------------------------------------- placement


@dataclass(frozen=True)
class PlacementRequest:
    """A new GPU VM to place (IaaS opaque VM or SaaS inference instance)."""

    request_id: str
    vm_kind: VmKind
    num_gpus: int
    gpu_power_w: float | None = None
    """Expected per-GPU power (history of the VM class); None means the server's GPU TDP."""
    vm_class: str | None = None
    expected_lifetime_s: float = 3600.0
    endpoint_id: str | None = None
    max_candidates: int | None = None
    """How many ranked servers to return; None: the policy's margin (10). The scheduler extender's filter asks
    for every server, since it must keep all that fit."""


@dataclass(frozen=True)
class PlacementMargins:
    """Safety margins: IaaS VMs are opaque and cannot be protected later, so they get the larger ones."""

    iaas_thermal_margin_c: float = 6.0
    saas_thermal_margin_c: float = 2.0
    iaas_power_margin_frac: float = 0.08
    saas_power_margin_frac: float = 0.02
    iaas_zone_margin_frac: float = 0.08
    saas_zone_margin_frac: float = 0.02
    max_candidates: int = 10
    iaas_emergency_budget_frac: float | None = 0.75
    """IaaS VMs are also ranked by the room their row would keep with its budget cut to this share (a lost UPS),
    after SaaS sheds ``saas_shed_frac`` of its dynamic power: a VM placed there is not capped in that emergency.
    None ranks by thermal, row and zone headroom only."""
    saas_shed_frac: float = 0.6
    """Share of SaaS dynamic GPU power an emergency plan's fast knobs can shed (clock caps to 50-60 %: 1 − f²)."""


@dataclass(frozen=True)
class PlacementCandidate:
    """One ranked server for a placement request, with the headrooms predicted after placement."""

    server_index: int
    server_id: str
    rank: int
    score: float
    predicted_peak_gpu_temp_c: float
    thermal_headroom_c: float
    row_power_headroom_w: float
    zone_heat_headroom_w: float
    free_gpus: int


@dataclass(frozen=True)
class PlacementDecision:
    """Ranked placement hints; ``feasible`` is False when no server keeps every limit."""

    request_id: str
    feasible: bool
    candidates: tuple[PlacementCandidate, ...]
    reason: str


# ---------------------------------------------------------------- routing


@dataclass(frozen=True)
class RoutingParams:
    """Routing knobs: headroom exponent, smoothing, floor and drain threshold."""

    gamma: float = 1.0
    smoothing: float = 0.5
    """Weight of the new value in the exponential smoothing (1 = no smoothing)."""
    floor_frac: float = 0.02
    """Minimum weight of an active instance, as a fraction of a uniform share."""
    drain_thermal_headroom_c: float = 1.0
    drain_power_headroom_frac: float = 0.0
    thermal_scale_c: float = 15.0
    """Thermal headroom (°C) counted as fully cool."""
    power_scale_frac: float = 0.15
    """Row power headroom (fraction of budget) counted as fully safe."""
    long_prompt_coolest_frac: float = 0.75
    """Share of the coolest instances that take prefill-heavy requests."""
    valid_for_s: float = 2.0
    spare_floor_frac: float = 0.25
    """Weights follow spare capacity (capacity − load) plus this share of capacity, so busy instances get less."""


@dataclass(frozen=True)
class RoutingDecision:
    """Routing weights for one endpoint: arrays aligned with ``instance_ids``; weights sum to 1."""

    endpoint_id: str
    instance_ids: tuple[str, ...]
    instance_index: IntArray
    weights: FloatArray
    long_prompt_weights: FloatArray
    draining: BoolArray
    thermal_headroom_c: FloatArray
    power_headroom_w: FloatArray
    capacity_tokens_per_s: FloatArray
    reason: str
    stale_inputs: bool = False
    valid_until_s: float = 0.0


# ---------------------------------------------------------------- reconfiguration


@dataclass(frozen=True)
class ReconfigParams:
    """Weights of the reconfiguration objective and its timing rules."""

    quality_weight: float = 10.0
    performance_weight: float = 1.0
    switch_weight: float = 0.02
    thermal_margin_c: float = 3.0
    power_margin_frac: float = 0.03
    slo_headroom_frac: float = 0.10
    """Capacity kept above forecast-high demand."""
    fast_interval_s: float = 5.0
    slow_interval_s: float = 120.0
    hysteresis_s: float = 60.0
    """A configuration stays at least this long before relaxing back to a higher-power one."""
    revert_margin_c: float = 4.0
    """Extra thermal headroom needed before relaxing back to a hotter configuration."""
    max_slow_frac: float = 0.125
    """At most this share of an endpoint's instances reload weights at once."""
    stale_after_s: float = 30.0
    """Forecasts older than this count as stale: no new aggressive (hotter) configuration."""
    command_ttl_s: float = 300.0
    raise_for_load: bool = True
    """Allow hotter options to cover demand (False in emergency plans: SaaS capacity gives before IaaS power)."""
    power_weight: float = 0.05
    """Cost per (per-GPU power / TDP): breaks ties toward cooler options; raised while IaaS VMs are capped."""
    speed_weight: float = 0.5
    """Cost per unit of frequency-cap shortfall against the endpoint default (per-request latency proxy)."""
    layout_weight: float = 1.5
    """Cost of running a weight layout other than the endpoint's home layout (pulls emergency layouts back). An
    instance moves home only when this exceeds the reload's cost, ``switch_weight × (switch_cost_s + 1)``."""
    home_layout: Literal["default", "efficient"] = "default"
    """Weight layout instances are pulled toward: the endpoint default, or ``Catalogue.efficient`` (the layout
    that serves the default's capacity and quality on the least power), reached by staggered slow switches."""
    max_quality_drop: float = 1.0
    """Options more than this below the current quality score are not considered (guards model-variant swaps)."""
    min_frequency_mhz: float = 0.0
    """Operator's safety floor for any frequency cap: options below it are never proposed (0 = no floor)."""


@dataclass(frozen=True)
class ConfigChange:
    """Switch one SaaS instance to another catalogue configuration."""

    instance_id: str
    instance_index: int
    server_index: int
    server_id: str
    from_config_id: str
    to_config_id: str
    slow: bool
    """True when the switch reloads weights (tensor parallelism, precision or model variant changes)."""
    trigger: str
    """thermal, power, load, emergency or relax."""
    headroom: float
    """The headroom (°C for thermal, W for power, tokens/s for load) that triggered it."""
    reason: str
    issued_at_s: float
    expires_at_s: float


# ---------------------------------------------------------------- emergencies

EmergencyKind = Literal["power", "cooling"]
DomainKind = Literal["row", "zone", "cluster"]


@dataclass(frozen=True)
class Emergency:
    """A power budget cut or cooling failure for one domain."""

    event_id: str
    kind: EmergencyKind
    domain_kind: DomainKind
    domain_index: int
    """Row index (power), zone index (cooling); ignored for cluster."""
    started_at_s: float
    ends_at_s: float | None = None
    budget_frac: float | None = None
    """Available fraction of the row budget during a power emergency."""
    supply_temp_rise_c: float | None = None
    """Supply/inlet temperature rise during a cooling failure."""
    deadline_s: float = 10.0


@dataclass(frozen=True)
class GpuCap:
    """A per-GPU power limit and/or frequency cap on a server's IaaS VMs (or every GPU of the server)."""

    server_index: int
    server_id: str
    vm_id: str | None
    power_limit_w: float | None
    frequency_cap_mhz: float | None
    reason: str
    issued_at_s: float
    expires_at_s: float


@dataclass(frozen=True)
class RelaxedPromise:
    """A promise an emergency plan gave up: to whom, which, until when and at what cost."""

    subject: str
    promise: str
    until_s: float
    quality_cost: float
    performance_cost_frac: float


@dataclass(frozen=True)
class EmergencyPlan:
    """How a domain meets an emergency: SaaS reconfigurations first, IaaS caps only if needed."""

    emergency: Emergency
    changes: tuple[ConfigChange, ...]
    caps: tuple[GpuCap, ...]
    predicted_power_w: float
    budget_w: float
    meets_budget: bool
    relaxed: tuple[RelaxedPromise, ...]
    planned_at_s: float
    effective_by_s: float
    reason: str


# ---------------------------------------------------------------- policy protocol


@dataclass(frozen=True)
class TickActions:
    """What a policy decides on one simulator tick (or one live controller tick)."""

    routing: Mapping[str, RoutingDecision] = field(default_factory=dict)
    changes: tuple[ConfigChange, ...] = ()
    caps: tuple[GpuCap, ...] = ()
    released_caps: tuple[int, ...] = ()
    """Server indices whose caps the policy lifts."""
    plans: tuple[EmergencyPlan, ...] = ()


class Policy(Protocol):
    """What the simulator calls: placement per request, and a decision tick per simulated tick."""

    name: str

    def place(self, snapshot: Snapshot, request: PlacementRequest) -> PlacementDecision:
        """Rank servers for one new VM."""
        ...

    def tick(self, snapshot: Snapshot, emergencies: Sequence[Emergency]) -> TickActions:
        """Decide routing, reconfigurations and caps; ``emergencies`` are those active now."""
        ...
