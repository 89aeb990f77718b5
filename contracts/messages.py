"""Every message TAPAS puts on the wire, as versioned pydantic models.

These classes are the public API for downstream schedulers: their JSON Schemas are
exported to ``docs/contracts/`` by ``tapas contracts export`` and a test fails when
the two drift. Rules shared by every message:

* ``schema_version`` is ``"MAJOR.MINOR"``. A consumer accepts any minor version of
  its own major (unknown fields from a newer minor are ignored) and rejects a newer
  major with an error naming ``schema_version``.
* Units live in field names (``_c`` °C, ``_w`` W, ``_s`` seconds, ``_mhz``, ``_pct``
  0-100, ``_frac`` 0-1). Values outside a physically possible range are rejected
  with the field's name and the likely unit mistake, so a Kelvin or milliwatt value
  never passes as good.
* Instants end in ``_at`` and must carry a timezone (UTC is used when producing) and
  be representable in UTC (``9999-12-31T23:59:59-23:59`` is refused, not a crash
  later). Whether an instant is plausible *now* is the receiver's judgement (the
  stream worker's time window), not the contract's.
* Every list and string has a bound (``max_length``), so one message cannot make a
  consumer hold or loop over an unbounded amount of data.
* Telemetry readings that a collector found to be sentinel or impossible values are
  carried as ``null`` and listed in ``invalid_fields``: flagged, never dropped.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntFlag
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

import annotated_types
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from contracts.errors import ContractError

SCHEMA_MAJOR = 1
SCHEMA_MINOR = 1
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}"



def _in_utc(value: datetime) -> datetime:
    """The instant in UTC; an offset that pushes it past year 9999 (or before year 1) is a contract error."""
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("instant is outside the range representable in UTC (years 1-9999)") from None


Timestamp = Annotated[AwareDatetime, AfterValidator(_in_utc)]
#: Bounds shared by ids and free text in every contract.
Id = Annotated[str, Field(max_length=128)]
MAX_LIST = 1024
#: What a GPU power reading is (see ``GpuReading.power_kind``).
PowerKind = Literal["instant", "average", "unknown"]


class ClockEventReason(IntFlag):
    """NVML clock-event (throttle) reason bits, as ``nvmlClocksEventReasons``."""

    GPU_IDLE = 0x1
    APPLICATIONS_CLOCKS_SETTING = 0x2
    SW_POWER_CAP = 0x4
    HW_SLOWDOWN = 0x8
    SYNC_BOOST = 0x10
    SW_THERMAL_SLOWDOWN = 0x20
    HW_THERMAL_SLOWDOWN = 0x40
    HW_POWER_BRAKE_SLOWDOWN = 0x80
    DISPLAY_CLOCK_SETTING = 0x100


THERMAL_REASONS = ClockEventReason.SW_THERMAL_SLOWDOWN | ClockEventReason.HW_THERMAL_SLOWDOWN
POWER_REASONS = ClockEventReason.SW_POWER_CAP | ClockEventReason.HW_POWER_BRAKE_SLOWDOWN


@dataclass(frozen=True)
class PhysicalRange(annotated_types.GroupedMetadata):
    """The physically possible range of a reading and the unit mistake a value outside it suggests.

    As grouped metadata it expands to ``ge``/``le`` constraints that pydantic's compiled
    validator enforces (they also appear in the exported JSON Schema), which is what
    keeps decoding fast enough for the stream workers; the record itself stays in the
    field's metadata so that :func:`decode` can put the hint into the error message.
    """

    lo: float
    hi: float
    hint: str

    def __iter__(self) -> Iterator[object]:
        yield annotated_types.Ge(self.lo)
        yield annotated_types.Le(self.hi)


# Aliases rather than calls in annotations, so type checkers see ``float | None``.
Celsius = Annotated[float | None, PhysicalRange(-40.0, 150.0, "°C expected; Kelvin or °F?")]
GpuWatts = Annotated[float | None, PhysicalRange(0.0, 2000.0, "W expected; milliwatts?")]
SmClockMhz = Annotated[float | None, PhysicalRange(0.0, 5000.0, "MHz expected")]
MemClockMhz = Annotated[float | None, PhysicalRange(0.0, 20000.0, "MHz expected")]
Percent = Annotated[float | None, PhysicalRange(0.0, 100.0, "percent 0-100 expected")]
Mebibytes = Annotated[float | None, PhysicalRange(0.0, 1.0e7, "MiB expected")]
Millijoules = Annotated[float | None, PhysicalRange(0.0, 1.0e19, "mJ expected")]
Microseconds = Annotated[float | None, PhysicalRange(0.0, 1.0e19, "µs expected; nanoseconds?")]
SlowdownCelsius = Annotated[float | None, PhysicalRange(40.0, 150.0, "°C expected")]
InletCelsius = Annotated[float | None, PhysicalRange(-20.0, 80.0, "°C expected; Kelvin or °F?")]
ChassisWatts = Annotated[float | None, PhysicalRange(0.0, 100_000.0, "W expected")]
PhaseAmps = Annotated[float | None, PhysicalRange(0.0, 1000.0, "A expected")]
PhaseWatts = Annotated[float | None, PhysicalRange(0.0, 1_000_000.0, "W expected")]
PduWatts = Annotated[float | None, PhysicalRange(0.0, 5_000_000.0, "W expected")]
PduAmps = Annotated[float | None, PhysicalRange(0.0, 10_000.0, "A expected")]


class Contract(BaseModel):
    """Base of every wire message: versioned, immutable, unknown fields ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, allow_inf_nan=False)

    #: Name of the message type, stable across versions (also the schema file name).
    message_name: ClassVar[str] = "contract"

    schema_version: str = Field(
        default=SCHEMA_VERSION,
        description="'MAJOR.MINOR'; consumers reject a newer major version.",
        pattern=r"^\d+\.\d+$",
    )

    @field_validator("schema_version")
    @classmethod
    def _supported_major(cls, value: str) -> str:
        major = int(value.split(".", 1)[0])
        if major > SCHEMA_MAJOR:
            raise ValueError(
                f"major version {major} is newer than this consumer supports ({SCHEMA_MAJOR}); upgrade tapas"
            )
        if major < 1:
            raise ValueError(f"major version {major} is not a released schema")
        return value

    def to_bytes(self) -> bytes:
        """Serialise as UTF-8 JSON, the wire format on every topic."""
        return self.model_dump_json().encode()


