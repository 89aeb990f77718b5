"""The fleet inventory: an explicit TOML file of named servers, rows and cooling zones.

A real fleet is not a parametric grid: servers have host names and Kubernetes node
names, racks hold different SKUs, rows have the power budgets the facility declares.
The inventory file says all of that and every service builds its
:class:`~foundation.topology.Topology` from it (``TAPAS_TOPOLOGY__INVENTORY``); the
parametric layout (``foundation.topology.build_topology``) survives as a *generator*
of inventory files (``tapas inventory generate``). Format (docs/inventory.md)::

    name = "hall-a"                    # optional
    [[skus]]                           # optional: SKUs beyond the catalogue (foundation.topology.SKUS)
    name = "L40S"  tdp_w = 350.0 ...
    [[zones]]                          # cooling zones (cold aisle + air handler)
    id = "zone-a"  cooling_capacity_w = 120000.0  supply_temp_c = 21.0
    [[rows]]                           # power domains
    id = "row-a1"  zone = "zone-a"  power_budget_w = 80000.0
    [[servers]]
    id = "gpu-a1-01"  hostname = "gpu-a1-01.dc1"  node_name = "gpu-a1-01"
    rack = "a1-r01"  row = "row-a1"  pdu = "a1-r01-pdu"  bmc_address = "10.0.8.11"
    sku = "H100-SXM-80GB"  num_gpus = 8  slot = 0

Errors name the line and the field (``hall.toml:42: servers[3].sku: unknown SKU ...``):
pydantic's error locations are mapped to lines by a small scan of the file's table
headers and keys (:func:`key_lines`), so ``tapas inventory check`` can say where to look.

Examples:
    >>> from foundation.topology import default_topology
    >>> text = dump_inventory(inventory_from_topology(default_topology(8)))
    >>> topo = parse_inventory(text).to_topology()
    >>> topo.num_servers, topo.servers[0].node_name
    (8, 'row00-rack00-srv00')
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.errors import ConfigError
from foundation.topology import SKUS, CoolingZone, GpuSku, Rack, Row, Server, Topology, load_topology

if TYPE_CHECKING:
    from foundation.settings import Settings

_ID = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"


class SkuEntry(BaseModel):
    """A GPU SKU declared in the file (one not in the shipped catalogue, or a site's own figures)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    tdp_w: float = Field(gt=0, le=5000, description="Default GPU power limit, W.")
    idle_w: float = Field(ge=0, le=5000, description="GPU idle power, W.")
    slowdown_temp_c: float = Field(gt=0, le=150, description="NVML slowdown threshold, °C.")
    max_freq_mhz: float = Field(gt=0, le=10000)
    min_freq_mhz: float = Field(gt=0, le=10000)
    perf_scale: float = Field(default=1.0, gt=0, le=100, description="Throughput relative to the A100.")


class ZoneEntry(BaseModel):
    """A cooling zone: a cold aisle served by one air handler."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID)
    cooling_capacity_w: float = Field(gt=0, description="Heat the air handler removes at its design supply, W.")
    supply_temp_c: float = Field(default=21.0, ge=5, le=40, description="Design supply air temperature, °C.")


class RowEntry(BaseModel):
    """A row of racks under one power domain (busway / row PDU)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID)
    zone: str = Field(pattern=_ID, description="Cooling zone the row's cold aisle belongs to.")
    power_budget_w: float = Field(gt=0, description="Power the facility lets the row draw, W.")
    nameplate_w: float | None = Field(default=None, gt=0, description="Sum of nameplates; unset = sum of servers'.")


