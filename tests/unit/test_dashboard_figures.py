"""Pure figure builders and the page's callbacks (through Dash's HTTP endpoint), auth, actions log."""

from __future__ import annotations

import base64
import doctest
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest

import dashboard.auth
import dashboard.figures
from bench.dashboard import synthetic_actions, synthetic_tick, tick_payloads
from dashboard import figures, layout
from dashboard.app import create_app
from dashboard.view import ActionEntry, DashboardView, FloorLayout
from foundation.topology import default_topology

T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def filled() -> tuple[DashboardView, Any]:
    topo = default_topology(100)
    # The page's clock is the data's (14 s after T0): with the wall clock the view turned STALE once the
    # fixture's fixed dates were older than stale_after_s (it failed from 7 Dec 2026, 12 days after T0).
    view = DashboardView(layout=FloorLayout.from_topology(topo), stale_after_s=10.0,
                         clock=lambda: T0 + timedelta(seconds=14))
    rng = np.random.default_rng(1)
    for k in range(15):
        at = T0 + timedelta(seconds=k)
        for m in synthetic_tick(topo, at, rng, hot_zone=topo.zones[0].zone_id, supply_rise_c=8.0 if k > 10 else 0):
            view.apply(m, received_at=at)
    for m in synthetic_actions(topo, T0, rng, 4):
        view.apply(m, received_at=T0)
    return view, topo


def test_doctests_pass() -> None:
    assert doctest.testmod(dashboard.figures).failed == 0
    assert doctest.testmod(dashboard.auth).failed == 0


def test_colour_scales_are_fixed_and_red_means_no_headroom() -> None:
    for scale in figures.SCALES.values():
        stops = scale.plotly()
        assert stops[0][0] == 0.0 and stops[-1][0] == pytest.approx(1.0)
        assert [v for v, _ in scale.stops] == sorted(v for v, _ in scale.stops)
        assert scale.colour(0.5) == "#e53935" and scale.colour(-1.0) == "#7f0010"
        assert scale.colour(None) != scale.colour(0.0)


def test_floor_map_has_one_cell_per_rack_whatever_the_values(filled: tuple[DashboardView, Any]) -> None:
    view, topo = filled
    snap = view.snapshot()
    for metric, scale in (("thermal", figures.THERMAL_SCALE), ("power", figures.POWER_SCALE)):
        cells = figures.rack_cells(snap.layout, snap.servers, metric)
        fig = figures.floor_map_figure(snap.layout, cells, metric)
        trace = fig["data"][0]
        racks = {trace["customdata"][i][j][0] for i, row in enumerate(trace["z"]) for j, v in enumerate(row)
                 if v is not None}
        assert racks == set(topo.rack_ids)
        assert (trace["zmin"], trace["zmax"]) == (scale.zmin, scale.zmax)
        go.Figure(fig)  # Plotly accepts the dict as a valid figure


def test_rack_cell_shows_its_worst_server(filled: tuple[DashboardView, Any]) -> None:
    view, topo = filled
    snap = view.snapshot()
    rack = topo.racks[3]
    cell = next(c for c in figures.rack_cells(snap.layout, snap.servers, "thermal") if c.rack_id == rack.rack_id)
    worst = min(snap.servers[s].thermal_headroom_c for s in rack.server_ids)
    assert cell.headroom == pytest.approx(worst)
    assert cell.num_reporting == cell.num_servers == len(rack.server_ids)


def test_emergency_racks_are_outlined(filled: tuple[DashboardView, Any]) -> None:
    view, topo = filled
    snap = view.snapshot()
    cells = figures.rack_cells(snap.layout, snap.servers, "thermal")
    racks = {r.rack_id for r in topo.racks if r.zone_id == topo.zones[0].zone_id}
    fig = figures.floor_map_figure(snap.layout, cells, "thermal", highlighted_racks=racks, selected_rack="nope")
    assert sum(s["name"] == "emergency" for s in fig["layout"]["shapes"]) == len(racks)