# --------------------------------------------------------------------------- telemetry


class GpuReading(BaseModel):
    """One GPU's state at a sample instant (DCGM field names where one exists)."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    gpu_index: int = Field(ge=0, le=63, description="Index of the GPU in its server (NVML index).")
    uuid: str | None = Field(default=None, max_length=128, description="NVML GPU UUID, when known.")
    gpu_temp_c: Celsius = Field(description="GPU die temperature, °C (DCGM_FI_DEV_GPU_TEMP).")
    memory_temp_c: Celsius = Field(default=None, description="HBM temperature, °C (DCGM_FI_DEV_MEMORY_TEMP).")
    power_usage_w: GpuWatts = Field(description="Power draw, W (DCGM_FI_DEV_POWER_USAGE); ``power_kind`` says which.")
    power_kind: PowerKind = Field(
        default="unknown", description="What power_usage_w is: 'instant' (NVML_FI_DEV_POWER_INSTANT, "
        "DCGM_FI_DEV_POWER_USAGE_INSTANT), 'average' (nvmlDeviceGetPowerUsage: a 1 s mean on Ampere and newer) "
        "or 'unknown' (simulator, replay, older producers). Since 1.1.")
    power_limit_w: GpuWatts = Field(default=None, description="Enforced power limit, W (DCGM_FI_DEV_ENFORCED_POWER_LIMIT).")
    sm_clock_mhz: SmClockMhz = Field(default=None, description="SM clock, MHz (DCGM_FI_DEV_SM_CLOCK).")
    mem_clock_mhz: MemClockMhz = Field(default=None, description="Memory clock, MHz (DCGM_FI_DEV_MEM_CLOCK).")
    gpu_util_pct: Percent = Field(default=None, description="GPU utilisation 0-100 % (DCGM_FI_DEV_GPU_UTIL).")
    fb_used_mib: Mebibytes = Field(default=None, description="Frame buffer used, MiB (DCGM_FI_DEV_FB_USED).")
    total_energy_mj: Millijoules = Field(
        default=None, description="Energy since driver load, mJ (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION)."
    )
    clocks_event_reasons: int = Field(
        default=0, ge=0, description="NVML clock-event reason bitmask (DCGM_FI_DEV_CLOCK_THROTTLE_REASONS)."
    )
    slowdown_temp_c: SlowdownCelsius = Field(
        default=None, description="The GPU's own slowdown threshold, °C (NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)."
    )
    memory_max_temp_c: SlowdownCelsius = Field(
        default=None, description="The HBM's own maximum operating temperature, °C (NVML_TEMPERATURE_THRESHOLD_MEM_MAX, "
        "DCGM_FI_DEV_MEM_MAX_OP_TEMP); the headroom of memory_temp_c is taken against it. Since 1.1.")
    power_violation_us: Microseconds = Field(
        default=None, description="Time throttled by power constraints since driver load, µs; a counter "
        "(DCGM_FI_DEV_POWER_VIOLATION, nvmlDeviceGetViolationStatus(NVML_PERF_POLICY_POWER)). Since 1.1.")
    thermal_violation_us: Microseconds = Field(
        default=None, description="Time throttled by thermal constraints since driver load, µs; a counter "
        "(DCGM_FI_DEV_THERMAL_VIOLATION, nvmlDeviceGetViolationStatus(NVML_PERF_POLICY_THERMAL)). Since 1.1.")
    invalid_fields: list[Id] = Field(
        default_factory=list, max_length=64,
        description="Fields whose raw reading was a sentinel or impossible; their value is null."
    )

    @property
    def thermal_throttled(self) -> bool:
        """True when the GPU reports a thermal slowdown reason."""
        return bool(self.clocks_event_reasons & THERMAL_REASONS)

    @property
    def power_throttled(self) -> bool:
        """True when the GPU reports a power-cap or power-brake reason."""
        return bool(self.clocks_event_reasons & POWER_REASONS)


class WorkloadContext(BaseModel):
    """What the inference server on a host was doing, when the serving layer reports it."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    prefill_tokens_per_s: float = Field(default=0.0, ge=0.0, le=1e8, description="Prompt tokens processed per second.")
    decode_tokens_per_s: float = Field(default=0.0, ge=0.0, le=1e8, description="Output tokens generated per second.")
    batch_size: float = Field(default=0.0, ge=0.0, le=1e5, description="Mean running batch size over the interval.")
    config_id: str | None = Field(default=None, max_length=128,
                                  description="Configuration name from the catalogue (model-tp-precision-freq).")
    frequency_cap_mhz: float | None = Field(default=None, ge=0, le=5000, description="SM clock cap in force, MHz.")
    instance_ids: list[Id] = Field(default_factory=list, max_length=256,
                                   description="SaaS instances / VMs running on this server (at most 256).")


