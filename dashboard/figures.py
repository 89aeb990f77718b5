"""Pure figure builders: view data in, Plotly figure dicts out (no I/O, no clock, no Dash).

Figures are returned as plain dicts rather than ``go.Figure`` objects: Dash serialises
either, and skipping Plotly's per-property validation keeps a 1,000-server update well
inside the refresh period (``tapas bench dashboard`` measures both).

Colour scales are fixed, never fitted to the data, so a colour always means the same
headroom: red is 0-3 °C to the GPU slowdown temperature on the thermal map and 0-3 %
of the power budget on the power map, dark red is a predicted crossing (negative
headroom), and green is comfortable (≥ 10 °C, ≥ 15 %).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from contracts import ServerForecast
from dashboard.view import DomainPoint, FloorLayout, GpuPoint, HorizonAccuracy, ServerPoint

Metric = Literal["thermal", "power"]
Figure = dict[str, Any]

# --------------------------------------------------------------------------- theme

BG = "#0b1220"
PANEL = "#111a2b"
GRID = "#1e2a3e"
TEXT = "#c9d4e3"
MUTED = "#7d8ca3"
ACCENT = "#4fc3f7"
HIGHLIGHT = "#ff2e88"
SELECTED = "#ffffff"
SERIES = ("#4fc3f7", "#ffb74d", "#ba68c8", "#81c784", "#f06292", "#fff176", "#4db6ac", "#9575cd",
          "#e57373", "#a1887f")
FONT = "Inter, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


@dataclass(frozen=True)
class ColourScale:
    """A fixed colour scale: ``stops`` are (value, colour) in the metric's own unit."""

    title: str
    unit: str
    zmin: float
    zmax: float
    stops: tuple[tuple[float, str], ...]

    def plotly(self) -> list[list[Any]]:
        """The stops as Plotly's normalised ``colorscale``."""
        span = self.zmax - self.zmin
        return [[(v - self.zmin) / span, c] for v, c in self.stops]

    def colour(self, value: float | None) -> str:
        """The colour of one value (the stop at or below it), grey when unknown."""
        if value is None:
            return "#2a3547"
        chosen = self.stops[0][1]
        for v, c in self.stops:
            if value >= v:
                chosen = c
        return chosen


#: Thermal headroom: °C from the upper forecast of the hottest GPU to its slowdown temperature.
THERMAL_SCALE = ColourScale("thermal headroom", "°C", -5.0, 25.0, (
    (-5.0, "#7f0010"), (0.0, "#e53935"), (3.0, "#fb8c00"), (6.0, "#fdd835"), (10.0, "#7cb342"),
    (18.0, "#2e7d32"), (25.0, "#1b5e20")))
#: Power headroom: % of the server's share of its power budget still unused.
POWER_SCALE = ColourScale("power headroom", "% of budget", -10.0, 40.0, (
    (-10.0, "#7f0010"), (0.0, "#e53935"), (3.0, "#fb8c00"), (8.0, "#fdd835"), (15.0, "#7cb342"),
    (28.0, "#2e7d32"), (40.0, "#1b5e20")))
SCALES: dict[str, ColourScale] = {"thermal": THERMAL_SCALE, "power": POWER_SCALE}


def base_layout(**overrides: Any) -> dict[str, Any]:
    """Dark layout shared by every figure."""
    layout: dict[str, Any] = {
        "paper_bgcolor": PANEL, "plot_bgcolor": PANEL,
        "font": {"family": FONT, "color": TEXT, "size": 12},
        "margin": {"l": 56, "r": 16, "t": 30, "b": 36},
        "hoverlabel": {"bgcolor": "#0f1a2c", "bordercolor": ACCENT, "font": {"family": FONT, "color": TEXT}},
        "legend": {"orientation": "h", "y": -0.18, "x": 0, "font": {"size": 11}, "bgcolor": "rgba(0,0,0,0)"},
        "uirevision": "keep",
    }
    layout.update(overrides)
    return layout


def _axis(**kw: Any) -> dict[str, Any]:
    return {"gridcolor": GRID, "zerolinecolor": GRID, "linecolor": GRID, "tickfont": {"color": MUTED}, **kw}


