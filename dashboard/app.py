"""The Dash app: wires the page's callbacks to :class:`PageUpdater`, which renders from the view.

``PageUpdater`` holds all update logic as plain methods (no Dash context needed), so
``tapas bench dashboard`` times exactly what the callbacks run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import dash
from dash import Input, Output, State, no_update

from dashboard import figures, layout
from dashboard.view import DashboardView, ViewSnapshot


class PageUpdater:
    """Everything the page's periodic callbacks compute, from one view."""

    def __init__(self, view: DashboardView) -> None:
        self.view = view

    def overview(self, metric: str, selected_rack: str | None) -> tuple[Any, ...]:
        """Floor map, banners, status pill, data clock and colour legend."""
        snap = self.view.snapshot()
        m: figures.Metric = "power" if metric == "power" else "thermal"
        cells = figures.rack_cells(snap.layout, snap.servers, m)
        floor = figures.floor_map_figure(snap.layout, cells, m, highlighted_racks=snap.highlighted_racks,
                                         selected_rack=selected_rack)
        em_children, em_class = layout.emergency_banner(snap.emergencies)
        st_children, st_class = layout.stale_banner(snap.stale_since, snap.taken_at)
        if snap.last_message_at is None:
            status, status_class = "waiting for data", "pill waiting"
        elif snap.stale_since is not None:
            status, status_class = "STALE", "pill stale"
        else:
            status, status_class = "LIVE", "pill live"
        clock = "" if snap.data_clock is None else f"data at {layout.hhmmss(snap.data_clock)}"
        model = self._model_badge(snap)
        return (floor, em_children, em_class, st_children, st_class, status, status_class, clock, model,
                layout.scale_legend(m))

    @staticmethod
    def _model_badge(snap: ViewSnapshot) -> str:
        return f"forecast model {snap.forecast_model_version}" if snap.forecast_model_version else ""

    def trends(self, power_kind: str) -> tuple[Any, ...]:
        """Power against limits, zone inlet, forecast accuracy and the model in use."""
        snap = self.view.snapshot()
        now_s = (snap.data_clock or snap.taken_at).timestamp()
        kind = "pdu" if power_kind == "pdu" else "row"
        hist = self.view.domain_history((kind, "zone"))
        power_hist = {k[1]: v for k, v in hist.items() if k[0] == kind}
        zone_hist = {k[1]: v for k, v in hist.items() if k[0] == "zone"}
        power_fc = {k[1]: v for k, v in snap.domains.items() if k[0] == kind}
        zone_fc = {k[1]: v for k, v in snap.domains.items() if k[0] == "zone"}
        power = figures.domain_power_figure(power_hist, power_fc, now_s=now_s)
        inlet = figures.zone_inlet_figure(zone_hist, zone_fc, now_s=now_s)
        accuracy = figures.accuracy_figure(snap.accuracy)
        return power, inlet, accuracy, self._model_text(snap)

    @staticmethod
    def _model_text(snap: ViewSnapshot) -> list[Any]:
        out: list[Any] = []
        if snap.forecast_model_version:
            out += ["in use: ", dash.html.B(snap.forecast_model_version)]
        for name, ann in sorted(snap.models.items()):
            out += [dash.html.Br(), dash.html.Span(
                f"{name}: {ann.version} promoted {ann.promoted_at.strftime('%Y-%m-%d %H:%M')} UTC",
                className="muted")]
        return out or [dash.html.Span("no forecasts yet", className="muted")]

    def detail(self, metric: str, selected_rack: str | None, selected_server: str | None) -> tuple[Any, ...]:
        """Rack elevation of the selected rack and the drill-down of its selected (or worst) server."""
        snap = self.view.snapshot()
        m: figures.Metric = "power" if metric == "power" else "thermal"
        if not selected_rack or selected_rack not in snap.layout.servers_by_rack:
            msg = "click a rack on the floor map"
            return (figures.empty_figure(msg), "", figures.empty_figure("select a rack, then a server"), "",
                    layout.server_config(None, None))
        sids = snap.layout.servers_by_rack[selected_rack]
        if selected_server not in sids:
            known = [s for s in sids if s in snap.servers]
            selected_server = (min(known, key=lambda s: figures.server_headroom(snap.servers[s], m))
                               if known else (sids[0] if sids else None))
        rack_fig = figures.rack_servers_figure(selected_rack, sids, snap.servers, m, selected_server=selected_server,
                                               highlighted=selected_rack in snap.highlighted_racks)
        rack_title = (f"{selected_rack} · row {snap.layout.rack_row.get(selected_rack, '?')} · "
                      f"zone {snap.layout.rack_zone.get(selected_rack, '?')} · {len(sids)} servers")
        if selected_server is None:
            return rack_fig, rack_title, figures.empty_figure("no server"), "", layout.server_config(None, None)
        detail = self.view.server_detail(selected_server)
        now_s = (snap.data_clock or snap.taken_at).timestamp()
        slowdown = detail.latest_forecast.slowdown_temp_c if detail.latest_forecast else None
        server_fig = figures.server_detail_figure(selected_server, detail.forecasts, detail.gpus,
                                                  slowdown_temp_c=slowdown, now_s=now_s)
        return (rack_fig, rack_title, server_fig, selected_server,
                layout.server_config(detail.latest_forecast, detail.latest_sample))

    def rack_at(self, position: int, row_index: int) -> str | None:
        """The rack drawn at a floor-map cell (column = position in row, row = row index)."""
        floor = self.view.snapshot().layout
        rows = floor.rows
        if not 0 <= row_index < len(rows):
            return None
        racks = floor.racks_by_row[rows[row_index]]
        return racks[position] if 0 <= position < len(racks) else None

    def server_at(self, rack_id: str, y_index: int) -> str | None:
        """The server drawn at row ``y_index`` of a rack elevation (slot 0 at the bottom)."""
        sids = self.view.snapshot().layout.servers_by_rack.get(rack_id, [])
        return sids[y_index] if 0 <= y_index < len(sids) else None

    def actions(self, kinds: list[str] | None, row_id: str | None,
                shown: int | None = None) -> tuple[Any, ...]:
        """The filtered actions log, the row filter's options and the log length they show.

        When ``shown`` equals the number of actions logged so far the table is left as it is
        (``no_update``): re-rendering an unchanged log every refresh costs the browser time.
        """
        snap = self.view.snapshot()
        if shown is not None and shown == snap.num_actions:
            return no_update, no_update, no_update
        options = [{"label": r, "value": r} for r in snap.layout.rows]
        return layout.actions_table(snap.actions, kinds, row_id), options, snap.num_actions

    def update_all(self, metric: str = "thermal", selected_rack: str | None = None,
                   selected_server: str | None = None, power_kind: str = "row") -> list[tuple[Any, ...]]:
        """Every periodic callback once (what one page refresh costs the server)."""
        return [self.overview(metric, selected_rack), self.trends(power_kind),
                self.detail(metric, selected_rack, selected_server), self.actions(None, None)]