class GpuSample(Contract):
    """All GPUs of one server at one instant. Key: ``server_id``."""

    message_name: ClassVar[str] = "gpu_sample"
    kind: Literal["gpu_sample"] = "gpu_sample"
    server_id: str = Field(min_length=1, max_length=128, description="Stable server identifier (also the Kafka key).")
    sampled_at: Timestamp = Field(description="When the readings were taken (UTC).")
    gpus: list[GpuReading] = Field(min_length=1, max_length=64, description="One entry per GPU.")
    workload: WorkloadContext | None = Field(default=None, description="Serving-layer context, when available.")
    source: str = Field(default="unknown", max_length=32, description="Collector that produced it (nvml, sim, replay).")

    @property
    def hottest_gpu_temp_c(self) -> float | None:
        temps = [g.gpu_temp_c for g in self.gpus if g.gpu_temp_c is not None]
        return max(temps) if temps else None

    @property
    def gpu_power_w(self) -> float | None:
        powers = [g.power_usage_w for g in self.gpus if g.power_usage_w is not None]
        return sum(powers) if powers else None


class InletSample(Contract):
    """A server's intake (inlet) air temperature and, when the BMC reports it, chassis power.

    Key: ``server_id``.
    """

    message_name: ClassVar[str] = "inlet_sample"
    kind: Literal["inlet_sample"] = "inlet_sample"
    server_id: str = Field(min_length=1, max_length=128)
    sampled_at: Timestamp
    inlet_temp_c: InletCelsius = Field(description="Intake air temperature, °C (Redfish PhysicalContext 'Intake').")
    chassis_power_w: ChassisWatts = Field(default=None, description="Chassis input power, W, when the BMC reports it.")
    sensor_id: str | None = Field(default=None, max_length=256, description="Where the reading came from (Redfish URI).")
    invalid_fields: list[Id] = Field(default_factory=list, max_length=64)
    source: str = Field(default="unknown", max_length=32)