def empty_figure(message: str) -> Figure:
    """A blank panel with a centred message (no data yet, nothing selected)."""
    return {"data": [], "layout": base_layout(
        xaxis={"visible": False}, yaxis={"visible": False},
        annotations=[{"text": message, "showarrow": False, "font": {"color": MUTED, "size": 14},
                      "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}])}


# --------------------------------------------------------------------------- headroom per server / rack


def server_headroom(f: ServerForecast, metric: Metric) -> float:
    """A server's headroom in the metric's unit (°C, or % of its power budget share)."""
    if metric == "thermal":
        return f.thermal_headroom_c
    allowed_w = f.power_w + f.power_headroom_w
    return 100.0 * f.power_headroom_w / allowed_w if allowed_w > 0 else -100.0


@dataclass(frozen=True)
class RackCell:
    """One rack on the floor map: its worst server's headroom and what the hover shows."""

    rack_id: str
    row_id: str
    position: int
    zone_id: str
    headroom: float | None
    worst_server: str | None
    hottest_gpu_c: float | None
    power_w: float
    num_reporting: int
    num_servers: int


def rack_cells(layout: FloorLayout, servers: Mapping[str, ServerForecast], metric: Metric) -> list[RackCell]:
    """Aggregate servers to racks: the rack shows its *worst* server (operators act on the tightest spot).

    Examples:
        >>> rack_cells(FloorLayout(), {}, "thermal")
        []
    """
    cells: list[RackCell] = []
    for row_id in layout.rows:
        for pos, rack_id in enumerate(layout.racks_by_row[row_id]):
            worst: float | None = None
            worst_sid: str | None = None
            hottest: float | None = None
            power = 0.0
            n = 0
            sids = layout.servers_by_rack.get(rack_id, [])
            if metric == "power":
                used = allowed = 0.0
            for sid in sids:
                f = servers.get(sid)
                if f is None:
                    continue
                n += 1
                power += f.power_w
                h = server_headroom(f, metric)
                if worst is None or h < worst:
                    worst, worst_sid = h, sid
                if hottest is None or f.gpu_temp_c > hottest:
                    hottest = f.gpu_temp_c
                if metric == "power":
                    used += f.power_w
                    allowed += f.power_w + f.power_headroom_w
            cells.append(RackCell(rack_id, row_id, pos, layout.rack_zone.get(rack_id, "?"), worst, worst_sid,
                                  hottest, power, n, len(sids)))
    return cells


def floor_map_figure(layout: FloorLayout, cells: Sequence[RackCell], metric: Metric, *,
                     highlighted_racks: Iterable[str] = (), selected_rack: str | None = None) -> Figure:
    """Rows × racks heatmap, one cell per rack, on the metric's fixed colour scale.

    Racks inside an active emergency's domain get a magenta outline; the selected rack
    a white one. Clicking a cell selects the rack (its ``customdata[0]`` is the rack id).
    """
    rows = layout.rows
    if not rows:
        return empty_figure("waiting for forecasts…")
    scale = SCALES[metric]
    width = max(len(layout.racks_by_row[r]) for r in rows)
    z: list[list[float | None]] = [[None] * width for _ in rows]
    custom: list[list[list[Any]]] = [[["", "", "", "", "", ""] for _ in range(width)] for _ in rows]
    text: list[list[str]] = [[""] * width for _ in rows]
    row_index = {r: i for i, r in enumerate(rows)}
    where: dict[str, tuple[int, int]] = {}
    for c in cells:
        i = row_index[c.row_id]
        z[i][c.position] = c.headroom
        where[c.rack_id] = (i, c.position)
        value = "no data" if c.headroom is None else f"{c.headroom:.1f} {scale.unit}"
        custom[i][c.position] = [
            c.rack_id, c.zone_id, value, c.worst_server or "–",
            "–" if c.hottest_gpu_c is None else f"{c.hottest_gpu_c:.1f} °C",
            f"{c.power_w / 1000:.1f} kW ({c.num_reporting}/{c.num_servers} servers)",
        ]
        text[i][c.position] = "" if c.headroom is None else f"{c.headroom:.0f}"
    shapes: list[dict[str, Any]] = []
    for rack in sorted(set(highlighted_racks)):
        if rack in where:
            i, j = where[rack]
            shapes.append(_cell_box(i, j, HIGHLIGHT, 4, "emergency"))
    if selected_rack in where:
        i, j = where[selected_rack]
        shapes.append(_cell_box(i, j, SELECTED, 2, "selected"))
    trace = {
        "type": "heatmap", "z": z, "x": list(range(width)), "y": list(range(len(rows))),
        "customdata": custom, "text": text, "texttemplate": "%{text}" if width <= 24 else "",
        "textfont": {"color": "#ffffff", "size": 12, "weight": 600, "shadow": "0px 0px 3px #000000"},
        "colorscale": scale.plotly(), "zmin": scale.zmin, "zmax": scale.zmax,
        "xgap": 3, "ygap": 3, "hoverongaps": False,
        "colorbar": {"title": {"text": f"{scale.title}<br>({scale.unit})", "side": "right"},
                     "tickfont": {"color": MUTED}, "outlinewidth": 0, "thickness": 12},
        "hovertemplate": ("<b>%{customdata[0]}</b> · %{customdata[1]}<br>"
                          f"{scale.title}: %{{customdata[2]}}<br>worst server: %{{customdata[3]}}<br>"
                          "hottest GPU: %{customdata[4]}<br>power: %{customdata[5]}<extra></extra>"),
    }
    return {"data": [trace], "layout": base_layout(
        xaxis=_axis(title={"text": "rack position in row", "font": {"color": MUTED}}, tickmode="linear",
                    dtick=1, showgrid=False, zeroline=False, fixedrange=True),
        yaxis=_axis(tickmode="array", tickvals=list(range(len(rows))), ticktext=rows, autorange="reversed",
                    showgrid=False, zeroline=False, fixedrange=True),
        shapes=shapes, margin={"l": 64, "r": 8, "t": 10, "b": 40}, clickmode="event")}


def _cell_box(i: int, j: int, colour: str, width: float, name: str) -> dict[str, Any]:
    return {"type": "rect", "xref": "x", "yref": "y", "x0": j - 0.5, "x1": j + 0.5, "y0": i - 0.5, "y1": i + 0.5,
            "line": {"color": colour, "width": width}, "fillcolor": "rgba(0,0,0,0)", "name": name}


def rack_servers_figure(rack_id: str, server_ids: Sequence[str], servers: Mapping[str, ServerForecast],
                        metric: Metric, *, selected_server: str | None = None,
                        highlighted: bool = False) -> Figure:
    """Rack elevation: one cell per server (top slot at the top) on the same fixed scale."""
    if not server_ids:
        return empty_figure(f"{rack_id}: no servers known")
    scale = SCALES[metric]
    ids = list(server_ids)  # slot 0 first: y grows upwards, so the top slot is drawn at the top
    z: list[list[float | None]] = []
    custom: list[list[Any]] = []
    text: list[list[str]] = []
    for sid in ids:
        f = servers.get(sid)
        h = server_headroom(f, metric) if f else None
        z.append([h])
        text.append([f"{sid}  {'' if h is None else f'{h:.1f} {scale.unit}'}"])
        custom.append([[sid,
                        "–" if f is None else f"{f.gpu_temp_c:.1f} °C (slowdown {f.slowdown_temp_c:.0f} °C)",
                        "–" if f is None else f"{f.power_w:.0f} W, headroom {f.power_headroom_w:.0f} W",
                        "–" if f is None or f.inlet_temp_c is None else f"{f.inlet_temp_c:.1f} °C",
                        "–" if f is None else f"{f.thermal_headroom_c:.1f} °C"]])
    shapes = []
    if selected_server in ids:
        i = ids.index(selected_server)
        shapes.append(_cell_box(i, 0, SELECTED, 2, "selected"))
    trace = {"type": "heatmap", "z": z, "x": [0], "y": list(range(len(ids))), "text": text,
             "texttemplate": "%{text}", "customdata": custom,
             "textfont": {"color": "#ffffff", "size": 12, "weight": 600, "shadow": "0px 0px 3px #000000"},
             "colorscale": scale.plotly(), "zmin": scale.zmin, "zmax": scale.zmax, "showscale": False,
             "ygap": 3, "hovertemplate": ("<b>%{customdata[0]}</b><br>hottest GPU: %{customdata[1]}<br>"
                                          "thermal headroom: %{customdata[4]}<br>power: %{customdata[2]}<br>"
                                          "inlet: %{customdata[3]}<extra></extra>")}
    title = f"{rack_id}" + ("  ⚠ in emergency zone" if highlighted else "")
    return {"data": [trace], "layout": base_layout(
        title={"text": title, "font": {"size": 13, "color": HIGHLIGHT if highlighted else TEXT}, "x": 0.02},
        xaxis={"visible": False, "fixedrange": True},
        yaxis=_axis(tickmode="array", tickvals=list(range(len(ids))),
                    ticktext=[f"slot {i}" for i in range(len(ids))], fixedrange=True,
                    showgrid=False),
        shapes=shapes, margin={"l": 56, "r": 8, "t": 30, "b": 8})}


# --------------------------------------------------------------------------- power and inlet over time


def _thin(points: Sequence[DomainPoint], max_points: int) -> Sequence[DomainPoint]:
    step = max(1, len(points) // max_points)
    return points[::step] if step > 1 else points


def domain_power_figure(history: Mapping[str, Sequence[DomainPoint]], forecasts: Mapping[str, Any], *,
                        now_s: float, max_lines: int = 8, max_points: int = 240,
                        history_s: float = 600.0) -> Figure:
    """Each domain's power over time against its limit, with the forecast and its band ahead of now.

    When every domain shown has a limit, power is plotted in % of it (the limit is the
    100 % line); otherwise in kW. With many domains only the ``max_lines`` closest to
    their limit are drawn, so the chart stays readable on a large floor.
    """
    if not history:
        return empty_figure("waiting for row/PDU power…")

    def load_frac(did: str) -> float:
        pts = history[did]
        last = pts[-1]
        return last.power_w / last.power_limit_w if last.power_limit_w else last.power_w / 1e9

    shown = sorted(history, key=load_frac, reverse=True)[:max_lines]
    shown.sort()
    pct = all(history[d][-1].power_limit_w for d in shown)
    traces: list[dict[str, Any]] = []
    for k, did in enumerate(shown):
        colour = SERIES[k % len(SERIES)]
        pts = _thin(history[did], max_points)
        limit = pts[-1].power_limit_w or 0.0

        def y(v: float, limit_w: float | None) -> float:
            return 100.0 * v / limit_w if pct and limit_w else v / 1000.0

        traces.append({"type": "scatter", "mode": "lines", "name": did, "legendgroup": did,
                       "x": [p.at_s * 1000 for p in pts], "y": [round(y(p.power_w, p.power_limit_w), 2) for p in pts],
                       "customdata": [[p.power_w / 1000, (p.power_limit_w or 0) / 1000] for p in pts],
                       "line": {"color": colour, "width": 1.8},
                       "hovertemplate": f"<b>{did}</b><br>%{{customdata[0]:.1f}} kW of %{{customdata[1]:.1f}} kW"
                                        "<extra></extra>"})
        f = forecasts.get(did)
        if f is not None and f.horizons_s:
            t0 = f.issued_at.timestamp()
            xs = [t0 * 1000] + [(t0 + h) * 1000 for h in f.horizons_s]
            mid = [y(f.power_w, limit)] + [y(v, limit) for v in f.power_forecast_w]
            hi = [y(f.power_w, limit)] + [y(v, limit) for v in f.power_forecast_hi_w]
            traces.append({"type": "scatter", "mode": "lines", "x": xs, "y": hi, "legendgroup": did,
                           "showlegend": False, "line": {"width": 0, "color": colour}, "hoverinfo": "skip"})
            traces.append({"type": "scatter", "mode": "lines+markers", "x": xs, "y": mid, "legendgroup": did,
                           "showlegend": False, "fill": "tonexty", "fillcolor": _rgba(colour, 0.18),
                           "line": {"color": colour, "width": 1.5, "dash": "dot"}, "marker": {"size": 4},
                           "hovertemplate": f"<b>{did}</b> forecast %{{y:.1f}}{' %' if pct else ' kW'}"
                                            "<extra></extra>"})
    unit = "% of row/PDU limit" if pct else "kW"
    shapes = [{"type": "line", "xref": "x", "yref": "paper", "x0": now_s * 1000, "x1": now_s * 1000, "y0": 0,
               "y1": 1, "line": {"color": MUTED, "width": 1, "dash": "dash"}}]
    if pct:
        shapes.append({"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": 100, "y1": 100,
                       "line": {"color": "#e53935", "width": 2}})
    return {"data": traces, "layout": base_layout(
        xaxis=_axis(type="date", range=_time_range(now_s, history_s, forecasts)),
        yaxis=_axis(title={"text": unit, "font": {"color": MUTED}}),
        shapes=shapes, annotations=[_now_label(now_s)] + ([
            {"text": "limit", "xref": "paper", "yref": "y", "x": 1, "y": 100, "xanchor": "right",
             "yanchor": "bottom", "showarrow": False, "font": {"color": "#e53935", "size": 11}}] if pct else []))}


def zone_inlet_figure(history: Mapping[str, Sequence[DomainPoint]], forecasts: Mapping[str, Any], *,
                      now_s: float, max_points: int = 240, history_s: float = 600.0) -> Figure:
    """Max inlet temperature per cooling zone over time against its limit, forecast ahead of now."""
    zones = [z for z in sorted(history) if any(p.max_inlet_temp_c is not None for p in history[z])]
    if not zones:
        return empty_figure("waiting for zone inlet temperatures…")
    traces: list[dict[str, Any]] = []
    shapes: list[dict[str, Any]] = [{"type": "line", "xref": "x", "yref": "paper", "x0": now_s * 1000,
                                     "x1": now_s * 1000, "y0": 0, "y1": 1,
                                     "line": {"color": MUTED, "width": 1, "dash": "dash"}}]
    limits: set[float] = set()
    for k, zid in enumerate(zones):
        colour = SERIES[k % len(SERIES)]
        pts = [p for p in _thin(history[zid], max_points) if p.max_inlet_temp_c is not None]
        traces.append({"type": "scatter", "mode": "lines", "name": zid, "legendgroup": zid,
                       "x": [p.at_s * 1000 for p in pts], "y": [p.max_inlet_temp_c for p in pts],
                       "line": {"color": colour, "width": 1.8},
                       "hovertemplate": f"<b>{zid}</b> inlet %{{y:.1f}} °C<extra></extra>"})
        if pts and pts[-1].inlet_limit_c is not None:
            limits.add(pts[-1].inlet_limit_c)
        f = forecasts.get(zid)
        if f is not None and f.inlet_forecast_c and f.max_inlet_temp_c is not None:
            t0 = f.issued_at.timestamp()
            xs = [t0 * 1000] + [(t0 + h) * 1000 for h in f.horizons_s]
            hi = [f.max_inlet_temp_c] + list(f.inlet_forecast_hi_c or f.inlet_forecast_c)
            traces.append({"type": "scatter", "mode": "lines", "x": xs, "y": hi, "legendgroup": zid,
                           "showlegend": False, "line": {"width": 0, "color": colour}, "hoverinfo": "skip"})
            traces.append({"type": "scatter", "mode": "lines+markers", "x": xs,
                           "y": [f.max_inlet_temp_c] + list(f.inlet_forecast_c), "legendgroup": zid,
                           "showlegend": False, "fill": "tonexty", "fillcolor": _rgba(colour, 0.18),
                           "line": {"color": colour, "width": 1.5, "dash": "dot"}, "marker": {"size": 4},
                           "hovertemplate": f"<b>{zid}</b> forecast %{{y:.1f}} °C<extra></extra>"})
    for lim in sorted(limits):
        shapes.append({"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": lim, "y1": lim,
                       "line": {"color": "#e53935", "width": 2}})
    return {"data": traces, "layout": base_layout(
        xaxis=_axis(type="date", range=_time_range(now_s, history_s, forecasts)),
        yaxis=_axis(title={"text": "max inlet °C", "font": {"color": MUTED}}),
        shapes=shapes, annotations=[_now_label(now_s)])}


def _time_range(now_s: float, history_s: float, forecasts: Mapping[str, Any]) -> list[float]:
    """A fixed window: ``history_s`` before now, up to the longest forecast horizon after it."""
    ahead_s = max((max(f.horizons_s, default=0.0) for f in forecasts.values()), default=0.0)
    return [(now_s - history_s) * 1000, (now_s + ahead_s + 5) * 1000]


def _now_label(now_s: float) -> dict[str, Any]:
    return {"text": "now", "xref": "x", "yref": "paper", "x": now_s * 1000, "y": 1, "yanchor": "bottom",
            "showarrow": False, "font": {"color": MUTED, "size": 10}}


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


# --------------------------------------------------------------------------- server drill-down


def server_detail_figure(server_id: str, forecasts: Sequence[ServerPoint], gpus: Sequence[GpuPoint], *,
                         slowdown_temp_c: float | None, now_s: float, history_s: float = 180.0) -> Figure:
    """Per-GPU temperature and power, with the hottest-GPU and server-power actual against forecast.

    The forecast line is the shortest-horizon forecast plotted at its *target* time
    (what was predicted for that instant), the band its interval; markers ahead of now
    are the latest forecast at every horizon.
    """
    if not forecasts and not gpus:
        return empty_figure(f"{server_id}: no data yet")
    traces: list[dict[str, Any]] = []
    num_gpus = max((len(g.temps_c) for g in gpus), default=0)
    gx = [g.at_s * 1000 for g in gpus]
    for i in range(num_gpus):
        colour = _rgba(SERIES[i % len(SERIES)], 0.55)
        traces.append({"type": "scatter", "mode": "lines", "x": gx, "y": [g.temps_c[i] for g in gpus],
                       "name": f"GPU {i}", "legendgroup": f"gpu{i}", "line": {"width": 1, "color": colour},
                       "xaxis": "x", "yaxis": "y", "hovertemplate": f"GPU {i}: %{{y:.1f}} °C<extra></extra>"})
        traces.append({"type": "scatter", "mode": "lines", "x": gx, "y": [g.powers_w[i] for g in gpus],
                       "showlegend": False, "legendgroup": f"gpu{i}", "line": {"width": 1, "color": colour},
                       "xaxis": "x2", "yaxis": "y2", "hovertemplate": f"GPU {i}: %{{y:.0f}} W<extra></extra>"})
    if forecasts:
        fx = [p.at_s * 1000 for p in forecasts]
        traces.append({"type": "scatter", "mode": "lines", "x": fx, "y": [p.gpu_temp_c for p in forecasts],
                       "name": "hottest GPU (actual)", "line": {"color": TEXT, "width": 2.5}, "xaxis": "x",
                       "yaxis": "y", "hovertemplate": "hottest %{y:.1f} °C<extra></extra>"})
        traces.append({"type": "scatter", "mode": "lines", "x": fx, "y": [p.power_w / 1000 for p in forecasts],
                       "name": "server power (actual)", "line": {"color": TEXT, "width": 2.5}, "xaxis": "x3",
                       "yaxis": "y3", "hovertemplate": "%{y:.2f} kW<extra></extra>"})
        with_h = [p for p in forecasts if p.horizons]
        if with_h:
            h0 = with_h[-1].horizons[0][0]
            aligned = [(p.at_s + h0, p.horizons[0]) for p in with_h if p.horizons[0][0] == h0]
            ax = [t * 1000 for t, _ in aligned]
            for axis, lo_i, mid_i, hi_i, scale_by, label in (("", 2, 1, 3, 1.0, "°C"), ("3", 5, 4, 6, 1000.0, "kW")):
                traces.append({"type": "scatter", "mode": "lines", "x": ax,
                               "y": [h[hi_i] / scale_by for _, h in aligned], "line": {"width": 0},
                               "showlegend": False, "hoverinfo": "skip", "xaxis": f"x{axis}", "yaxis": f"y{axis}"})
                traces.append({"type": "scatter", "mode": "lines", "x": ax,
                               "y": [h[lo_i] / scale_by for _, h in aligned], "line": {"width": 0},
                               "fill": "tonexty", "fillcolor": _rgba(ACCENT, 0.18), "showlegend": False,
                               "hoverinfo": "skip", "xaxis": f"x{axis}", "yaxis": f"y{axis}"})
                traces.append({"type": "scatter", "mode": "lines", "x": ax,
                               "y": [h[mid_i] / scale_by for _, h in aligned],
                               "name": f"forecast made {h0:.0f} s earlier" if axis == "" else None,
                               "showlegend": axis == "", "legendgroup": "fc",
                               "line": {"color": ACCENT, "width": 1.5, "dash": "dot"}, "xaxis": f"x{axis}",
                               "yaxis": f"y{axis}", "hovertemplate": f"forecast %{{y:.1f}} {label}<extra></extra>"})
            last = with_h[-1]
            ahead_x = [(last.at_s + h[0]) * 1000 for h in last.horizons]
            traces.append({"type": "scatter", "mode": "markers", "x": ahead_x, "y": [h[1] for h in last.horizons],
                           "error_y": {"type": "data", "symmetric": False,
                                       "array": [h[3] - h[1] for h in last.horizons],
                                       "arrayminus": [h[1] - h[2] for h in last.horizons], "color": ACCENT},
                           "marker": {"color": ACCENT, "size": 7, "symbol": "diamond"}, "name": "latest forecast",
                           "xaxis": "x", "yaxis": "y",
                           "hovertemplate": "+%{customdata:.0f} s: %{y:.1f} °C<extra></extra>",
                           "customdata": [h[0] for h in last.horizons]})
            traces.append({"type": "scatter", "mode": "markers", "x": ahead_x,
                           "y": [h[4] / 1000 for h in last.horizons], "showlegend": False,
                           "error_y": {"type": "data", "symmetric": False,
                                       "array": [(h[6] - h[4]) / 1000 for h in last.horizons],
                                       "arrayminus": [(h[4] - h[5]) / 1000 for h in last.horizons],
                                       "color": ACCENT},
                           "marker": {"color": ACCENT, "size": 7, "symbol": "diamond"}, "xaxis": "x3", "yaxis": "y3",
                           "hovertemplate": "%{y:.2f} kW<extra></extra>"})
    max_h = max((h[0] for p in forecasts for h in p.horizons[-1:]), default=0.0)
    x_range = [(now_s - history_s) * 1000, (now_s + max_h + 5) * 1000]
    shapes = [{"type": "line", "xref": "x", "yref": "paper", "x0": now_s * 1000, "x1": now_s * 1000, "y0": 0,
               "y1": 1, "line": {"color": MUTED, "width": 1, "dash": "dash"}}]
    if slowdown_temp_c is not None:
        shapes.append({"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": slowdown_temp_c,
                       "y1": slowdown_temp_c, "line": {"color": "#e53935", "width": 2}})
    return {"data": traces, "layout": base_layout(
        xaxis=_axis(type="date", anchor="y", domain=[0, 1], matches="x3", showticklabels=False),
        xaxis2=_axis(type="date", anchor="y2", matches="x3", showticklabels=False),
        xaxis3=_axis(type="date", anchor="y3", range=x_range),
        yaxis=_axis(domain=[0.58, 1.0], title={"text": "GPU °C", "font": {"color": MUTED, "size": 11}}),
        yaxis2=_axis(domain=[0.31, 0.53], title={"text": "GPU W", "font": {"color": MUTED, "size": 11}}),
        yaxis3=_axis(domain=[0.0, 0.26], title={"text": "server kW", "font": {"color": MUTED, "size": 11}}),
        shapes=shapes, margin={"l": 56, "r": 16, "t": 52, "b": 30}, showlegend=True,
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "font": {"size": 10},
                "bgcolor": "rgba(0,0,0,0)"})}


# --------------------------------------------------------------------------- models


def accuracy_figure(accuracy: Sequence[HorizonAccuracy]) -> Figure:
    """Forecast MAE per horizon over the accuracy window: temperature (°C) and power (kW)."""
    scored = [a for a in accuracy if a.num_matched > 0]
    if not scored:
        return empty_figure("accuracy appears once forecasts reach their horizon")
    labels = [f"{a.horizon_s:.0f} s" for a in scored]
    return {"data": [
        {"type": "bar", "x": labels, "y": [a.temp_mae_c for a in scored], "name": "temperature MAE (°C)",
         "marker": {"color": ACCENT}, "offsetgroup": "t", "yaxis": "y",
         "customdata": [a.num_matched for a in scored],
         "hovertemplate": "%{x}: %{y:.2f} °C (n=%{customdata})<extra></extra>"},
        {"type": "bar", "x": labels, "y": [(a.power_mae_w or 0) / 1000 for a in scored],
         "name": "server power MAE (kW)", "marker": {"color": "#ffb74d"}, "offsetgroup": "p", "yaxis": "y2",
         "hovertemplate": "%{x}: %{y:.3f} kW<extra></extra>"},
    ], "layout": base_layout(
        barmode="group", xaxis=_axis(title={"text": "forecast horizon", "font": {"color": MUTED}, "standoff": 4}),
        yaxis=_axis(title={"text": "°C", "font": {"color": MUTED}}, rangemode="tozero"),
        yaxis2=_axis(title={"text": "kW", "font": {"color": MUTED}}, overlaying="y", side="right",
                     rangemode="tozero", showgrid=False),
        margin={"l": 48, "r": 48, "t": 34, "b": 40},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0})}
