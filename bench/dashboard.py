"""``tapas bench dashboard``: cost of the page's update callbacks with a 1,000-server view.

The view is filled with forecasts, GPU samples, domain aggregates and actions built
from ``foundation.topology.default_topology`` (the shapes the stream worker and controller
publish). Each repeat posts every periodic callback of the page through Dash's own
HTTP endpoint (Flask test client: dispatch, our rendering, JSON serialisation), and
``update_ms_p50`` is the median of their summed time. The same-run baseline
``plotly_baseline_ms_p50`` builds the same figures as validated ``plotly.graph_objects``
figures and serialises them, i.e. what rendering with Plotly alone costs;
``ratio = update_ms_p50 / plotly_baseline_ms_p50``. The issue's target is < 300 ms.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from contracts import (
    Contract,
    ControlEvent,
    DomainForecast,
    GpuReading,
    GpuSample,
    HorizonForecast,
    ReconfigCommand,
    ReconfigParams,
    ServerForecast,
    WorkloadContext,
)
from foundation.topology import Topology

HORIZONS_S = (10.0, 60.0, 300.0)


def synthetic_tick(topology: Topology, at: datetime, rng: np.random.Generator, *, load_frac: float = 0.6,
                   hot_zone: str | None = None, supply_rise_c: float = 0.0,
                   with_samples: bool = True, load: np.ndarray | None = None) -> list[Contract]:
    """One tick of pipeline output for every server: GPU samples, server and domain forecasts.

    Physics is the first-order model of DESIGN.md §5 at steady state (GPU temperature
    = inlet + R_th x GPU power), enough to give the page realistic spreads; a zone in
    ``hot_zone`` gets ``supply_rise_c`` on its inlet (a cooling failure). ``load`` (0-1 per
    server) lets a caller evolve load smoothly between ticks; otherwise it is drawn afresh.
    """
    n = topology.num_servers
    if load is None:
        load = np.clip(load_frac + 0.15 * rng.normal(size=n), 0.05, 1.0)
    out: list[Contract] = []
    sample_at = at - timedelta(seconds=1)
    server_power: dict[str, float] = {}
    zone_inlet: dict[str, float] = {}
    for i, s in enumerate(topology.servers):
        zone_rise = supply_rise_c if s.zone_id == hot_zone else 0.0
        inlet_c = 21.0 + s.inlet_offset_c + zone_rise + 0.2 * float(rng.normal())
        gpu_w = s.sku.idle_w + (s.sku.tdp_w - s.sku.idle_w) * float(load[i]) * (1 + 0.05 * rng.normal(size=s.num_gpus))
        temps = inlet_c + s.thermal_resistance_c_per_w * gpu_w + rng.normal(0, 0.4, size=s.num_gpus)
        power_w = s.base_power_w + float(gpu_w.sum())
        server_power[s.server_id] = power_w
        zone_inlet[s.zone_id] = max(zone_inlet.get(s.zone_id, 0.0), inlet_c)
        hottest = float(temps.max())
        budget_share_w = s.nameplate_w / topology.oversubscription
        trend = (zone_rise * 0.6) if zone_rise else 0.0
        horizons = []
        for h in HORIZONS_S:
            band = 0.8 + 0.004 * h
            t = hottest + trend * min(1.0, h / 60.0) + 0.3 * float(rng.normal())
            p = power_w * (1 + 0.01 * float(rng.normal()))
            horizons.append(HorizonForecast(horizon_s=h, gpu_temp_c=t, gpu_temp_lo_c=t - band, gpu_temp_hi_c=t + band,
                                            power_w=p, power_lo_w=p * 0.95, power_hi_w=p * 1.05))
        if with_samples:
            out.append(GpuSample(
                server_id=s.server_id, sampled_at=sample_at, source="sim",
                gpus=[GpuReading(gpu_index=g, gpu_temp_c=round(float(temps[g]), 2), power_usage_w=round(float(gpu_w[g]), 1),
                                 slowdown_temp_c=s.sku.slowdown_temp_c) for g in range(s.num_gpus)],
                workload=WorkloadContext(prefill_tokens_per_s=4000 * float(load[i]),
                                         decode_tokens_per_s=1500 * float(load[i]), batch_size=24 * float(load[i]),
                                         config_id="llama2-70b-tp8-fp16", instance_ids=[f"inst-{s.server_id}"])))
        out.append(ServerForecast(
            server_id=s.server_id, issued_at=at, based_on_sample_at=sample_at, model_version="physics-default",
            gpu_temp_c=hottest, power_w=power_w, inlet_temp_c=inlet_c, slowdown_temp_c=s.sku.slowdown_temp_c,
            thermal_headroom_c=s.sku.slowdown_temp_c - horizons[0].gpu_temp_hi_c,
            power_headroom_w=budget_share_w - horizons[0].power_hi_w, horizons=horizons,
            rack_id=s.rack_id, row_id=s.row_id, pdu_id=s.pdu_id, zone_id=s.zone_id))
    for row in topology.rows:
        p = sum(server_power[sid] for rack in topology.racks if rack.row_id == row.row_id for sid in rack.server_ids)
        out.append(DomainForecast(domain_kind="row", domain_id=row.row_id, issued_at=at,
                                  num_servers=sum(len(r.server_ids) for r in topology.racks if r.row_id == row.row_id),
                                  power_w=p, power_limit_w=row.budget_w, horizons_s=list(HORIZONS_S),
                                  power_forecast_w=[p * 1.01, p * 1.02, p * 1.03],
                                  power_forecast_hi_w=[p * 1.04, p * 1.07, p * 1.1]))
    for rack in topology.racks:
        p = sum(server_power[sid] for sid in rack.server_ids)
        out.append(DomainForecast(domain_kind="pdu", domain_id=rack.pdu_id, issued_at=at,
                                  num_servers=len(rack.server_ids), power_w=p,
                                  power_limit_w=sum(topology.by_id[s].nameplate_w for s in rack.server_ids)
                                  / topology.oversubscription))
    for zone in topology.zones:
        t = zone_inlet.get(zone.zone_id, 21.0)
        rise = 0.6 * supply_rise_c if zone.zone_id == hot_zone else 0.0
        out.append(DomainForecast(domain_kind="zone", domain_id=zone.zone_id, issued_at=at,
                                  num_servers=0, power_w=0.0, max_inlet_temp_c=t, inlet_limit_c=27.0,
                                  horizons_s=list(HORIZONS_S), power_forecast_w=[0.0] * 3,
                                  power_forecast_hi_w=[0.0] * 3,
                                  inlet_forecast_c=[t + rise * 0.3, t + rise * 0.7, t + rise],
                                  inlet_forecast_hi_c=[t + 0.5 + rise * 0.3, t + 1.0 + rise * 0.7, t + 2 + rise]))
    return out


def synthetic_actions(topology: Topology, at: datetime, rng: np.random.Generator, count: int, *,
                      zone_id: str | None = None) -> list[Contract]:
    """Reconfiguration commands (in ``zone_id`` when given) and an event, shaped like the controller's."""
    out: list[Contract] = []
    pool = [s for s in topology.servers if zone_id is None or s.zone_id == zone_id]
    for _ in range(count):
        s = pool[int(rng.integers(len(pool)))]
        headroom_c = round(0.5 + float(rng.uniform(0, 2.5)), 1)
        cap_mhz = int(rng.choice([1050, 1200, 1275]))
        out.append(ReconfigCommand(
            command_id=f"cmd-{int(rng.integers(1 << 40)):012x}", issued_at=at, expires_at=at + timedelta(minutes=2),
            server_id=s.server_id, instance_id=f"inst-{s.server_id}", action="set_frequency_cap",
            params=ReconfigParams(frequency_cap_mhz=cap_mhz),
            reason=f"hottest GPU forecast within {headroom_c:.1f} °C of slowdown at 60 s; cap {cap_mhz} MHz "
                   f"(fast knob first)", trigger="thermal", headroom=headroom_c, mode="enforce"))
    if zone_id is None:
        out.append(ControlEvent(event_id=f"ev-{int(rng.integers(1 << 40)):012x}", event_kind="thermal_throttle",
                                severity="warning", occurred_at=at, domain_kind="server",
                                domain_id=pool[0].server_id, detail="GPU 3 reports SW thermal slowdown (0x20)"))
    return out


