"""The page's component tree, its stylesheet and the small HTML builders (banners, actions log, config).

Component ids are the page's test surface (browser tests and operators' scripts find
elements by them); keep them stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dash import dcc, html

from contracts import GpuSample, ServerForecast
from dashboard.figures import BG, POWER_SCALE, THERMAL_SCALE, ColourScale
from dashboard.view import ActionEntry, Emergency

ACTION_KINDS = (("placement", "placement hints"), ("routing", "routing weights"),
                ("reconfig", "reconfiguration"), ("event", "events"))
MAX_ACTION_ROWS = 60

STYLESHEET = """
:root { --bg:#0b1220; --panel:#111a2b; --line:#1e2a3e; --text:#c9d4e3; --muted:#7d8ca3; --accent:#4fc3f7;
        --crit:#ff2e88; --warn:#ffb020; --ok:#43a047; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--text);
       font-family: Inter, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; font-size:13px; }
.topbar { display:flex; align-items:center; gap:16px; padding:10px 18px; border-bottom:1px solid var(--line);
          background:#0d1526; }
.brand { font-weight:700; letter-spacing:.08em; color:#fff; font-size:15px; }
.brand small { color:var(--muted); font-weight:400; letter-spacing:0; margin-left:8px; }
.spacer { flex:1; }
.pill { padding:3px 10px; border-radius:999px; font-weight:600; font-size:12px; border:1px solid var(--line); }
.pill.live { color:#0b1220; background:var(--ok); border-color:var(--ok); }
.pill.stale { color:#0b1220; background:var(--warn); border-color:var(--warn); }
.pill.waiting { color:var(--muted); }
.meta { color:var(--muted); font-size:12px; }
.banner { display:none; }
.banner.show { display:block; margin:10px 18px 0; padding:10px 14px; border-radius:6px; font-weight:600; }
.banner.critical { background:rgba(255,46,136,.16); border:1px solid var(--crit); color:#ffd1e5; }
.banner.stale { background:rgba(255,176,32,.14); border:1px solid var(--warn); color:#ffe2a8; }
.banner .tag { display:inline-block; background:var(--crit); color:#fff; padding:1px 8px; border-radius:4px;
               margin-right:10px; letter-spacing:.06em; }
.banner.stale .tag { background:var(--warn); color:#0b1220; }
.grid { display:grid; gap:12px; padding:12px 18px 18px; grid-template-columns: repeat(12, 1fr); }
.card { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:10px 12px;
        min-width:0; }
.card h3 { margin:0 0 6px; font-size:12px; text-transform:uppercase; letter-spacing:.1em; color:var(--muted);
           font-weight:600; display:flex; align-items:center; gap:12px; }
.card h3 .hint { text-transform:none; letter-spacing:0; font-weight:400; }
.span-8 { grid-column: span 8; } .span-4 { grid-column: span 4; } .span-6 { grid-column: span 6; }
.span-12 { grid-column: span 12; } .span-3 { grid-column: span 3; } .span-9 { grid-column: span 9; }
.radio label { margin-right:12px; color:var(--text); font-size:12px; text-transform:none; letter-spacing:0; }
.radio input { margin-right:4px; accent-color: var(--accent); }
.legend { display:flex; gap:4px; align-items:center; font-size:11px; color:var(--muted); margin-top:4px; }
.legend span.sw { display:inline-block; width:26px; height:10px; border-radius:2px; }
.legend span.lbl { margin-right:6px; }
table.log { width:100%; border-collapse:collapse; font-size:12px; }
table.log th { text-align:left; color:var(--muted); font-weight:600; border-bottom:1px solid var(--line);
               padding:4px 6px; position:sticky; top:0; background:var(--panel); }
table.log td { border-bottom:1px solid #172238; padding:4px 6px; vertical-align:top; }
table.log td.nowrap { white-space:nowrap; }
.logwrap { max-height:320px; overflow-y:auto; }
.kind { padding:1px 6px; border-radius:3px; font-size:11px; font-weight:600; color:#0b1220; }
.kind.placement { background:#81c784; } .kind.routing { background:#4fc3f7; }
.kind.reconfig { background:#ffb74d; } .kind.event { background:#ff2e88; color:#fff; }
.filters { display:flex; gap:8px; margin-bottom:6px; }
.filters .dash-dropdown, .filters .Select { min-width:220px; }
.cfg { display:grid; grid-template-columns: auto 1fr; gap:4px 12px; font-size:12px; }
.cfg .k { color:var(--muted); }
.phase { display:flex; height:14px; border-radius:3px; overflow:hidden; margin:6px 0 2px; background:#1b263a; }
.phase .prefill { background:#ba68c8; } .phase .decode { background:#4fc3f7; }
.muted { color:var(--muted); }
.version { font-size:12px; margin-bottom:4px; }
.version b { color:#fff; }
"""

INDEX_STRING = """<!DOCTYPE html>
<html lang="en">
    <head>
        {%metas%}
        <title>{%title%}</title>
        {%favicon%}
        {%css%}
        <style>""" + STYLESHEET + """</style>
    </head>
    <body>
        {%app_entry%}
        <footer>{%config%}{%scripts%}{%renderer%}</footer>
    </body>
</html>"""


def _scale_legend(scale: ColourScale) -> html.Div:
    parts: list[Any] = []
    for v, c in scale.stops[:-1]:
        parts += [html.Span(className="sw", style={"background": c}), html.Span(f"≥{v:g}", className="lbl")]
    return html.Div([html.Span(f"{scale.title} ({scale.unit}):", className="lbl"), *parts], className="legend")


def graph(graph_id: str, height_px: int) -> dcc.Graph:
    """A graph with the mode bar off and a fixed height (avoids layout jumps on update)."""
    return dcc.Graph(id=graph_id, config={"displayModeBar": False, "displaylogo": False},
                     style={"height": f"{height_px}px"})


def page(refresh_s: float) -> html.Div:
    """The whole page."""
    return html.Div([
        html.Div([
            html.Span(["TAPAS", html.Small("thermal & power headroom · live")], className="brand"),
            html.Span(className="spacer"),
            html.Span(id="model-badge", className="meta"),
            html.Span(id="data-clock", className="meta"),
            html.Span("waiting for data", id="status", className="pill waiting"),
        ], className="topbar"),
        html.Div(id="emergency-banner", className="banner"),
        html.Div(id="stale-banner", className="banner"),
        html.Div([
            html.Div([
                html.H3(["Floor map · rows × racks",
                         dcc.RadioItems(id="metric", value="thermal", inline=True, className="radio",
                                        options=[{"label": "thermal headroom (°C)", "value": "thermal"},
                                                 {"label": "power headroom (% of budget)", "value": "power"}]),
                         html.Span("click a rack to see its servers", className="hint muted")]),
                graph("floor-map", 330),
                html.Div(id="scale-legend", children=_scale_legend(THERMAL_SCALE)),
            ], className="card span-8"),
            html.Div([
                html.H3(["Rack", html.Span(id="rack-title", className="hint")]),
                graph("rack-servers", 318),
            ], className="card span-4"),
            html.Div([
                html.H3(["Server drill-down", html.Span(id="server-title", className="hint")]),
                graph("server-detail", 330),
            ], className="card span-9"),
            html.Div([html.H3("Configuration & phase mix"), html.Div(id="server-config")], className="card span-3"),
            html.Div([
                html.H3(["Power vs limit",
                         dcc.RadioItems(id="power-kind", value="row", inline=True, className="radio",
                                        options=[{"label": "rows", "value": "row"},
                                                 {"label": "PDUs", "value": "pdu"}])]),
                graph("power-chart", 280),
            ], className="card span-6"),
            html.Div([html.H3("Inlet temperature per cooling zone"), graph("inlet-chart", 280)],
                     className="card span-6"),
            html.Div([
                html.H3("Actions · what TAPAS did and why"),
                html.Div([
                    dcc.Dropdown(id="filter-kind", multi=True, placeholder="all types",
                                 options=[{"label": lbl, "value": v} for v, lbl in ACTION_KINDS]),
                    dcc.Dropdown(id="filter-row", placeholder="all rows", options=[]),
                ], className="filters"),
                html.Div(id="actions-table", className="logwrap"),
            ], className="card span-8"),
            html.Div([
                html.H3("Models · forecast accuracy (last hour)"),
                html.Div(id="model-version", className="version"),
                graph("accuracy-chart", 230),
            ], className="card span-4"),
        ], className="grid"),
        dcc.Store(id="selected-rack"),
        dcc.Store(id="selected-server"),
        dcc.Store(id="actions-shown"),
        dcc.Interval(id="tick", interval=int(refresh_s * 1000), n_intervals=0),
    ], style={"background": BG, "minHeight": "100vh"})


def scale_legend(metric: str) -> html.Div:
    """The fixed colour legend of the selected metric."""
    return _scale_legend(POWER_SCALE if metric == "power" else THERMAL_SCALE)


def hhmmss(at: datetime) -> str:
    """Wall-clock time of an instant, UTC, as operators read it on the page."""
    return at.strftime("%H:%M:%S") + " UTC"


def emergency_banner(emergencies: Sequence[Emergency]) -> tuple[list[Any], str]:
    """Children and class of the emergency banner (hidden when there is none)."""
    if not emergencies:
        return [], "banner"
    lines: list[Any] = []
    for e in sorted(emergencies, key=lambda e: e.occurred_at):
        title = e.event_kind.replace("_", " ").upper()
        until = f" until {hhmmss(e.ends_at)}" if e.ends_at else ""
        lines.append(html.Div([
            html.Span(title, className="tag"),
            f"{e.domain_kind} {e.domain_id} since {hhmmss(e.occurred_at)}{until}",
            f" · {len(e.racks)} racks highlighted on the map" if e.racks else "",
            f" — {e.detail}" if e.detail else "",
        ], **{"data-zone": e.domain_id}))  # type: ignore[arg-type]
    return lines, "banner show critical"


def stale_banner(stale_since: datetime | None, now: datetime) -> tuple[list[Any], str]:
    """Children and class of the stale-data banner."""
    if stale_since is None:
        return [], "banner"
    age_s = (now - stale_since).total_seconds()
    return [html.Span("STALE", className="tag"),
            f"data is stale since {stale_since.strftime('%H:%M:%S')} UTC "
            f"(no forecast for {age_s:.0f} s; the map shows the last values received)"], "banner show stale"


def actions_table(entries: Sequence[ActionEntry], kinds: Sequence[str] | None, row_id: str | None) -> html.Table:
    """The newest actions first, filtered by type and row."""
    wanted = set(kinds) if kinds else None
    rows: list[Any] = []
    for a in reversed(entries):
        if wanted is not None and a.kind not in wanted:
            continue
        if row_id and a.row_id != row_id:
            continue
        rows.append(html.Tr([
            html.Td(a.at.strftime("%H:%M:%S"), className="nowrap"),
            html.Td(html.Span(a.kind, className=f"kind {a.kind}"), className="nowrap"),
            html.Td(a.target, className="nowrap"), html.Td(a.row_id or "–", className="nowrap"), html.Td(a.summary),
            html.Td(a.reason), html.Td(a.headroom, className="nowrap"),
        ], className=f"action {a.kind}"))
        if len(rows) >= MAX_ACTION_ROWS:
            break
    if not rows:
        rows = [html.Tr(html.Td("no actions yet" if not entries else "no action matches the filters",
                                colSpan=7, className="muted"))]
    head = html.Thead(html.Tr([html.Th(h) for h in ("time", "type", "target", "row", "action", "reason",
                                                     "headroom")]))
    return html.Table([head, html.Tbody(rows)], className="log")


def server_config(forecast: ServerForecast | None, sample: GpuSample | None) -> list[Any]:
    """Configuration and prefill/decode mix of the instances on a server."""
    if forecast is None and sample is None:
        return [html.Div("select a server", className="muted")]
    items: list[Any] = []

    def kv(k: str, v: str) -> None:
        items.extend([html.Span(k, className="k"), html.Span(v)])

    w = sample.workload if sample is not None else None
    if w is not None:
        kv("configuration", w.config_id or "–")
        kv("frequency cap", f"{w.frequency_cap_mhz:.0f} MHz" if w.frequency_cap_mhz else "none")
        kv("batch", f"{w.batch_size:.1f}")
        kv("instances", ", ".join(w.instance_ids) or "–")
        kv("prefill", f"{w.prefill_tokens_per_s:,.0f} tok/s")
        kv("decode", f"{w.decode_tokens_per_s:,.0f} tok/s")
    if forecast is not None:
        kv("hottest GPU", f"{forecast.gpu_temp_c:.1f} °C / slowdown {forecast.slowdown_temp_c:.0f} °C")
        kv("thermal headroom", f"{forecast.thermal_headroom_c:.1f} °C")
        kv("power", f"{forecast.power_w:,.0f} W (headroom {forecast.power_headroom_w:,.0f} W)")
        kv("inlet", "–" if forecast.inlet_temp_c is None else f"{forecast.inlet_temp_c:.1f} °C")
        kv("model", forecast.model_version)
    out: list[Any] = [html.Div(items, className="cfg")]
    if w is not None:
        total = w.prefill_tokens_per_s + w.decode_tokens_per_s
        pre = 100.0 * w.prefill_tokens_per_s / total if total > 0 else 0.0
        out += [html.Div([html.Div(className="prefill", style={"width": f"{pre:.1f}%"}),
                          html.Div(className="decode", style={"width": f"{100 - pre:.1f}%" if total else "0%"})],
                         className="phase", title="prefill vs decode tokens/s"),
                html.Div(f"phase mix: {pre:.0f} % prefill · {100 - pre:.0f} % decode" if total else "idle",
                         className="muted")]
    elif sample is None:
        out.append(html.Div("no GPU samples for this server on the telemetry topic", className="muted"))
    return out
