"""The operators' page in headless Chromium, fed live through the real embedded broker."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

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
        time.sleep(0.5)  # polling the page costs its main thread time; do not starve its updates
    raise AssertionError(f"{what} not seen within {timeout} s")


def _click_cell(dash_duo: Any, graph_id: str, row: int, col: int, num_rows: int, num_cols: int) -> None:
    """Click the centre of heatmap cell (row, col) like an operator would."""
    drag = dash_duo.find_element(f"#{graph_id} .nsewdrag")
    rect = drag.rect
    x = (col + 0.5) * rect["width"] / num_cols
    y = (row + 0.5) * rect["height"] / num_rows
    ActionChains(dash_duo.driver).move_to_element_with_offset(drag, x, y).click().perform()


def _shot(dash_duo: Any, artifacts_dir: Path, name: str) -> Path:
    """Screenshot into artifacts/ (the pointer is parked on the title bar so no hover label hides a cell)."""
    ActionChains(dash_duo.driver).move_to_element(dash_duo.find_element(".brand")).perform()
    time.sleep(0.3)
    path = artifacts_dir / f"dashboard_{name}.png"
    dash_duo.driver.save_screenshot(str(path))
    return path


WATCH_EMERGENCY_JS = """
window.__emergencySeen = {};
window.setInterval(() => {
  const seen = window.__emergencySeen;
  const banner = document.getElementById('emergency-banner');
  if (!seen.banner && banner && banner.innerText.includes('COOLING FAILURE')) seen.banner = Date.now();
  const gd = document.querySelector('#floor-map .js-plotly-plot');
  if (!seen.outline && gd && gd.layout && (gd.layout.shapes || []).some(s => s.name === 'emergency')) {
    seen.outline = Date.now();
  }
}, 100);
"""


def _highlighted_racks(dash_duo: Any) -> set[str]:
    """Racks outlined as in an emergency on the floor map, as the browser holds the figure."""
    fig = _figure(dash_duo, "floor-map") or {"layout": {}, "data": [{"customdata": []}]}
    custom = fig["data"][0]["customdata"]
    out = set()
    for s in fig["layout"].get("shapes") or []:
        if s.get("name") == "emergency":
            i, j = round((s["y0"] + s["y1"]) / 2), round((s["x0"] + s["x1"]) / 2)
            out.add(custom[i][j][0])
    return out


def test_page_against_the_simulator_pipeline_drilldown_and_cooling_failure(
        dash_duo: Any, live_dashboard: Any, artifacts_dir: Path) -> None:
    # Cooling-failure scenario of 180 s: the simulator's air handler fails at 40 % (72 s); 45 s are backfilled,
    # so the failure comes ~27 s after the pipeline is up, once the page is live.
    # 48 servers, 2 per rack, 8 racks per row, one row per cooling zone: 3 zones, 24 racks.
    live = live_dashboard(num_servers=48, layout={"servers_per_rack": 2, "racks_per_row": 8, "rows_per_zone": 1},
                          sim={"scenario": "cooling-failure", "hours": 0.05, "backfill_s": 45})
    dash_duo.start_server(live.app)
    _wait_rendered(dash_duo, "floor-map")
    dash_duo.wait_for_text_to_equal("#status", "LIVE", timeout=15)
    # Record in the page when the banner and the zone outline first appear (the test polls slowly so as
    # not to take the page's main thread from its updates).
    dash_duo.driver.execute_script(WATCH_EMERGENCY_JS)
    watching_since_s = time.time()

    topo = live.topology
    fig = _figure(dash_duo, "floor-map")
    z = fig["data"][0]["z"]
    custom = fig["data"][0]["customdata"]
    shown = {custom[i][j][0] for i in range(len(z)) for j in range(len(z[i])) if z[i][j] is not None}
    assert shown == set(topo.rack_ids), "one coloured cell per rack of the simulated cluster"
    assert sum(v is not None for r in z for v in r) == len(topo.racks)
    assert fig["data"][0]["zmin"] == -5 and fig["data"][0]["zmax"] == 25, "thermal colour scale is fixed"

    # The simulator's cooling failure: banner and the zone's racks outlined within 10 s of its event.
    zone_event = None

    def event_published() -> bool:
        nonlocal zone_event
        zone_event = next(((at, e) for at, e in live.publisher.events if e.event_kind == "cooling_failure"), None)
        return zone_event is not None

    _wait(event_published, 60, "the simulator's cooling_failure event")
    assert zone_event is not None
    published_at, event = zone_event
    assert watching_since_s < published_at, "the failure came before the page was live; raise backfill margin"
    zone_racks = {r.rack_id for r in topo.racks if r.zone_id == event.domain_id}
    _wait(lambda: "COOLING FAILURE" in dash_duo.find_element("#emergency-banner").text
          and _highlighted_racks(dash_duo) == zone_racks, 20, "banner and highlighted zone")
    seen = dash_duo.driver.execute_script("return window.__emergencySeen")
    shown_after_s = max(seen["banner"], seen["outline"]) / 1000 - published_at
    (artifacts_dir / "dashboard_emergency_latency.json").write_text(json.dumps({"shown_after_s": shown_after_s}))
    assert 0 <= shown_after_s < 10.0, f"banner/outline appeared {shown_after_s:.1f} s after the event"
    banner = dash_duo.find_element("#emergency-banner").text
    assert event.domain_id in banner and f"{len(zone_racks)} racks highlighted" in banner
    assert zone_racks < set(topo.rack_ids), "only the failing zone is outlined"

    # Hover shows the numbers of a rack.
    drag = dash_duo.find_element("#floor-map .nsewdrag")
    num_rows, num_cols = len(z), len(z[0])
    ActionChains(dash_duo.driver).move_to_element_with_offset(
        drag, 2.5 * drag.rect["width"] / num_cols, 0.5 * drag.rect["height"] / num_rows).perform()
    target = topo.rows[0].rack_ids[2]
    _wait(lambda: target in (dash_duo.find_element("#floor-map .hoverlayer").text or ""), 5, "hover label")
    hover = dash_duo.find_element("#floor-map .hoverlayer").text
    assert "°C" in hover and "kW" in hover

    # Clicking a rack shows its servers ...
    # a rack of the failing zone (the simulator fails the middle zone), so its panel is flagged too
    row_idx = next(i for i, row in enumerate(topo.rows) if row.rack_ids[4] in zone_racks)
    _click_cell(dash_duo, "floor-map", row_idx, 4, num_rows, num_cols)
    rack = topo.rows[row_idx].rack_ids[4]
    dash_duo.wait_for_contains_text("#rack-title", rack, timeout=10)
    _wait_rendered(dash_duo, "rack-servers")
    servers = [s for r in topo.racks if r.rack_id == rack for s in r.server_ids]
    _wait(lambda: all(s in dash_duo.find_element("#rack-servers").text for s in servers), 10, "rack's servers")
    # ... and the drill-down of its tightest server: every GPU, actual against forecast, its configuration.
    _wait(lambda: dash_duo.find_element("#server-title").text in servers, 10, "server drill-down")
    _wait_rendered(dash_duo, "server-detail")
    _wait(lambda: "configuration" in dash_duo.find_element("#server-config").text, 10, "configuration")
    detail = _figure(dash_duo, "server-detail")
    assert sum(1 for t in detail["data"] if str(t.get("name", "")).startswith("GPU ")) == 8
    assert any(t.get("name") == "latest forecast" for t in detail["data"])

    _wait(lambda: "in emergency zone" in dash_duo.find_element("#rack-servers").text, 10, "rack flagged")
    # The actions log filtered to events shows the failure and the controller's emergency plan, with reasons.
    dash_duo.select_dcc_dropdown("#filter-kind", value="events")
    ActionChains(dash_duo.driver).send_keys(Keys.ESCAPE).perform()
    dash_duo.wait_for_contains_text("#actions-table", "cooling_failure", timeout=10)
    dash_duo.wait_for_contains_text("#actions-table", "emergency_plan", timeout=10)
    kinds = set(dash_duo.driver.execute_script(  # read at once: the table may re-render between two reads
        "return [...document.querySelectorAll('#actions-table .kind')].map(e => e.innerText)"))
    assert kinds == {"event"}, kinds
    time.sleep(1.0)
    _shot(dash_duo, artifacts_dir, "simulator_cooling_failure")

    # The power view uses its own fixed scale.
    dash_duo.find_elements("#metric input")[1].click()
    _wait(lambda: (_figure(dash_duo, "floor-map") or {}).get("data", [{}])[0].get("zmax") == 40, 10, "power map")
    _shot(dash_duo, artifacts_dir, "simulator_power")
    assert dash_duo.get_logs() == [], "browser console must stay clean"


def test_stale_state_appears_when_the_feed_stops(dash_duo: Any, live_dashboard: Any, artifacts_dir: Path) -> None:
    live = live_dashboard(num_servers=40, stale_after_s=3.0)
    dash_duo.start_server(live.app)
    _wait_rendered(dash_duo, "floor-map")
    dash_duo.wait_for_text_to_equal("#status", "LIVE", timeout=15)
    assert not dash_duo.find_element("#stale-banner").is_displayed()

    live.publisher.control.running = False
    stopped = time.monotonic()
    _wait(lambda: "data is stale since" in dash_duo.find_element("#stale-banner").text, 10, "stale banner")
    assert time.monotonic() - stopped < 3.0 + 2 * 1.5 + 2.0  # stale_after_s + two refreshes + transport
    dash_duo.wait_for_text_to_equal("#status", "STALE", timeout=3)
    ready = requests.get(dash_duo.server.url.rstrip("/") + "/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["stale"] and ready.json()["age_s"] > 3.0, ready.text
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
    # the probes stay open for orchestrators, which send no credentials
    alive = requests.get(url + "/healthz", timeout=5)
    assert alive.status_code == 200 and alive.json() == {"service": "dashboard", "alive": True}
    _wait(lambda: requests.get(url + "/readyz", timeout=5).status_code == 200, 15, "readyz 200 with auth on")
    assert requests.get(url + "/readyz", timeout=5).json()["consuming"]

    # Chrome drops credentials embedded in the URL for the page's XHRs; send the header the way a
    # browser does after the login prompt.
    token = base64.b64encode(b"ops:s3cret-pw").decode()
    dash_duo.driver.execute_cdp_cmd("Network.enable", {})
    dash_duo.driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    dash_duo.driver.get(url + "/")
    _wait_rendered(dash_duo, "floor-map", timeout=20)
    dash_duo.wait_for_text_to_equal("#status", "LIVE", timeout=15)
    assert dash_duo.get_logs() == []
