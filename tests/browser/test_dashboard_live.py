"""The operators' page in headless Chromium, fed live through the real embedded broker."""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium.webdriver.common.action_chains import ActionChains

from contracts import ControlEvent

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def _figure(dash_duo: Any, graph_id: str) -> dict[str, Any]:
    """The figure Plotly is currently showing in a dcc.Graph (data and layout as the browser holds them)."""
    return dash_duo.driver.execute_script(
        "const gd = document.querySelector(arguments[0] + ' .js-plotly-plot');"
        "return gd ? {data: gd.data, layout: gd.layout} : null;", f"#{graph_id}")


def _wait_rendered(dash_duo: Any, graph_id: str, timeout: float = 15) -> None:
    dash_duo.wait_for_element(f"#{graph_id} .main-svg", timeout=timeout)


def _wait(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{what} not seen within {timeout} s")


def _click_cell(dash_duo: Any, graph_id: str, row: int, col: int, num_rows: int, num_cols: int) -> None:
    """Click the centre of heatmap cell (row, col) like an operator would."""
    drag = dash_duo.find_element(f"#{graph_id} .nsewdrag")
    rect = drag.rect
    x = (col + 0.5) * rect["width"] / num_cols
    y = (row + 0.5) * rect["height"] / num_rows
    ActionChains(dash_duo.driver).move_to_element_with_offset(drag, x, y).click().perform()


def _shot(dash_duo: Any, artifacts_dir: Path, name: str) -> Path:
    path = artifacts_dir / f"dashboard_{name}.png"
    dash_duo.driver.save_screenshot(str(path))
    return path


def test_live_floor_map_one_cell_per_rack_and_rack_drilldown(dash_duo: Any, live_dashboard: Any,
                                                             artifacts_dir: Path) -> None:
    live = live_dashboard(num_servers=80)
    dash_duo.start_server(live.app)
    _wait_rendered(dash_duo, "floor-map")
    dash_duo.wait_for_text_to_equal("#status", "LIVE", timeout=15)

    topo = live.topology
    fig = _figure(dash_duo, "floor-map")
    z = fig["data"][0]["z"]
    custom = fig["data"][0]["customdata"]
    shown = {custom[i][j][0] for i in range(len(z)) for j in range(len(z[i])) if z[i][j] is not None}
    assert shown == set(topo.rack_ids), "one coloured cell per rack of the simulated cluster"
    assert sum(v is not None for r in z for v in r) == len(topo.racks)
    assert fig["data"][0]["zmin"] == -5 and fig["data"][0]["zmax"] == 25, "thermal colour scale is fixed"

    # Hover shows the numbers of a rack.
    drag = dash_duo.find_element("#floor-map .nsewdrag")
    num_rows, num_cols = len(z), len(z[0])
    ActionChains(dash_duo.driver).move_to_element_with_offset(
        drag, 2.5 * drag.rect["width"] / num_cols, 0.5 * drag.rect["height"] / num_rows).perform()
    target = topo.rows[0].rack_ids[2]
    _wait(lambda: target in (dash_duo.find_element("#floor-map .hoverlayer").text or ""), 5, "hover label")
    hover = dash_duo.find_element("#floor-map .hoverlayer").text
    assert "°C" in hover and "kW" in hover

    # Clicking a rack shows its servers.
    _click_cell(dash_duo, "floor-map", 1, 3, num_rows, num_cols)
    rack = topo.rows[1].rack_ids[3]
    dash_duo.wait_for_contains_text("#rack-title", rack, timeout=10)
    _wait_rendered(dash_duo, "rack-servers")
    servers = [s for r in topo.racks if r.rack_id == rack for s in r.server_ids]
    _wait(lambda: all(s in dash_duo.find_element("#rack-servers").text for s in servers), 10, "rack's servers")
    # ... and the drill-down of its tightest server, with per-GPU lines and its configuration.
    _wait(lambda: dash_duo.find_element("#server-title").text in servers, 10, "server drill-down")
    _wait_rendered(dash_duo, "server-detail")
    _wait(lambda: "llama2-70b-tp8-fp16" in dash_duo.find_element("#server-config").text, 10, "configuration")
    detail = _figure(dash_duo, "server-detail")
    assert sum(1 for t in detail["data"] if str(t.get("name", "")).startswith("GPU ")) == 8

    metric_power = dash_duo.find_elements("#metric input")[1]
    metric_power.click()
    _wait(lambda: (_figure(dash_duo, "floor-map") or {}).get("data", [{}])[0].get("zmax") == 40, 10, "power map")
    _wait_rendered(dash_duo, "power-chart")
    _wait_rendered(dash_duo, "inlet-chart")
    _shot(dash_duo, artifacts_dir, "live_power")
    assert dash_duo.get_logs() == [], "browser console must stay clean"


def test_cooling_failure_shows_banner_and_highlights_zone_within_10s(dash_duo: Any, live_dashboard: Any,
                                                                      artifacts_dir: Path) -> None:
    live = live_dashboard(num_servers=80, backfill_s=60)
    dash_duo.start_server(live.app)
    _wait_rendered(dash_duo, "floor-map")
    dash_duo.wait_for_text_to_equal("#status", "LIVE", timeout=15)
    topo = live.topology
    zone = topo.zones[0]
    zone_racks = {r.rack_id for r in topo.racks if r.zone_id == zone.zone_id}
    assert not _figure(dash_duo, "floor-map")["layout"].get("shapes")

    now = datetime.now(UTC)
    injected = time.monotonic()
    live.publisher.control.hot_zone, live.publisher.control.supply_rise_c = zone.zone_id, 7.0
    live.publisher.publish([ControlEvent(
        event_id="ev-cooling-1", event_kind="cooling_failure", severity="critical", occurred_at=now,
        domain_kind="zone", domain_id=zone.zone_id, ends_at=now + timedelta(minutes=10), supply_temp_rise_c=7.0,
        detail=f"air handler of {zone.zone_id} lost; supply air +7 °C")])

    def highlighted() -> set[str]:
        fig = _figure(dash_duo, "floor-map") or {"layout": {}, "data": [{"customdata": []}]}
        custom = fig["data"][0]["customdata"]
        out = set()
        for s in fig["layout"].get("shapes") or []:
            if s.get("name") == "emergency":
                i, j = round((s["y0"] + s["y1"]) / 2), round((s["x0"] + s["x1"]) / 2)
                out.add(custom[i][j][0])
        return out

    _wait(lambda: "COOLING FAILURE" in dash_duo.find_element("#emergency-banner").text
          and highlighted() == zone_racks, 10 - (time.monotonic() - injected), "banner and highlighted zone")
    elapsed = time.monotonic() - injected
    assert elapsed < 10.0
    banner = dash_duo.find_element("#emergency-banner").text
    assert zone.zone_id in banner and f"{len(zone_racks)} racks highlighted" in banner
    assert dash_duo.find_element("#emergency-banner").is_displayed()

    # The actions log shows the event with its cause, then what the controller does about it.
    dash_duo.wait_for_contains_text("#actions-table", "cooling_failure", timeout=5)
    from bench.dashboard import synthetic_actions

    live.publisher.publish(synthetic_actions(topo, datetime.now(UTC), live.publisher.rng, 6, zone_id=zone.zone_id))
    dash_duo.wait_for_contains_text("#actions-table", "frequency cap →", timeout=10)
    # Select a rack in the failing zone for a representative screenshot (used as docs/dashboard.png).
    fig = _figure(dash_duo, "floor-map")
    _click_cell(dash_duo, "floor-map", 0, 4, len(fig["data"][0]["z"]), len(fig["data"][0]["z"][0]))
    dash_duo.wait_for_contains_text("#rack-title", topo.rows[0].rack_ids[4], timeout=10)
    _wait_rendered(dash_duo, "server-detail")
    _wait(lambda: "in emergency zone" in dash_duo.find_element("#rack-servers").text, 10, "rack flagged")
    time.sleep(1.5)
    _shot(dash_duo, artifacts_dir, "cooling_failure")
    assert dash_duo.get_logs() == []


def test_stale_state_appears_when_the_feed_stops(dash_duo: Any, live_dashboard: Any, artifacts_dir: Path) -> None:
    live = live_dashboard(num_servers=40, stale_after_s=3.0)
    dash_duo.start_server(live.app)
    _wait_rendered(dash_duo, "floor-map")
    dash_duo.wait_for_text_to_equal("#status", "LIVE", timeout=15)
    assert not dash_duo.find_element("#stale-banner").is_displayed()

    live.publisher.control.running = False
    stopped = time.monotonic()
    _wait(lambda: "data is stale since" in dash_duo.find_element("#stale-banner").text, 10, "stale banner")
    assert time.monotonic() - stopped < 3.0 + 2 * 1.0 + 2.0  # stale_after_s + two refreshes + transport
    dash_duo.wait_for_text_to_equal("#status", "STALE", timeout=3)
    text = dash_duo.find_element("#stale-banner").text
    since = re.search(r"stale since (\d\d:\d\d:\d\d) UTC", text)
    assert since is not None, text
    last = live.publisher.last_published_at
    hh, mm, ss = (int(v) for v in since.group(1).split(":"))
    shown = last.replace(hour=hh, minute=mm, second=ss, microsecond=0)
    assert abs((shown - last).total_seconds()) < 3, (shown, last)
    _shot(dash_duo, artifacts_dir, "stale")

    live.publisher.control.running = True  # the page recovers by itself
    dash_duo.wait_for_text_to_equal("#status", "LIVE", timeout=10)
    assert dash_duo.get_logs() == []


def test_basic_auth_in_the_browser(dash_duo: Any, live_dashboard: Any) -> None:
    live = live_dashboard(num_servers=20, username="ops", password="s3cret-pw")
    dash_duo.start_server(live.app, navigate=False)
    url = dash_duo.server.url.rstrip("/")
    assert requests.get(url + "/", timeout=5).status_code == 401
    assert requests.get(url + "/_dash-layout", auth=("ops", "wrong"), timeout=5).status_code == 401
    assert requests.get(url + "/_dash-layout", auth=("ops", "s3cret-pw"), timeout=5).status_code == 200

    # Chrome drops credentials embedded in the URL for the page's XHRs; send the header the way a
    # browser does after the login prompt.
    token = base64.b64encode(b"ops:s3cret-pw").decode()
    dash_duo.driver.execute_cdp_cmd("Network.enable", {})
    dash_duo.driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    dash_duo.driver.get(url + "/")
    _wait_rendered(dash_duo, "floor-map", timeout=20)
    dash_duo.wait_for_text_to_equal("#status", "LIVE", timeout=15)
    assert dash_duo.get_logs() == []