def test_power_chart_shows_percent_of_limit_with_a_forecast_band(filled: tuple[DashboardView, Any]) -> None:
    view, topo = filled
    snap = view.snapshot()
    hist = {k[1]: v for k, v in view.domain_history(["row"]).items()}
    fc = {k[1]: v for k, v in snap.domains.items() if k[0] == "row"}
    fig = figures.domain_power_figure(hist, fc, now_s=(T0 + timedelta(seconds=14)).timestamp())
    names = [t.get("name") for t in fig["data"] if t.get("name")]
    assert set(names) == set(topo.row_ids)
    assert any(t.get("fill") == "tonexty" for t in fig["data"])
    last = snap.domains[("row", topo.row_ids[0])]
    actual = next(t for t in fig["data"] if t.get("name") == topo.row_ids[0])
    assert actual["y"][-1] == pytest.approx(100 * last.power_w / last.power_limit_w, abs=0.01)
    go.Figure(fig)


def test_drilldown_plots_every_gpu_and_the_forecast(filled: tuple[DashboardView, Any]) -> None:
    view, topo = filled
    d = view.server_detail(topo.servers[0].server_id)
    fig = figures.server_detail_figure(d.server_id, d.forecasts, d.gpus, slowdown_temp_c=87.0,
                                       now_s=(T0 + timedelta(seconds=14)).timestamp())
    assert sum(str(t.get("name", "")).startswith("GPU ") for t in fig["data"]) == 8
    assert any(t.get("name") == "latest forecast" for t in fig["data"])
    go.Figure(fig)


def test_actions_table_filters_by_type_and_row() -> None:
    entries = [ActionEntry(T0, "reconfig", "s1", "row00", "cap", "hot", "1 °C"),
               ActionEntry(T0, "routing", "ep", "row01", "w", "why", ""),
               ActionEntry(T0, "event", "zone z", None, "critical", "lost", "")]

    def rows(kinds: list[str] | None, row: str | None) -> list[str]:
        table = layout.actions_table(entries, kinds, row).to_plotly_json()
        body = table["props"]["children"][1].to_plotly_json()["props"]["children"]
        return [r.className for r in body if getattr(r, "className", None)]

    assert rows(None, None) == ["action event", "action routing", "action reconfig"]  # newest first
    assert rows(["reconfig", "routing"], None) == ["action routing", "action reconfig"]
    assert rows(None, "row01") == ["action routing"]
    assert rows(["event"], "row00") == []


def _post(client: Any, payload: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/_dash-update-component", json=payload)
    assert resp.status_code == 200, resp.data[:500]
    return json.loads(resp.data)["response"]


def test_every_periodic_callback_answers_through_dash(filled: tuple[DashboardView, Any]) -> None:
    view, topo = filled
    app = create_app(view)
    client = app.server.test_client()
    rack = topo.racks[0].rack_id
    inputs = {"metric.value": "thermal", "selected-rack.data": rack, "power-kind.value": "row"}
    responses = [_post(client, p) for p in tick_payloads(app, inputs, 1)]
    assert len(responses) == 4
    merged = {k: v for r in responses for k, v in r.items()}
    assert rack in merged["rack-title"]["children"]
    assert "COOLING FAILURE" not in json.dumps(merged["emergency-banner"])  # no event published in this view
    assert merged["status"]["children"] == "LIVE"


def test_clicking_a_cell_selects_that_rack(filled: tuple[DashboardView, Any]) -> None:
    view, topo = filled
    app = create_app(view)
    key = "..selected-rack.data...selected-server.data.."
    row1 = topo.rows[1]
    out = _post(app.server.test_client(), {
        "output": key, "outputs": [{"id": "selected-rack", "property": "data"},
                                   {"id": "selected-server", "property": "data"}],
        "inputs": [{"id": "floor-map", "property": "clickData", "value": {"points": [{"x": 2, "y": 1}]}}],
        "changedPropIds": ["floor-map.clickData"], "state": [{"id": "selected-rack", "property": "data"}]})
    assert out["selected-rack"]["data"] == row1.rack_ids[2]


def test_basic_auth_refuses_without_credentials() -> None:
    app = create_app(DashboardView(), username="ops", password="pw")
    client = app.server.test_client()
    assert client.get("/").status_code == 401
    assert client.get("/").headers["WWW-Authenticate"].startswith("Basic ")
    bad = base64.b64encode(b"ops:nope").decode()
    assert client.get("/_dash-layout", headers={"Authorization": f"Basic {bad}"}).status_code == 401
    good = base64.b64encode(b"ops:pw").decode()
    assert client.get("/_dash-layout", headers={"Authorization": f"Basic {good}"}).status_code == 200
    assert create_app(DashboardView()).server.test_client().get("/").status_code == 200