class PduPhaseReading(BaseModel):
    """One phase, bank or outlet of a PDU."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    name: str = Field(max_length=64)
    current_a: PhaseAmps = Field(default=None)
    power_w: PhaseWatts = Field(default=None)


class PduPowerSample(Contract):
    """A rack PDU's (or row feed's) input power. Key: ``pdu_id``."""

    message_name: ClassVar[str] = "pdu_power_sample"
    kind: Literal["pdu_power_sample"] = "pdu_power_sample"
    pdu_id: str = Field(min_length=1, max_length=128)
    sampled_at: Timestamp
    power_w: PduWatts = Field(description="Total input power, W (APC rPDU2 reports hundredths of kW).")
    current_a: PduAmps = Field(default=None, description="Total input current, A.")
    energy_kwh: float | None = Field(default=None, ge=0.0, description="Energy meter, kWh, when exposed.")
    phases: list[PduPhaseReading] = Field(default_factory=list, max_length=256)
    server_ids: list[Id] = Field(default_factory=list, max_length=MAX_LIST,
                                 description="Servers fed by this PDU, when known.")
    invalid_fields: list[Id] = Field(default_factory=list, max_length=64)
    source: str = Field(default="unknown", max_length=32)


# --------------------------------------------------------------------------- forecasts


#: Physical bound of one server's power in a forecast, W (a 64-GPU chassis at 2 kW each is 128 kW).
SERVER_MAX_W = 1.0e6
#: Physical bound of one domain's power (a cooling zone), W.
DOMAIN_MAX_W = 1.0e9


class HorizonForecast(BaseModel):
    """A point forecast with its central ``interval_level`` interval at one horizon."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    horizon_s: float = Field(ge=0, le=86_400)
    gpu_temp_c: float = Field(ge=-273.15, le=1000, description="Predicted hottest-GPU temperature, °C.")
    gpu_temp_lo_c: float = Field(ge=-273.15, le=1000)
    gpu_temp_hi_c: float = Field(ge=-273.15, le=1000)
    power_w: float = Field(ge=0, le=SERVER_MAX_W, description="Predicted server power, W.")
    power_lo_w: float = Field(ge=0, le=SERVER_MAX_W)
    power_hi_w: float = Field(ge=0, le=SERVER_MAX_W)

    @model_validator(mode="after")
    def _ordered(self) -> HorizonForecast:
        if not self.gpu_temp_lo_c <= self.gpu_temp_c <= self.gpu_temp_hi_c:
            raise ValueError("gpu_temp_lo_c <= gpu_temp_c <= gpu_temp_hi_c must hold")
        if not self.power_lo_w <= self.power_w <= self.power_hi_w:
            raise ValueError("power_lo_w <= power_w <= power_hi_w must hold")
        return self