class ServerEntry(BaseModel):
    """One GPU server and where it sits."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID, description="Server id used on every topic (key of samples and forecasts).")
    hostname: str | None = Field(default=None, max_length=253)
    node_name: str | None = Field(default=None, max_length=253, description="Kubernetes node name.")
    rack: str = Field(pattern=_ID)
    row: str = Field(pattern=_ID)
    pdu: str | None = Field(default=None, pattern=_ID, description="Rack PDU; unset = '<rack>-pdu'.")
    zone: str | None = Field(default=None, pattern=_ID, description="Cooling zone; unset = the row's.")
    bmc_address: str | None = Field(default=None, max_length=253)
    sku: str = Field(min_length=1, max_length=64)
    num_gpus: int = Field(default=8, ge=1, le=64)
    slot: int = Field(default=0, ge=0, le=100, description="Position in the rack, 0 = bottom.")
    rack_in_row: int = Field(default=0, ge=0, le=1000, description="Position of the rack in its row, 0 = first.")
    base_power_w: float = Field(default=1400.0, ge=0, le=100_000, description="Non-GPU power at idle, W.")
    nameplate_w: float = Field(default=6500.0, gt=0, le=200_000, description="Server nameplate power, W.")
    inlet_offset_c: float = Field(default=0.0, ge=-10, le=20, description="Inlet above the zone supply, °C.")
    recirculation_weight: float = Field(default=1.0, ge=0, le=1)
    thermal_resistance_c_per_w: float = Field(default=0.125, gt=0, le=2, description="GPU die <- inlet, °C/W.")


class Inventory(BaseModel):
    """A whole inventory file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="inventory", max_length=128)
    skus: list[SkuEntry] = Field(default_factory=list)
    zones: list[ZoneEntry] = Field(min_length=1)
    rows: list[RowEntry] = Field(min_length=1)
    servers: list[ServerEntry] = Field(min_length=1)

    def to_topology(self) -> Topology:
        """The :class:`Topology` of this inventory (servers in file order); raises InventoryError on bad references."""
        issues = check_references(self)
        if issues:
            raise InventoryError(issues)
        return _build(self)


@dataclass(frozen=True)
class InventoryIssue:
    """One problem in an inventory file: where (line, dotted field) and what."""

    field: str
    message: str
    line: int | None = None

    def format(self, source: str = "inventory") -> str:
        """``file:line: field: message``."""
        where = f"{source}:{self.line}" if self.line is not None else source
        return f"{where}: {self.field or '<file>'}: {self.message}"


class InventoryError(ConfigError):
    """An inventory file is malformed; ``issues`` lists every problem found, with lines where known."""

    def __init__(self, issues: list[InventoryIssue], source: str = "inventory") -> None:
        self.issues = issues
        self.source = source
        more = f" (and {len(issues) - 1} more; run `tapas inventory check {source}`)" if len(issues) > 1 else ""
        super().__init__(issues[0].format(source) + more)


# --------------------------------------------------------------------------- loading

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\")\s*=")


def key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map error locations (``("servers", 3, "sku")``) to 1-based line numbers.

    A scan of table headers (``[[servers]]`` counts array entries) and ``key =`` lines;
    enough for files written as tables (what ``generate`` and ``from-netbox`` write).
    A location with no line of its own (a missing key) maps to its table's header.
    """
    lines: dict[tuple[str | int, ...], int] = {}
    counts: dict[str, int] = {}
    path: tuple[str | int, ...] = ()
    depth = 0  # open brackets of a multi-line array value
    for no, raw in enumerate(text.splitlines(), start=1):
        if depth > 0:
            depth += raw.count("[") - raw.count("]")
            continue
        m = _HEADER.match(raw)
        if m:
            name = m.group(2)
            if m.group(1) == "[[":
                counts[name] = counts.get(name, -1) + 1
                path = (name, counts[name])
            else:
                path = (name,)
            lines.setdefault(path, no)
            continue
        k = _KEY.match(raw)
        if k:
            lines.setdefault((*path, k.group(1).strip('"')), no)
            value = raw.split("=", 1)[1]
            depth = max(0, value.count("[") - value.count("]"))
    return lines


def _line_of(loc: tuple[str | int, ...], lines: Mapping[tuple[str | int, ...], int]) -> int | None:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate_inventory(text: str) -> tuple[Inventory | None, list[InventoryIssue]]:
    """Parse and check an inventory text; returns the inventory (None when invalid) and every issue found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        return None, [InventoryIssue("", f"not valid TOML: {exc}", int(m.group(1)) if m else None)]
    lines = key_lines(text)
    try:
        inv = Inventory.model_validate(data)
    except ValidationError as exc:
        issues = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = f"unknown field (allowed: {', '.join(_allowed(loc))})"
            issues.append(InventoryIssue(_dotted(loc), msg, _line_of(loc, lines)))
        return None, issues
    issues = [InventoryIssue(i.field, i.message, _line_of(_loc(i.field), lines)) for i in check_references(inv)]
    return (None if issues else inv), issues


