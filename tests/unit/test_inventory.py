"""The inventory: generated files reproduce the parametric layout, mixed SKUs reach the topology arrays,
malformed files are refused naming the line and field, a NetBox export converts, unknown servers are reported."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from contracts import ControlEvent
from contracts.errors import ConfigError
from controller.metrics import ControllerMetrics
from controller.service import Controller
from foundation.inventory import (
    InventoryError,
    dump_inventory,
    generate_inventory,
    inventory_from_topology,
    load_inventory,
    parse_inventory,
)
from foundation.netbox import inventory_from_netbox
from foundation.settings import ControllerSettings, Settings
from foundation.topology import SKUS, default_topology
from tapas.cli import app
from tests.controller_world import forecast, world_catalogue

NETBOX = Path(__file__).resolve().parents[1] / "data" / "netbox"


def test_generated_inventory_reproduces_the_parametric_topology() -> None:
    topo = default_topology(90, oversubscription=1.4)
    again = parse_inventory(dump_inventory(inventory_from_topology(topo))).to_topology()
    assert again.server_ids == topo.server_ids and again.rack_ids == topo.rack_ids
    assert again.row_ids == topo.row_ids and again.zone_ids == topo.zone_ids
    for attr in ("inlet_offset_c", "thermal_resistance_c_per_w", "recirculation_weight", "sku.tdp_w", "num_gpus"):
        np.testing.assert_array_equal(again.server_array(attr), topo.server_array(attr))
    np.testing.assert_array_equal(again.row_budget_w, topo.row_budget_w)
    np.testing.assert_array_equal(again.zone_capacity_w, topo.zone_capacity_w)
    assert (again.server_row == topo.server_row).all() and (again.server_pdu == topo.server_pdu).all()
    assert again.oversubscription == pytest.approx(1.4)


def test_mixed_skus_reach_the_per_server_arrays() -> None:
    inv = generate_inventory(40, skus=["A100-SXM-80GB", "H100-SXM-80GB"], domain="dc1.example")
    topo = inv.to_topology()
    tdp = topo.server_array("sku.tdp_w")
    assert set(tdp) == {SKUS["A100-SXM-80GB"].tdp_w, SKUS["H100-SXM-80GB"].tdp_w}
    rack0, rack1 = topo.racks[0], topo.racks[1]
    assert {topo.by_id[s].sku.name for s in rack0.server_ids} == {"A100-SXM-80GB"}
    assert {topo.by_id[s].sku.name for s in rack1.server_ids} == {"H100-SXM-80GB"}
    assert topo.servers[0].hostname == f"{topo.servers[0].server_id}.dc1.example"
    assert topo.by_node_name[topo.servers[3].server_id] is topo.servers[3]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "inv.toml"
    p.write_text(text, encoding="utf-8")
    return p


def _line_of(text: str, needle: str, nth: int = 0) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if line.startswith(needle)]
    return hits[nth]


def test_check_cli_refuses_a_malformed_file_naming_line_and_field(tmp_path: Path) -> None:
    text = dump_inventory(generate_inventory(12))
    lines = text.splitlines()
    bad_line = _line_of(text, "num_gpus =", 5)
    lines[bad_line - 1] = 'num_gpus = "eight"'
    path = _write(tmp_path, "\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["inventory", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:{bad_line}: servers[5].num_gpus:" in result.output
    assert "valid integer" in result.output


def test_check_names_the_line_of_a_bad_reference_and_of_a_missing_field(tmp_path: Path) -> None:
    text = dump_inventory(generate_inventory(12))
    sku_line = _line_of(text, "sku =", 7)
    lines = text.splitlines()
    lines[sku_line - 1] = 'sku = "B300-NOPE"'
    rack_line = _line_of(text, "rack =", 2)
    del lines[rack_line - 1]  # servers[2] loses its rack: reported at its [[servers]] header
    path = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    issue = info.value.issues[0]
    assert issue.field == "servers[2].rack" and "required" in issue.message.lower()
    header = [i for i, line in enumerate(lines, start=1) if line == "[[servers]]"][2]
    assert issue.line == header
    lines.insert(rack_line - 1, 'rack = "row00-rack00"')
    path = _write(tmp_path, "\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["inventory", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:{sku_line}: servers[7].sku: unknown SKU 'B300-NOPE'" in result.output


def test_check_reports_invalid_toml_with_its_line_and_accepts_a_good_file(tmp_path: Path) -> None:
    good = _write(tmp_path, dump_inventory(generate_inventory(8, skus=["H100-SXM-80GB"])))
    ok = CliRunner().invoke(app, ["inventory", "check", str(good)])
    assert ok.exit_code == 0, ok.output
    assert "8 servers (64 GPUs)" in ok.output and "H100-SXM-80GB x8" in ok.output
    broken = _write(tmp_path, 'name = "x"\n\n[[zones]]\nid = "z"\ncooling_capacity_w = = 3\n')
    result = CliRunner().invoke(app, ["inventory", "check", str(broken)])
    assert result.exit_code == 2 and f"{broken}:5:" in result.output and "not valid TOML" in result.output


def test_generate_cli_writes_a_file_that_loads(tmp_path: Path) -> None:
    out = tmp_path / "gen.toml"
    result = CliRunner().invoke(app, ["inventory", "generate", "--servers", "30", "--out", str(out),
                                      "--sku", "A100-SXM-80GB", "--sku", "H100-SXM-80GB"])
    assert result.exit_code == 0, result.output
    topo = load_inventory(out).to_topology()
    assert topo.num_servers == 30 and len(topo.skus) == 2


def test_netbox_export_converts_devices_racks_and_feeds(tmp_path: Path) -> None:
    loaded = [json.loads((NETBOX / f).read_text()) for f in ("devices.json", "racks.json", "power-feeds.json")]
    inv = inventory_from_netbox(*loaded, sku_map={"dgx-a100": "A100-SXM-80GB", "DGX H100": "H100-SXM-80GB"})
    topo = parse_inventory(dump_inventory(inv)).to_topology()
    assert topo.row_ids == ("Row-A1", "Row-B1")
    assert topo.zone_ids == ("zone-a", "zone-Row-B1")
    # slots follow the rack position: gpu-a1-01 (U4) below gpu-a1-02 (U20)
    assert [topo.by_id[s].slot_in_rack for s in ("gpu-a1-01", "gpu-a1-02")] == [0, 1]
    a1 = topo.by_id["gpu-a1-02"]
    assert (a1.node_name, a1.bmc_address, a1.pdu_id, a1.sku.name) == ("node-a1-02", "10.0.8.2", "A1-R01-A",
                                                                      "A100-SXM-80GB")
    assert topo.by_id["gpu-a1-03"].sku.name == "H100-SXM-80GB" and topo.by_id["gpu-b1-02"].num_gpus == 4
    # row A1: the two primary feeds' available power (the B feed is redundancy); row B1: 230 V x 63 A x 80 %
    assert topo.rows[0].budget_w == pytest.approx(2 * 18401)
    assert topo.rows[1].budget_w == pytest.approx(230 * 63 * 0.8)
    with pytest.raises(ConfigError, match=r"gpu-a1-01.*--sku-map dgx-a100="):
        inventory_from_netbox(*loaded)


def test_from_netbox_cli_writes_a_checked_file(tmp_path: Path) -> None:
    out = tmp_path / "nb.toml"
    result = CliRunner().invoke(app, [
        "inventory", "from-netbox", "--devices", str(NETBOX / "devices.json"), "--racks", str(NETBOX / "racks.json"),
        "--power-feeds", str(NETBOX / "power-feeds.json"), "--out", str(out), "--sku-map", "dgx-a100=A100-SXM-80GB",
        "--sku-map", "dgx-h100=H100-SXM-80GB"])
    assert result.exit_code == 0, result.output
    assert load_inventory(out).to_topology().num_servers == 5


def test_services_build_their_topology_from_the_inventory_setting(tmp_path: Path) -> None:
    from foundation.inventory import topology_from_settings

    path = _write(tmp_path, dump_inventory(generate_inventory(16, skus=["H100-SXM-80GB"])))
    topo = topology_from_settings(Settings(topology={"inventory": path}))
    assert topo.num_servers == 16 and topo.skus[0].name == "H100-SXM-80GB"


def test_controller_reports_each_unknown_server_once_and_counts_every_forecast() -> None:
    topo = generate_inventory(8).to_topology()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    metrics = ControllerMetrics()
    ctl = Controller(topo, world_catalogue(), ControllerSettings(), metrics=metrics, started_at=now)
    out = []
    for sid in ("ghost-1", "ghost-1", "ghost-2", topo.server_ids[0], "ghost-1"):
        out += ctl.handle(ctl.topics.server_forecasts, forecast(sid, now), now=now)
    events = [o.message for o in out if isinstance(o.message, ControlEvent)]
    assert [(e.event_kind, e.domain_id) for e in events] == [("unknown_server", "ghost-1"),
                                                             ("unknown_server", "ghost-2")]
    assert len({e.event_id for e in events}) == 2
    assert metrics.unknown_forecasts._value.get() == 4


def test_unknown_server_seen_first_in_a_gpu_sample_is_still_reported_on_its_forecast() -> None:
    from tests.controller_world import gpu_sample

    topo = generate_inventory(8).to_topology()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ctl = Controller(topo, world_catalogue(), ControllerSettings(), metrics=ControllerMetrics(), started_at=now)
    assert ctl.handle(ctl.topics.gpu_samples, gpu_sample("ghost-9", now), now=now) == []
    out = ctl.handle(ctl.topics.server_forecasts, forecast("ghost-9", now), now=now)
    assert [o.message.event_kind for o in out if isinstance(o.message, ControlEvent)] == ["unknown_server"]