class ServerForecast(Contract):
    """Per-server forecast published every tick by the stream workers. Key: ``server_id``.

    ``thermal_headroom_c`` is the slowdown temperature minus the upper bound of the
    hottest-GPU forecast at the shortest horizon; ``power_headroom_w`` is the smallest
    of the server's, its PDU's share and its row's share of remaining budget. Both can
    be negative: that means a crossing is predicted.
    """

    message_name: ClassVar[str] = "server_forecast"
    kind: Literal["server_forecast"] = "server_forecast"
    server_id: str = Field(min_length=1, max_length=128)
    issued_at: Timestamp
    based_on_sample_at: Timestamp = Field(description="Timestamp of the newest sample the forecast used.")
    model_version: str = Field(max_length=64)
    interval_level: float = Field(default=0.9, gt=0, lt=1)
    gpu_temp_c: float = Field(ge=-273.15, le=1000, description="Latest observed hottest-GPU temperature, °C.")
    power_w: float = Field(ge=0, le=SERVER_MAX_W, description="Latest observed server power, W.")
    inlet_temp_c: float | None = Field(default=None, ge=-273.15, le=1000)
    slowdown_temp_c: float = Field(ge=-273.15, le=1000, description="Throttle threshold used for headroom, °C.")
    thermal_headroom_c: float = Field(ge=-1300, le=1300)
    power_headroom_w: float = Field(ge=-DOMAIN_MAX_W, le=DOMAIN_MAX_W)
    horizons: list[HorizonForecast] = Field(min_length=1, max_length=16)
    rack_id: str | None = Field(default=None, max_length=128)
    row_id: str | None = Field(default=None, max_length=128)
    pdu_id: str | None = Field(default=None, max_length=128)
    zone_id: str | None = Field(default=None, max_length=128)


class DomainForecast(Contract):
    """Power (and inlet) of an aggregate — rack, row, PDU or cooling zone. Key: ``domain_id``."""

    message_name: ClassVar[str] = "domain_forecast"
    kind: Literal["domain_forecast"] = "domain_forecast"
    domain_kind: Literal["rack", "row", "pdu", "zone"]
    domain_id: str = Field(min_length=1, max_length=128)
    issued_at: Timestamp
    num_servers: int = Field(ge=0, le=10_000_000)
    power_w: float = Field(ge=0, le=DOMAIN_MAX_W)
    power_limit_w: float | None = Field(default=None, ge=0, le=DOMAIN_MAX_W)
    max_inlet_temp_c: float | None = Field(default=None, ge=-273.15, le=1000)
    inlet_limit_c: float | None = Field(default=None, ge=-273.15, le=1000)
    horizons_s: list[Annotated[float, Field(ge=0, le=86_400)]] = Field(default_factory=list, max_length=16)
    power_forecast_w: list[Annotated[float, Field(ge=0, le=DOMAIN_MAX_W)]] = Field(default_factory=list,
                                                                                   max_length=16)
    power_forecast_hi_w: list[Annotated[float, Field(ge=0, le=DOMAIN_MAX_W)]] = Field(default_factory=list,
                                                                                      max_length=16)
    inlet_forecast_c: list[Annotated[float, Field(ge=-273.15, le=1000)]] = Field(
        default_factory=list, max_length=16,
        description="Zones: predicted max inlet temperature at each of horizons_s, °C (empty when not forecast).",
    )
    inlet_forecast_hi_c: list[Annotated[float, Field(ge=-273.15, le=1000)]] = Field(
        default_factory=list, max_length=16, description="Zones: upper bound of the inlet forecast at each of horizons_s, °C."
    )

    @model_validator(mode="after")
    def _aligned(self) -> DomainForecast:
        if not len(self.horizons_s) == len(self.power_forecast_w) == len(self.power_forecast_hi_w):
            raise ValueError(
                "horizons_s must have the same length as power_forecast_w and power_forecast_hi_w"
            )
        for name in ("inlet_forecast_c", "inlet_forecast_hi_c"):
            if getattr(self, name) and len(getattr(self, name)) != len(self.horizons_s):
                raise ValueError(f"{name} must be empty or have one value per horizons_s entry")
        return self


# --------------------------------------------------------------------------- control


class PlacementRequest(Contract):
    """A VM allocator asks where a new GPU VM should go. Key: ``request_id``."""

    message_name: ClassVar[str] = "placement_request"
    kind: Literal["placement_request"] = "placement_request"
    request_id: str = Field(min_length=1, max_length=128)
    requested_at: Timestamp
    vm_kind: Literal["iaas", "saas"]
    num_gpus: int = Field(ge=1, le=64)
    vm_class: str | None = Field(default=None, max_length=64, description="VM size or class, for power history.")
    expected_power_w_per_gpu: float | None = Field(default=None, ge=0, le=2000, description="Defaults to history or TDP.")
    expected_lifetime_s: float = Field(default=3600.0, gt=0)
    endpoint_id: str | None = Field(default=None, max_length=128, description="SaaS endpoint the instance will serve.")