def _loc(dotted: str) -> tuple[str | int, ...]:
    out: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(out)


def _allowed(loc: tuple[str | int, ...]) -> list[str]:
    tables: dict[str, type[BaseModel]] = {"skus": SkuEntry, "zones": ZoneEntry, "rows": RowEntry,
                                          "servers": ServerEntry}
    model = tables.get(str(loc[0]), Inventory) if len(loc) > 1 else Inventory
    return sorted(model.model_fields)


def check_references(inv: Inventory) -> list[InventoryIssue]:
    """Cross-references a schema cannot see: unique ids, known rows/zones/SKUs, one row, zone and PDU per rack."""
    issues: list[InventoryIssue] = []
    skus = {**SKUS, **{s.name: _sku(s) for s in inv.skus}}
    zones = {z.id for z in inv.zones}
    rows: dict[str, RowEntry] = {}
    id_lists: tuple[tuple[str, list[str]], ...] = (
        ("zones", [z.id for z in inv.zones]), ("rows", [r.id for r in inv.rows]),
        ("servers", [s.id for s in inv.servers]))
    for kind, ids in id_lists:
        seen: set[str] = set()
        for i, ident in enumerate(ids):
            if ident in seen:
                issues.append(InventoryIssue(f"{kind}[{i}].id", f"duplicate id {ident!r}"))
            seen.add(ident)
    for i, r in enumerate(inv.rows):
        rows.setdefault(r.id, r)
        if r.zone not in zones:
            issues.append(InventoryIssue(f"rows[{i}].zone", f"unknown zone {r.zone!r}; declared: {sorted(zones)}"))
    for i, k in enumerate(inv.skus):
        if k.min_freq_mhz > k.max_freq_mhz:
            issues.append(InventoryIssue(f"skus[{i}].min_freq_mhz", "above max_freq_mhz"))
    rack_home: dict[str, tuple[str, str, str]] = {}
    names: dict[str, str] = {}
    for i, s in enumerate(inv.servers):
        if s.sku not in skus:
            issues.append(InventoryIssue(f"servers[{i}].sku", f"unknown SKU {s.sku!r}; choose from {sorted(skus)} "
                                                              f"or declare it under [[skus]]"))
        row = rows.get(s.row)
        if row is None:
            issues.append(InventoryIssue(f"servers[{i}].row", f"unknown row {s.row!r} (declare it under [[rows]])"))
            continue
        zone = s.zone or row.zone
        if zone != row.zone:
            issues.append(InventoryIssue(f"servers[{i}].zone", f"zone {zone!r} differs from its row {row.id!r}'s "
                                                               f"zone {row.zone!r} (a row belongs to one zone)"))
        home = (s.row, zone, s.pdu or f"{s.rack}-pdu")
        first = rack_home.setdefault(s.rack, home)
        if first != home:
            what = "row" if first[0] != home[0] else ("zone" if first[1] != home[1] else "pdu")
            issues.append(InventoryIssue(f"servers[{i}].{what}", f"rack {s.rack!r} already has {what} "
                                                                 f"{first[('row', 'zone', 'pdu').index(what)]!r}"))
        node = s.node_name or s.id
        other = names.setdefault(node, s.id)
        if other != s.id:
            issues.append(InventoryIssue(f"servers[{i}].node_name", f"node name {node!r} also names {other!r}"))
    return issues


