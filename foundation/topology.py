"""The cluster's physical layout: rows → racks → servers, power domains and cooling zones.

One model serves the simulator, the live controller (limits and the rack/row/PDU/zone
of each server), the stream worker (aggregation keys) and the dashboard (floor map).

Two sources build it: an explicit inventory (``foundation.inventory``: named servers,
mixed SKUs, declared budgets; what a real fleet uses) and, for simulations and
tests, a cluster file: TOML with a parametric layout (rows of racks of identical servers)
so a 1,000-server floor is a dozen lines; ``default_topology`` builds the same shape
for any server count. Power budgets follow the provider's oversubscription practice:
``budget = nameplate / oversubscription`` per row (the row busway/PDU under the UPS).
Cooling zones are cold aisles served by one air handler each; a zone's capacity is the
heat it can remove at its design supply temperature.

Positions drive the inlet temperature (DESIGN.md §5): servers higher in a rack and
racks at the ends of a row see warmer air (recirculation over and around the rack).
The offsets are deterministic functions of position, documented in
``simulator/PARAMETERS.md``.

Examples:
    >>> topo = default_topology(40, oversubscription=1.5)
    >>> topo.num_servers, topo.num_gpus
    (40, 320)
    >>> round(topo.rows[0].budget_w / topo.rows[0].nameplate_w, 4)
    0.6667
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from contracts.errors import ConfigError

DEFAULT_CLUSTER_FILE = Path(__file__).resolve().parents[1] / "simulator" / "clusters" / "default.toml"


@dataclass(frozen=True)
class GpuSku:
    """A GPU model with the limits that matter for heat and power.

    ``slowdown_temp_c`` is the NVML slowdown threshold (NVML_TEMPERATURE_THRESHOLD_SLOWDOWN);
    live deployments read it per GPU, the simulator uses these typical values.
    """

    name: str
    tdp_w: float
    idle_w: float
    slowdown_temp_c: float
    max_freq_mhz: float
    min_freq_mhz: float
    #: Per-configuration performance scale relative to the A100 measurements (perf_model.csv).
    perf_scale: float = 1.0


SKUS: dict[str, GpuSku] = {
    "A100-SXM-80GB": GpuSku("A100-SXM-80GB", tdp_w=400.0, idle_w=60.0, slowdown_temp_c=87.0,
                            max_freq_mhz=1410.0, min_freq_mhz=210.0, perf_scale=1.0),
    "H100-SXM-80GB": GpuSku("H100-SXM-80GB", tdp_w=700.0, idle_w=80.0, slowdown_temp_c=87.0,
                            max_freq_mhz=1980.0, min_freq_mhz=345.0, perf_scale=2.0),
}


@dataclass(frozen=True)
class Server:
    """One 8-GPU server and where it sits."""

    server_id: str
    index: int
    row_id: str
    rack_id: str
    pdu_id: str
    zone_id: str
    sku: GpuSku
    num_gpus: int
    #: 0 = bottom slot of the rack.
    slot_in_rack: int
    rack_in_row: int
    base_power_w: float
    nameplate_w: float
    #: Deterministic inlet offset from position (height in the rack, end-of-row), °C.
    inlet_offset_c: float
    #: Share of the zone's recirculation this position receives (0..1; top of rack = 1).
    recirculation_weight: float
    #: Thermal resistance GPU die ← inlet air, °C per W of GPU power.
    thermal_resistance_c_per_w: float
    #: DNS host name; None = the server id (parametric layouts).
    hostname: str | None = None
    #: Kubernetes node name (the scheduler extender's host); None = the server id.
    node_name: str | None = None
    #: BMC (Redfish) address, for the collectors; None when not declared.
    bmc_address: str | None = None


@dataclass(frozen=True)
class Rack:
    """A rack: its servers share a rack PDU (telemetry point)."""

    rack_id: str
    row_id: str
    pdu_id: str
    zone_id: str
    server_ids: tuple[str, ...]


@dataclass(frozen=True)
class Row:
    """A row of racks fed by one power domain (busway/row PDU under the UPS) with a budget."""

    row_id: str
    zone_id: str
    rack_ids: tuple[str, ...]
    nameplate_w: float
    budget_w: float


@dataclass(frozen=True)
class CoolingZone:
    """A cold aisle served by one air handler."""

    zone_id: str
    row_ids: tuple[str, ...]
    supply_temp_c: float
    capacity_w: float


@dataclass(frozen=True)
class Topology:
    """The whole floor. Struct-of-arrays views (``server_row`` ...) are cached for vectorised code."""

    name: str
    oversubscription: float
    servers: tuple[Server, ...]
    racks: tuple[Rack, ...]
    rows: tuple[Row, ...]
    zones: tuple[CoolingZone, ...]
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    # ----------------------------------------------------------------- sizes
    @property
    def num_servers(self) -> int:
        """Number of servers."""
        return len(self.servers)

    @property
    def num_gpus(self) -> int:
        """Number of GPUs."""
        return sum(s.num_gpus for s in self.servers)

    @cached_property
    def server_ids(self) -> tuple[str, ...]:
        """Server ids in index order."""
        return tuple(s.server_id for s in self.servers)

    @cached_property
    def row_ids(self) -> tuple[str, ...]:
        """Row ids in index order."""
        return tuple(r.row_id for r in self.rows)

    @cached_property
    def zone_ids(self) -> tuple[str, ...]:
        """Zone ids in index order."""
        return tuple(z.zone_id for z in self.zones)

    @cached_property
    def rack_ids(self) -> tuple[str, ...]:
        """Rack ids in index order."""
        return tuple(r.rack_id for r in self.racks)

    @cached_property
    def pdu_ids(self) -> tuple[str, ...]:
        """PDU ids in index order (one rack PDU per rack)."""
        return tuple(r.pdu_id for r in self.racks)

    @cached_property
    def by_id(self) -> dict[str, Server]:
        """Server lookup by id."""
        return {s.server_id: s for s in self.servers}

    @cached_property
    def by_node_name(self) -> dict[str, Server]:
        """Server lookup by Kubernetes node name (the server id where none is declared)."""
        return {s.node_name or s.server_id: s for s in self.servers}

    @cached_property
    def skus(self) -> tuple[GpuSku, ...]:
        """The distinct GPU SKUs of the floor, most common first (ties: first seen)."""
        counts: dict[str, int] = {}
        first: dict[str, GpuSku] = {}
        for s in self.servers:
            counts[s.sku.name] = counts.get(s.sku.name, 0) + 1
            first.setdefault(s.sku.name, s.sku)
        return tuple(first[n] for n in sorted(counts, key=lambda n: -counts[n]))

    # ----------------------------------------------------------------- arrays
    def _index_array(self, attr: str, ids: tuple[str, ...]) -> npt.NDArray[np.int64]:
        pos = {v: i for i, v in enumerate(ids)}
        return np.asarray([pos[getattr(s, attr)] for s in self.servers], dtype=np.int64)

    @cached_property
    def server_row(self) -> npt.NDArray[np.int64]:
        """Row index of each server."""
        return self._index_array("row_id", self.row_ids)

    @cached_property
    def server_rack(self) -> npt.NDArray[np.int64]:
        """Rack index of each server."""
        return self._index_array("rack_id", self.rack_ids)

    @cached_property
    def server_pdu(self) -> npt.NDArray[np.int64]:
        """PDU index of each server."""
        return self._index_array("pdu_id", self.pdu_ids)

    @cached_property
    def server_zone(self) -> npt.NDArray[np.int64]:
        """Cooling-zone index of each server."""
        return self._index_array("zone_id", self.zone_ids)

    def server_array(self, attr: str) -> npt.NDArray[np.float64]:
        """A float attribute of every server (or of its SKU, prefixed ``sku.``) as an array."""
        if attr.startswith("sku."):
            return np.asarray([getattr(s.sku, attr[4:]) for s in self.servers], dtype=np.float64)
        return np.asarray([getattr(s, attr) for s in self.servers], dtype=np.float64)

    @cached_property
    def row_budget_w(self) -> npt.NDArray[np.float64]:
        """Power budget of each row, W."""
        return np.asarray([r.budget_w for r in self.rows], dtype=np.float64)

    @cached_property
    def zone_capacity_w(self) -> npt.NDArray[np.float64]:
        """Cooling capacity of each zone, W."""
        return np.asarray([z.capacity_w for z in self.zones], dtype=np.float64)

    @cached_property
    def zone_supply_c(self) -> npt.NDArray[np.float64]:
        """Design supply temperature of each zone, °C."""
        return np.asarray([z.supply_temp_c for z in self.zones], dtype=np.float64)


# --------------------------------------------------------------------------- building

#: Defaults of the parametric layout; every key may be overridden in a cluster file.
LAYOUT_DEFAULTS: dict[str, Any] = {
    "name": "default",
    "num_servers": 240,
    "servers_per_rack": 4,
    "racks_per_row": 10,
    "rows_per_zone": 2,
    "gpus_per_server": 8,
    "sku": "A100-SXM-80GB",
    "oversubscription": 1.5,
    # Server non-GPU power (CPUs, memory, NICs, fans) at idle; DGX A100 nameplate 6.5 kW.
    "base_power_w": 1400.0,
    "server_nameplate_w": 6500.0,
    "supply_temp_c": 21.0,
    # Air-handler capacity as a fraction of the zone's nameplate heat (cooling oversubscription).
    "cooling_capacity_frac": 0.62,
    "thermal_resistance_c_per_w": 0.125,
    "thermal_resistance_spread_frac": 0.08,
    "height_offset_c_per_slot": 1.0,
    "end_of_row_offset_c": 1.5,
    "seed": 7,
    # Optional absolute limits (W) that override nameplate/oversubscription and the cooling fraction;
    # the capacity search uses them to keep budgets and cooling fixed while adding servers.
    "row_budget_w": None,
    "zone_capacity_w": None,
}


def build_topology(**layout: Any) -> Topology:
    """Build a topology from the parametric layout keys of :data:`LAYOUT_DEFAULTS`.

    Per-server thermal resistances vary by a seeded ±spread (manufacturing and airflow
    differences); everything else is a deterministic function of position.
    """
    unknown = set(layout) - set(LAYOUT_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown cluster keys {sorted(unknown)}; allowed: {sorted(LAYOUT_DEFAULTS)}")
    p = {**LAYOUT_DEFAULTS, **layout}
    n = int(p["num_servers"])
    if n < 1:
        raise ConfigError(f"num_servers must be >= 1 (got {n})")
    ratio = float(p["oversubscription"])
    if not 0.5 <= ratio <= 5.0:
        raise ConfigError(f"oversubscription={ratio} outside [0.5, 5]; it is nameplate / budget, e.g. 1.4")
    sku_name = str(p["sku"])
    if sku_name not in SKUS:
        raise ConfigError(f"sku={sku_name!r} unknown; choose from {sorted(SKUS)}")
    sku = SKUS[sku_name]
    spr = int(p["servers_per_rack"])
    rpr = int(p["racks_per_row"])
    rows_per_zone = int(p["rows_per_zone"])
    per_row = spr * rpr
    num_rows = math.ceil(n / per_row)
    num_zones = math.ceil(num_rows / rows_per_zone)
    rng = np.random.default_rng(int(p["seed"]))
    spread = float(p["thermal_resistance_spread_frac"])
    rth = float(p["thermal_resistance_c_per_w"]) * (1.0 + spread * rng.uniform(-1.0, 1.0, size=n))

    servers: list[Server] = []
    racks: list[Rack] = []
    rows: list[Row] = []
    for r in range(num_rows):
        row_id = f"row{r:02d}"
        zone_id = f"zone{r // rows_per_zone:02d}"
        rack_ids: list[str] = []
        for k in range(rpr):
            first = r * per_row + k * spr
            if first >= n:
                break
            rack_id = f"{row_id}-rack{k:02d}"
            pdu_id = f"{rack_id}-pdu"
            ids: list[str] = []
            for s in range(spr):
                idx = first + s
                if idx >= n:
                    break
                sid = f"{rack_id}-srv{s:02d}"
                end = k == 0 or k == rpr - 1
                height_frac = s / max(1, spr - 1)
                servers.append(Server(
                    server_id=sid, index=idx, row_id=row_id, rack_id=rack_id, pdu_id=pdu_id, zone_id=zone_id,
                    sku=sku, num_gpus=int(p["gpus_per_server"]), slot_in_rack=s, rack_in_row=k,
                    base_power_w=float(p["base_power_w"]), nameplate_w=float(p["server_nameplate_w"]),
                    inlet_offset_c=float(p["height_offset_c_per_slot"]) * s
                    + (float(p["end_of_row_offset_c"]) if end else 0.0),
                    recirculation_weight=0.4 + 0.6 * height_frac,
                    thermal_resistance_c_per_w=float(rth[idx]),
                ))
                ids.append(sid)
            racks.append(Rack(rack_id, row_id, pdu_id, zone_id, tuple(ids)))
            rack_ids.append(rack_id)
        nameplate = sum(s.nameplate_w for s in servers if s.row_id == row_id)
        budget = float(p["row_budget_w"]) if p["row_budget_w"] is not None else nameplate / ratio
        rows.append(Row(row_id, zone_id, tuple(rack_ids), nameplate_w=nameplate, budget_w=budget))
    zones: list[CoolingZone] = []
    for z in range(num_zones):
        zone_id = f"zone{z:02d}"
        zrows = tuple(r.row_id for r in rows if r.zone_id == zone_id)
        heat = sum(r.nameplate_w for r in rows if r.zone_id == zone_id)
        cap = float(p["zone_capacity_w"]) if p["zone_capacity_w"] is not None else heat * float(p["cooling_capacity_frac"])
        zones.append(CoolingZone(zone_id, zrows, supply_temp_c=float(p["supply_temp_c"]), capacity_w=cap))
    return Topology(name=str(p["name"]), oversubscription=ratio, servers=tuple(servers), racks=tuple(racks),
                    rows=tuple(rows), zones=tuple(zones), extra={"layout": p})


def default_topology(num_servers: int, oversubscription: float = 1.5) -> Topology:
    """The shipped default layout (``simulator/clusters/default.toml``) resized to ``num_servers``."""
    layout = _read_layout(DEFAULT_CLUSTER_FILE)
    layout.update(num_servers=num_servers, oversubscription=oversubscription)
    return build_topology(**layout)


def _read_layout(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cluster file {path}: {exc}") from exc
    layout = dict(data.get("cluster", {}))
    return layout


def load_topology(path: Path | str | None = None, **overrides: Any) -> Topology:
    """Load a cluster file (TOML, ``[cluster]`` table of layout keys); None loads the shipped default."""
    layout = _read_layout(Path(path) if path is not None else DEFAULT_CLUSTER_FILE)
    layout.update({k: v for k, v in overrides.items() if v is not None})
    return build_topology(**layout)