class PlacementCandidate(BaseModel):
    """One ranked server for a placement, with the headrooms it was ranked by."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    server_id: str = Field(max_length=128)
    rank: int = Field(ge=1)
    score: float
    predicted_peak_gpu_temp_c: float
    thermal_headroom_c: float
    row_power_headroom_w: float
    zone_heat_headroom_w: float
    free_gpus: int = Field(ge=0)


class PlacementHint(Contract):
    """The controller's answer to a placement request. Key: ``request_id``."""

    message_name: ClassVar[str] = "placement_hint"
    kind: Literal["placement_hint"] = "placement_hint"
    request_id: str = Field(min_length=1, max_length=128)
    issued_at: Timestamp
    feasible: bool
    candidates: list[PlacementCandidate] = Field(default_factory=list, max_length=1000)
    reason: str = Field(max_length=2000)
    advisory: bool = True


class InstanceWeight(BaseModel):
    """Routing weight of one SaaS instance."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    instance_id: str = Field(max_length=128)
    server_id: str | None = Field(default=None, max_length=128)
    weight: float = Field(ge=0.0, le=1.0)
    state: Literal["active", "drain"] = "active"
    thermal_headroom_c: float | None = None
    power_headroom_w: float | None = None
    capacity_tokens_per_s: float | None = Field(default=None, ge=0)
    long_prompt_weight: float | None = Field(default=None, ge=0.0, le=1.0, description="Weight for prefill-heavy requests.")


class RoutingWeights(Contract):
    """Weights for one SaaS endpoint's instances; they sum to 1. Key: ``endpoint_id``."""

    message_name: ClassVar[str] = "routing_weights"
    kind: Literal["routing_weights"] = "routing_weights"
    endpoint_id: str = Field(min_length=1, max_length=128)
    issued_at: Timestamp
    valid_until: Timestamp
    weights: list[InstanceWeight] = Field(min_length=1, max_length=10_000)
    reason: str = Field(default="", max_length=2000)
    advisory: bool = True
    stale_inputs: bool = Field(default=False, description="True when computed from stale forecasts (safe fallback).")

    @model_validator(mode="after")
    def _sums_to_one(self) -> RoutingWeights:
        total = sum(w.weight for w in self.weights)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1 (got {total:.6f})")
        return self


ReconfigAction = Literal[
    "set_frequency_cap",
    "set_power_limit",
    "set_max_batch",
    "set_tensor_parallelism",
    "set_precision",
    "set_model_variant",
    "revert",
]