def _sku(e: SkuEntry) -> GpuSku:
    return GpuSku(e.name, tdp_w=e.tdp_w, idle_w=e.idle_w, slowdown_temp_c=e.slowdown_temp_c,
                  max_freq_mhz=e.max_freq_mhz, min_freq_mhz=e.min_freq_mhz, perf_scale=e.perf_scale)


def _build(inv: Inventory) -> Topology:
    skus = {**SKUS, **{s.name: _sku(s) for s in inv.skus}}
    row_zone = {r.id: r.zone for r in inv.rows}
    servers: list[Server] = []
    rack_servers: dict[str, list[str]] = {}
    rack_home: dict[str, tuple[str, str, str]] = {}
    for i, s in enumerate(inv.servers):
        zone = s.zone or row_zone[s.row]
        pdu = s.pdu or f"{s.rack}-pdu"
        servers.append(Server(
            server_id=s.id, index=i, row_id=s.row, rack_id=s.rack, pdu_id=pdu, zone_id=zone, sku=skus[s.sku],
            num_gpus=s.num_gpus, slot_in_rack=s.slot, rack_in_row=s.rack_in_row, base_power_w=s.base_power_w,
            nameplate_w=s.nameplate_w, inlet_offset_c=s.inlet_offset_c, recirculation_weight=s.recirculation_weight,
            thermal_resistance_c_per_w=s.thermal_resistance_c_per_w, hostname=s.hostname, node_name=s.node_name,
            bmc_address=s.bmc_address))
        rack_servers.setdefault(s.rack, []).append(s.id)
        rack_home.setdefault(s.rack, (s.row, zone, pdu))
    racks = tuple(Rack(rid, rack_home[rid][0], rack_home[rid][2], rack_home[rid][1], tuple(ids))
                  for rid, ids in rack_servers.items())
    rows = []
    for r in inv.rows:
        nameplate = r.nameplate_w if r.nameplate_w is not None else sum(
            s.nameplate_w for s in servers if s.row_id == r.id)
        rows.append(Row(r.id, r.zone, tuple(k.rack_id for k in racks if k.row_id == r.id),
                        nameplate_w=nameplate, budget_w=r.power_budget_w))
    zones = tuple(CoolingZone(z.id, tuple(r.row_id for r in rows if r.zone_id == z.id),
                              supply_temp_c=z.supply_temp_c, capacity_w=z.cooling_capacity_w) for z in inv.zones)
    total_budget = sum(r.budget_w for r in rows)
    ratio = sum(r.nameplate_w for r in rows) / total_budget if total_budget > 0 else 1.0
    return Topology(name=inv.name, oversubscription=ratio, servers=tuple(servers), racks=racks, rows=tuple(rows),
                    zones=zones, extra={"inventory": inv.name})


def parse_inventory(text: str, source: str = "inventory") -> Inventory:
    """Parse an inventory text; raises :class:`InventoryError` naming the line and field of each problem."""
    inv, issues = validate_inventory(text)
    if inv is None:
        raise InventoryError(issues, source)
    return inv