def create_app(view: DashboardView, *, refresh_s: float = 1.5, username: str | None = None,
               password: str | None = None, title: str = "TAPAS · operations",
               consuming: Callable[[], bool] | None = None) -> dash.Dash:
    """Build the Dash app over a view (the caller starts the consumer that feeds it).

    ``consuming`` tells ``/readyz`` whether that consumer still runs (``ViewConsumer.alive``);
    without it only staleness decides.
    """
    app = dash.Dash(__name__, title=title, update_title="", suppress_callback_exceptions=False)
    app.index_string = layout.INDEX_STRING
    app.layout = layout.page(refresh_s)
    _add_probes(app, view, consuming or (lambda: True))
    if username:
        from dashboard.auth import install_basic_auth

        install_basic_auth(app.server, username, password or "")
    updater = PageUpdater(view)
    app._tapas_updater = updater  # type: ignore[attr-defined]  # for tests and the bench

    @app.callback(
        Output("floor-map", "figure"), Output("emergency-banner", "children"),
        Output("emergency-banner", "className"), Output("stale-banner", "children"),
        Output("stale-banner", "className"), Output("status", "children"), Output("status", "className"),
        Output("data-clock", "children"), Output("model-badge", "children"), Output("scale-legend", "children"),
        Input("tick", "n_intervals"), Input("metric", "value"), Input("selected-rack", "data"),
    )
    def _overview(_n: int, metric: str, rack: str | None) -> tuple[Any, ...]:
        return updater.overview(metric, rack)

    @app.callback(
        Output("power-chart", "figure"), Output("inlet-chart", "figure"), Output("accuracy-chart", "figure"),
        Output("model-version", "children"),
        Input("tick", "n_intervals"), Input("power-kind", "value"),
    )
    def _trends(_n: int, kind: str) -> tuple[Any, ...]:
        return updater.trends(kind)

    @app.callback(
        Output("rack-servers", "figure"), Output("rack-title", "children"), Output("server-detail", "figure"),
        Output("server-title", "children"), Output("server-config", "children"),
        Input("tick", "n_intervals"), Input("metric", "value"), Input("selected-rack", "data"),
        Input("selected-server", "data"),
    )
    def _detail(_n: int, metric: str, rack: str | None, server: str | None) -> tuple[Any, ...]:
        return updater.detail(metric, rack, server)

    @app.callback(
        Output("actions-table", "children"), Output("filter-row", "options"), Output("actions-shown", "data"),
        Input("tick", "n_intervals"), Input("filter-kind", "value"), Input("filter-row", "value"),
        State("actions-shown", "data"),
    )
    def _actions(_n: int, kinds: list[str] | None, row: str | None, shown: int | None) -> tuple[Any, ...]:
        # A filter change always re-renders; a tick only when new actions arrived.
        return updater.actions(kinds, row, shown if dash.ctx.triggered_id == "tick" else None)

    @app.callback(Output("selected-rack", "data"), Output("selected-server", "data"),
                  Input("floor-map", "clickData"), State("selected-rack", "data"), prevent_initial_call=True)
    def _select_rack(click: dict[str, Any] | None, current: str | None) -> tuple[Any, ...]:
        cell = _clicked_cell(click)
        rack = updater.rack_at(*cell) if cell else None
        if not rack or rack == current:
            return no_update, no_update
        return rack, None

    @app.callback(Output("selected-server", "data", allow_duplicate=True), Input("rack-servers", "clickData"),
                  State("selected-rack", "data"), prevent_initial_call=True)
    def _select_server(click: dict[str, Any] | None, rack: str | None) -> Any:
        cell = _clicked_cell(click)
        server = updater.server_at(rack, cell[1]) if cell and rack else None
        return server or no_update

    return app


def _add_probes(app: dash.Dash, view: DashboardView, consuming: Callable[[], bool]) -> None:
    """``/healthz`` and ``/readyz`` as real Flask routes (Dash's catch-all would answer them with the page)."""
    from flask import Response

    from foundation.health import probe_response

    def probe(path: str) -> Response:
        answer = probe_response(path, "dashboard", lambda: view.readiness(consuming=consuming()))
        status, body = answer or (404, {"error": f"no probe {path}"})
        return Response(json.dumps(body), status, mimetype="application/json")

    app.server.add_url_rule("/healthz", "tapas_healthz", lambda: probe("/healthz"))
    app.server.add_url_rule("/readyz", "tapas_readyz", lambda: probe("/readyz"))


def _clicked_cell(click: dict[str, Any] | None) -> tuple[int, int] | None:
    """(column, row) indices of a clicked heatmap cell (Dash passes no customdata for heatmaps)."""
    if not click or not click.get("points"):
        return None
    point = click["points"][0]
    try:
        return int(round(float(point["x"]))), int(round(float(point["y"])))
    except (KeyError, TypeError, ValueError):
        return None