class ReconfigParams(BaseModel):
    """Parameters of a reconfiguration; only those the action needs are set."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    frequency_cap_mhz: float | None = Field(default=None, ge=100, le=5000)
    power_limit_w: float | None = Field(default=None, ge=50, le=2000)
    max_batch: int | None = Field(default=None, ge=1, le=4096)
    tensor_parallelism: int | None = Field(default=None, ge=1, le=64)
    precision: Literal["fp16", "bf16", "fp8", "int8", "int4"] | None = None
    model_variant: str | None = Field(default=None, max_length=64)
    config_id: str | None = Field(default=None, max_length=128)


class ReconfigCommand(Contract):
    """A reconfiguration order for one instance or server. Key: ``server_id``.

    Consumers apply a ``command_id`` at most once and ignore it after ``expires_at``
    (then revert to the previous setting). ``mode='advisory'`` commands are shown,
    never enforced.
    """

    message_name: ClassVar[str] = "reconfig_command"
    kind: Literal["reconfig_command"] = "reconfig_command"
    command_id: str = Field(min_length=8, max_length=64)
    issued_at: Timestamp
    expires_at: Timestamp
    server_id: str = Field(min_length=1, max_length=128)
    instance_id: str | None = Field(default=None, max_length=128)
    gpu_indices: list[Annotated[int, Field(ge=0, le=63)]] = Field(default_factory=list, max_length=64,
                                                               description="Empty means every GPU of the server.")
    action: ReconfigAction
    params: ReconfigParams = Field(default_factory=ReconfigParams)
    reason: str = Field(max_length=2000)
    trigger: str = Field(default="", max_length=64, description="What triggered it: thermal, power, load, emergency.")
    headroom: float | None = Field(default=None, description="The headroom that triggered it (°C or W per trigger).")
    mode: Literal["advisory", "enforce"] = "advisory"
    layer: Literal["host", "serving"] = Field(
        default="host", description="host: applied by `tapas agent` via NVML; serving: for the inference server."
    )
    key_id: str | None = Field(
        default=None, max_length=64,
        description="Which controller key signed it (controller.signing.key_id of the public key).")
    signature: str | None = Field(
        default=None, max_length=128,
        description="Base64 Ed25519 signature over the canonical encoding of every other field "
                    "(controller.signing.canonical_bytes); agents refuse enforce commands without a valid one.")

    @model_validator(mode="after")
    def _expiry_after_issue(self) -> ReconfigCommand:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self


class CommandStatus(Contract):
    """What a node agent did with a command. Key: ``server_id``."""

    message_name: ClassVar[str] = "command_status"
    kind: Literal["command_status"] = "command_status"
    command_id: str = Field(max_length=64)
    server_id: str = Field(max_length=128)
    reported_at: Timestamp
    status: Literal["applied", "dry_run", "refused", "expired", "reverted", "duplicate", "failed"]
    detail: str = Field(default="", max_length=2000)


EventKind = Literal[
    "cooling_failure",
    "power_emergency",
    "thermal_throttle",
    "power_throttle",
    "stale_forecasts",
    "forecasts_recovered",
    "safety_refused",
    "mode_changed",
    "emergency_plan",
    "emergency_cleared",
    "unknown_server",
    "command_not_applied",
]


class ControlEvent(Contract):
    """An emergency, an alert or a notable control-plane event. Key: ``domain_id``."""

    message_name: ClassVar[str] = "control_event"
    kind: Literal["control_event"] = "control_event"
    event_id: str = Field(min_length=1, max_length=64)
    event_kind: EventKind
    severity: Literal["info", "warning", "critical"]
    occurred_at: Timestamp
    domain_kind: Literal["server", "rack", "row", "pdu", "zone", "cluster"] = "cluster"
    domain_id: str = Field(default="cluster", max_length=128)
    ends_at: Timestamp | None = None
    budget_frac: float | None = Field(default=None, ge=0, le=2, description="Available fraction of the power budget.")
    supply_temp_rise_c: float | None = Field(default=None, ge=0, le=40)
    detail: str = Field(default="", max_length=4000)


class ControllerMode(Contract):
    """Switch the controller between advisory and enforce at run time. Key: ``"mode"``."""

    message_name: ClassVar[str] = "controller_mode"
    kind: Literal["controller_mode"] = "controller_mode"
    mode: Literal["advisory", "enforce"]
    changed_at: Timestamp
    changed_by: str = Field(default="operator", max_length=128)


class ModelAnnouncement(Contract):
    """A model version promoted in the registry; workers load it. Key: ``model_name``."""

    message_name: ClassVar[str] = "model_announcement"
    kind: Literal["model_announcement"] = "model_announcement"
    model_name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    promoted_at: Timestamp
    artifact_path: str = Field(max_length=1024, description="Path inside the operator-configured registry (never a URL).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Digest the worker verifies before loading.")
    metrics: dict[Id, float] = Field(default_factory=dict, max_length=64)


class DeadLetter(Contract):
    """A message a consumer refused, with why. Key: the original key."""

    message_name: ClassVar[str] = "dead_letter"
    kind: Literal["dead_letter"] = "dead_letter"
    source_topic: str = Field(max_length=256)
    partition: int | None = None
    offset: int | None = None
    received_at: Timestamp
    field: str = Field(default="", max_length=256,
                       description="Dotted path of the offending field ('' for the whole payload).")
    reason: str = Field(max_length=4000)
    raw_b64: str = Field(max_length=90_000, description="The original bytes, base64: at most the first 64 KiB "
                         "(see raw_truncated and raw_length).")
    raw_length: int | None = Field(default=None, ge=0, description="Size of the original record in bytes "
                                   "(since 1.1; absent from older dead letters).")
    raw_truncated: bool = Field(default=False, description="True when raw_b64 holds only the first 64 KiB "
                                "of the record (since 1.1).")


ALL_MESSAGES: tuple[type[Contract], ...] = (
    GpuSample,
    InletSample,
    PduPowerSample,
    ServerForecast,
    DomainForecast,
    PlacementRequest,
    PlacementHint,
    RoutingWeights,
    ReconfigCommand,
    CommandStatus,
    ControlEvent,
    ControllerMode,
    ModelAnnouncement,
    DeadLetter,
)

M = TypeVar("M", bound=Contract)

MESSAGES_BY_NAME: dict[str, type[Contract]] = {m.message_name: m for m in ALL_MESSAGES}


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``list[GpuReading]`` or ``WorkloadContext | None``."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _range_at(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> PhysicalRange | None:
    """The :class:`PhysicalRange` of the field an error location points at, walking nested models."""
    found: PhysicalRange | None = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        info = model.model_fields[part]
        found = next((m for m in info.metadata if isinstance(m, PhysicalRange)), None)
        model = _model_in(info.annotation)
    return found


_BOUND_ERRORS = ("less_than_equal", "greater_than_equal", "finite_number")


def _as_float(value: Any) -> Any:
    """A numeric input as the float pydantic compared (an int too large for a float is ±inf, as pydantic saw it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _first_error(exc: ValidationError, model: type[BaseModel] | None = None) -> ContractError:
    err = exc.errors(include_url=False)[0]
    parts = tuple(err.get("loc", ()))
    loc = ".".join(str(p) for p in parts)
    msg = str(err.get("msg", "invalid"))
    rng = _range_at(model, parts) if err.get("type") in _BOUND_ERRORS else None
    if rng is not None:
        name = str(parts[-1])
        value = _as_float(err.get("input"))
        if err.get("type") == "finite_number":
            msg = f"{name} must be finite (got {value}); flag it in invalid_fields instead"
        else:
            msg = f"{name}={value} outside [{rng.lo}, {rng.hi}] ({rng.hint})"
    elif err.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
        # Model-level checks report the containing object; their message starts with the field.
        at_model = not parts or isinstance(parts[-1], int)
        head = msg.split("=", 1)[0].split(" ", 1)[0]
        if at_model and head.isidentifier() and msg[len(head):].startswith(("=", " must")):
            loc = f"{loc}.{head}" if loc else head
    return ContractError(loc, msg)


def decode(model: type[M], raw: bytes | str) -> M:
    """Parse and validate one wire message, raising :class:`ContractError` naming the field.

    Examples:
        >>> from datetime import UTC, datetime
        >>> ok = InletSample(server_id="s1", sampled_at=datetime(2026, 1, 1, tzinfo=UTC), inlet_temp_c=22.5)
        >>> decode(InletSample, ok.to_bytes()).inlet_temp_c
        22.5
        >>> decode(InletSample, b'{"server_id": "s1", "sampled_at": "2026-01-01T00:00:00Z", "inlet_temp_c": 295.6}')
        Traceback (most recent call last):
        ...
        contracts.errors.ContractError: inlet_temp_c: inlet_temp_c=295.6 outside [-20.0, 80.0] (°C expected; Kelvin or °F?)
    """
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _first_error(exc, model) from None
    except (ValueError, TypeError) as exc:  # pragma: no cover - pydantic wraps nearly everything
        raise ContractError("", str(exc)) from None


def validate_obj(model: type[M], obj: Any) -> M:
    """Validate an already-parsed object (e.g. from a CSV row) against a contract."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise _first_error(exc, model) from None


def utc_iso(ts: datetime) -> str:
    """ISO-8601 in UTC with a trailing Z, the format used in docs and logs."""
    return ts.isoformat().replace("+00:00", "Z")