def build_view(num_servers: int, ticks: int, *, seed: int = 0) -> tuple[Any, Topology]:
    """A dashboard view filled with ``ticks`` seconds of a ``num_servers`` cluster."""
    from dashboard.view import DashboardView, FloorLayout
    from foundation.topology import default_topology

    topo = default_topology(num_servers)
    rng = np.random.default_rng(seed)
    t0 = datetime.now(UTC) - timedelta(seconds=ticks)
    view = DashboardView(layout=FloorLayout.from_topology(topo), stale_after_s=3600.0)
    for k in range(ticks):
        at = t0 + timedelta(seconds=k)
        for msg in synthetic_tick(topo, at, rng, with_samples=k >= ticks - 90):
            view.apply(msg, received_at=at)
        if k % 10 == 0:
            for msg in synthetic_actions(topo, at, rng, 5):
                view.apply(msg, received_at=at)
    return view, topo


def tick_payloads(app: Any, inputs: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Dash update requests for every callback fired by the interval tick."""
    out = []
    for key, cb in app.callback_map.items():
        if not any(i["id"] == "tick" for i in cb["inputs"]):
            continue
        outputs = [{"id": p.split(".")[0], "property": p.split(".")[1]}
                   for p in key.strip(".").split("...")]
        ins = [{**i, "value": n if i["id"] == "tick" else inputs.get(f"{i['id']}.{i['property']}")}
               for i in cb["inputs"]]
        state = [{**st, "value": inputs.get(f"{st['id']}.{st['property']}")} for st in cb.get("state", [])]
        out.append({"output": key, "outputs": outputs, "inputs": ins, "changedPropIds": ["tick.n_intervals"],
                    "state": state})
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Median update time of the page's periodic callbacks, and the Plotly-only baseline."""
    import plotly.graph_objects as go

    from dashboard import figures
    from dashboard.app import create_app

    num_servers = 1000
    ticks = 40 if quick else 120
    repeats = 5 if quick else 20
    view, topo = build_view(num_servers, ticks)
    snap = view.snapshot()
    cells = figures.rack_cells(snap.layout, snap.servers, "thermal")
    worst = min((c for c in cells if c.headroom is not None), key=lambda c: c.headroom or 0.0)
    app = create_app(view)
    client = app.server.test_client()
    inputs = {"metric.value": "thermal", "selected-rack.data": worst.rack_id, "selected-server.data": None,
              "power-kind.value": "row", "filter-kind.value": None, "filter-row.value": None}
    payload_count = 0
    update_ms: list[float] = []
    response_bytes = 0
    for n in range(repeats + 1):
        payloads = tick_payloads(app, inputs, n + 1)
        payload_count = len(payloads)
        t = time.perf_counter()
        size = 0
        for p in payloads:
            resp = client.post("/_dash-update-component", json=p)
            if resp.status_code != 200:
                raise RuntimeError(f"callback {p['output']} failed: {resp.status_code} {resp.data[:300]!r}")
            size += len(resp.data)
        if n > 0:  # the first request warms Flask and Dash's caches
            update_ms.append((time.perf_counter() - t) * 1000)
            response_bytes = size
    updater = app._tapas_updater
    figs_per_update = 0
    baseline_ms: list[float] = []
    for _ in range(repeats):
        outs = updater.update_all("thermal", worst.rack_id, None, "row")
        fig_dicts = [o for tup in outs for o in tup if isinstance(o, dict) and "data" in o and "layout" in o]
        figs_per_update = len(fig_dicts)
        t = time.perf_counter()
        for fd in fig_dicts:
            go.Figure(fd).to_json()
        baseline_ms.append((time.perf_counter() - t) * 1000)
    p50 = statistics.median(update_ms)
    base = statistics.median(baseline_ms)
    return {
        "num_servers": topo.num_servers, "num_racks": len(topo.racks), "view_ticks": ticks, "repeats": repeats,
        "callbacks_per_update": payload_count, "figures_per_update": figs_per_update,
        "update_ms_p50": round(p50, 2), "update_ms_max": round(max(update_ms), 2),
        "response_kb": round(response_bytes / 1024, 1),
        "plotly_baseline_ms_p50": round(base, 2), "ratio": round(p50 / base, 3) if base > 0 else float("nan"),
        "target_ms": 300.0, "meets_target": bool(p50 < 300.0),
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(quick=True), indent=2))
