"""Build an inventory from a NetBox export: devices, racks and power feeds (``tapas inventory from-netbox``).

Input is what NetBox's REST API returns (``/api/dcim/devices/``, ``/api/dcim/racks/``,
``/api/dcim/power-feeds/``): either the paged object (``{"count", "next", "results"}``)
or a plain list of its ``results``. Mapping (docs/inventory.md#netbox):

* server id and host name = the device's ``name``; node name = custom field
  ``k8s_node_name`` if set, else the name; BMC = ``oob_ip.address`` without its prefix.
* SKU = custom field ``gpu_sku``, else ``device_type.slug`` / ``model`` looked up in
  ``sku_map`` (``--sku-map dgx-h100=H100-SXM-80GB``); a device with neither is an error.
  GPUs per server = custom field ``gpu_count`` (default 8).
* row = the rack's ``location`` name (a NetBox Location per row is the common model) or
  rack custom field ``row``; zone = rack custom field ``cooling_zone``, else one per row.
* PDU = the rack's primary power feed; the row's power budget = the sum of its racks'
  primary feeds' ``available_power`` (NetBox computes it from voltage × amperage ×
  max utilisation, √3 for three phase); the B side of an A/B pair is redundancy, not budget.
* slots follow ``position`` inside a rack; racks follow their name inside a row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from contracts.errors import ConfigError
from foundation.inventory import Inventory, RowEntry, ServerEntry, ZoneEntry


def results(export: Any) -> list[dict[str, Any]]:
    """The records of a NetBox list response (paged object or plain list)."""
    if isinstance(export, Mapping) and "results" in export:
        export = export["results"]
    if not isinstance(export, Sequence) or isinstance(export, str | bytes):
        raise ConfigError("NetBox export: expected a list response ({'results': [...]}) or a list of records")
    return [dict(r) for r in export if isinstance(r, Mapping)]


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._:/-]+", "-", text.strip()).strip("-")
    return s[:128] or "unnamed"


def _name(ref: Any) -> str | None:
    if isinstance(ref, Mapping):
        v = ref.get("name") or ref.get("display")
        return str(v) if v else None
    return None


def _custom(rec: Mapping[str, Any], key: str) -> Any:
    cf = rec.get("custom_fields") or {}
    return cf.get(key) if isinstance(cf, Mapping) else None


def _feed_power_w(feed: Mapping[str, Any]) -> float:
    if feed.get("available_power") is not None:
        return float(feed["available_power"])
    volts, amps = float(feed.get("voltage") or 0), float(feed.get("amperage") or 0)
    util = float(feed.get("max_utilization") or 100) / 100.0
    phase = feed.get("phase")
    three = (phase.get("value") if isinstance(phase, Mapping) else phase) == "three-phase"
    return volts * amps * util * (math.sqrt(3) if three else 1.0)


def inventory_from_netbox(devices: Any, racks: Any, power_feeds: Any, *, sku_map: Mapping[str, str] | None = None,
                          name: str = "netbox", cooling_capacity_frac: float = 0.62,
                          default_oversubscription: float = 1.5, supply_temp_c: float = 21.0) -> Inventory:
    """An :class:`Inventory` from NetBox device, rack and power-feed records (see the module docstring)."""
    sku_map = dict(sku_map or {})
    rack_by_id = {r.get("id"): r for r in results(racks)}
    feeds_by_rack: dict[Any, list[dict[str, Any]]] = {}
    for f in results(power_feeds):
        rack = f.get("rack")
        if isinstance(rack, Mapping):
            feeds_by_rack.setdefault(rack.get("id"), []).append(f)
    problems: list[str] = []
    placed: list[tuple[str, str, float, dict[str, Any]]] = []  # (row, rack name, position, device)
    rack_meta: dict[str, tuple[str, str, str, float | None]] = {}  # rack -> (row, zone, pdu, primary feed W)
    for dev in results(devices):
        dname = dev.get("name") or f"device-{dev.get('id')}"
        rref = dev.get("rack")
        if not isinstance(rref, Mapping):
            problems.append(f"device {dname!r}: no rack (only racked devices can be placed)")
            continue
        rack = rack_by_id.get(rref.get("id"), dict(rref))
        rack_name = _slug(_name(rack) or f"rack-{rref.get('id')}")
        row = _slug(str(_custom(rack, "row") or _name(rack.get("location")) or _name(rack.get("site")) or "row"))
        zone = _slug(str(_custom(rack, "cooling_zone") or f"zone-{row}"))
        if rack_name not in rack_meta:
            feeds = feeds_by_rack.get(rref.get("id"), [])
            primary = [f for f in feeds if (f.get("type") or {}).get("value", "primary") == "primary"] or feeds
            pdu = _slug(str(primary[0].get("name"))) if primary else f"{rack_name}-pdu"
            watts = sum(_feed_power_w(f) for f in primary) if primary else None
            rack_meta[rack_name] = (row, zone, pdu, watts)
        placed.append((row, rack_name, float(dev.get("position") or 0.0), dev))
    servers: list[ServerEntry] = []
    rows_order: list[str] = []
    rack_order: dict[str, list[str]] = {}
    for row, rack_name, _pos, _dev in placed:
        if row not in rows_order:
            rows_order.append(row)
        if rack_name not in rack_order.setdefault(row, []):
            rack_order[row].append(rack_name)
    for row in rack_order:
        rack_order[row].sort()
    slot_in: dict[str, int] = {}
    for row, rack_name, _pos, dev in sorted(placed, key=lambda p: (rows_order.index(p[0]),
                                                                  rack_order[p[0]].index(p[1]), p[2])):
        dname = str(dev.get("name") or f"device-{dev.get('id')}")
        dtype = dev.get("device_type") or {}
        sku = _custom(dev, "gpu_sku") or sku_map.get(str(dtype.get("slug"))) or sku_map.get(str(dtype.get("model")))
        if not sku:
            problems.append(f"device {dname!r}: no GPU SKU (set custom field gpu_sku, or --sku-map "
                            f"{dtype.get('slug') or dtype.get('model')}=<SKU>)")
            continue
        oob = dev.get("oob_ip") or {}
        bmc = str(oob.get("address")).split("/")[0] if isinstance(oob, Mapping) and oob.get("address") else None
        _row, zone, pdu, _w = rack_meta[rack_name]
        slot = slot_in.get(rack_name, 0)
        slot_in[rack_name] = slot + 1
        servers.append(ServerEntry(
            id=_slug(dname), hostname=dname, node_name=str(_custom(dev, "k8s_node_name") or dname), rack=rack_name,
            row=row, pdu=pdu, zone=zone, bmc_address=bmc, sku=str(sku), num_gpus=int(_custom(dev, "gpu_count") or 8),
            slot=slot, rack_in_row=rack_order[row].index(rack_name)))
    if problems:
        raise ConfigError("NetBox export: " + "; ".join(problems[:10])
                          + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
    if not servers:
        raise ConfigError("NetBox export: no racked devices found")
    rows: list[RowEntry] = []
    zones: dict[str, float] = {}
    for row in rows_order:
        nameplate = sum(s.nameplate_w for s in servers if s.row == row)
        feed_w = [rack_meta[r][3] for r in rack_order[row]]
        budget = sum(w for w in feed_w if w is not None) if all(w is not None for w in feed_w) else (
            nameplate / default_oversubscription)
        zone = rack_meta[rack_order[row][0]][1]
        rows.append(RowEntry(id=row, zone=zone, power_budget_w=budget, nameplate_w=nameplate))
        zones[zone] = zones.get(zone, 0.0) + nameplate * cooling_capacity_frac
    return Inventory(name=name, zones=[ZoneEntry(id=z, cooling_capacity_w=w, supply_temp_c=supply_temp_c)
                                       for z, w in zones.items()], rows=rows, servers=servers)