def load_inventory(path: Path | str) -> Inventory:
    """Read and validate an inventory file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"inventory {path}: {exc}") from exc
    return parse_inventory(text, str(path))


def topology_from_settings(settings: Settings) -> Topology:
    """The topology every service uses: the inventory file if one is set, else the parametric cluster file."""
    if settings.topology.inventory is not None:
        return load_inventory(settings.topology.inventory).to_topology()
    return load_topology(settings.cluster_file)


# --------------------------------------------------------------------------- writing


def inventory_from_topology(topo: Topology) -> Inventory:
    """An inventory describing ``topo`` exactly (the parametric layout as a generator of inventory files)."""
    row_zone = {r.row_id: r.zone_id for r in topo.rows}
    known = {k.name for k in SKUS.values()}
    extra_skus = {s.sku.name: s.sku for s in topo.servers if s.sku.name not in known or SKUS[s.sku.name] != s.sku}
    return Inventory(
        name=topo.name,
        skus=[SkuEntry(name=k.name, tdp_w=k.tdp_w, idle_w=k.idle_w, slowdown_temp_c=k.slowdown_temp_c,
                       max_freq_mhz=k.max_freq_mhz, min_freq_mhz=k.min_freq_mhz, perf_scale=k.perf_scale)
              for k in extra_skus.values()],
        zones=[ZoneEntry(id=z.zone_id, cooling_capacity_w=z.capacity_w, supply_temp_c=z.supply_temp_c)
               for z in topo.zones],
        rows=[RowEntry(id=r.row_id, zone=r.zone_id, power_budget_w=r.budget_w, nameplate_w=r.nameplate_w)
              for r in topo.rows],
        servers=[ServerEntry(
            id=s.server_id, hostname=s.hostname or s.server_id, node_name=s.node_name or s.server_id,
            rack=s.rack_id, row=s.row_id, pdu=s.pdu_id, zone=None if row_zone[s.row_id] == s.zone_id else s.zone_id,
            bmc_address=s.bmc_address, sku=s.sku.name, num_gpus=s.num_gpus, slot=s.slot_in_rack,
            rack_in_row=s.rack_in_row, base_power_w=s.base_power_w, nameplate_w=s.nameplate_w,
            inlet_offset_c=s.inlet_offset_c, recirculation_weight=s.recirculation_weight,
            thermal_resistance_c_per_w=s.thermal_resistance_c_per_w) for s in topo.servers])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            raise ValueError("NaN has no place in an inventory")
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def dump_inventory(inv: Inventory, header: str = "") -> str:
    """The inventory as TOML, one table per entry (the layout :func:`key_lines` maps errors into)."""
    out = [f"# {line}" for line in header.splitlines()]
    out.append(f"name = {_toml_value(inv.name)}")
    for table, entries in (("skus", inv.skus), ("zones", inv.zones), ("rows", inv.rows), ("servers", inv.servers)):
        for e in entries:
            out.append("")
            out.append(f"[[{table}]]")
            for key, value in e.model_dump(exclude_none=True).items():
                out.append(f"{key} = {_toml_value(value)}")
    return "\n".join(out) + "\n"


def summarize(inv: Inventory) -> str:
    """One line: counts of servers, GPUs, racks, rows, zones and servers per SKU."""
    per_sku: dict[str, int] = {}
    for s in inv.servers:
        per_sku[s.sku] = per_sku.get(s.sku, 0) + 1
    racks = {s.rack for s in inv.servers}
    gpus = sum(s.num_gpus for s in inv.servers)
    skus = ", ".join(f"{k} x{v}" for k, v in sorted(per_sku.items()))
    return (f"{len(inv.servers)} servers ({gpus} GPUs) in {len(racks)} racks, {len(inv.rows)} rows, "
            f"{len(inv.zones)} zones; SKUs: {skus}")


def generate_inventory(num_servers: int, *, skus: Sequence[str] = (), cluster_file: Path | str | None = None,
                       oversubscription: float | None = None, domain: str | None = None) -> Inventory:
    """An inventory of the parametric layout resized to ``num_servers``; several ``skus`` alternate by rack.

    Host names are ``<id>.<domain>`` when a domain is given; node names are the ids.
    """
    topo = load_topology(cluster_file, num_servers=num_servers, oversubscription=oversubscription)
    inv = inventory_from_topology(topo)
    unknown = [k for k in skus if k not in SKUS]
    if unknown:
        raise ConfigError(f"--sku {unknown[0]!r} unknown; choose from {sorted(SKUS)}")
    racks = {r: i for i, r in enumerate(topo.rack_ids)}
    for s in inv.servers:
        if skus:
            s.sku = skus[racks[s.rack] % len(skus)]
        if domain:
            s.hostname = f"{s.id}.{domain}"
    return inv
