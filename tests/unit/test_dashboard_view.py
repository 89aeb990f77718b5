"""The dashboard's bounded view: folding messages, staleness, emergencies, accuracy, bounds."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime, timedelta

import pytest

import dashboard.view
from contracts import (
    ControlEvent,
    HorizonForecast,
    InstanceWeight,
    PlacementCandidate,
    PlacementHint,
    ReconfigCommand,
    ReconfigParams,
    RoutingWeights,
    ServerForecast,
)
from dashboard.view import DashboardView, FloorLayout, ViewLimits
from foundation.topology import default_topology

T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def forecast(sid: str, at: datetime, temp_c: float, *, pred_c: float | None = None, power_w: float = 4000.0,
             horizons: tuple[float, ...] = (10.0, 60.0), rack: str = "row00-rack00", row: str = "row00",
             zone: str = "zone00") -> ServerForecast:
    p = temp_c if pred_c is None else pred_c
    return ServerForecast(
        server_id=sid, issued_at=at, based_on_sample_at=at, model_version="m1", gpu_temp_c=temp_c, power_w=power_w,
        slowdown_temp_c=87.0, thermal_headroom_c=87.0 - p - 1, power_headroom_w=500.0,
        horizons=[HorizonForecast(horizon_s=h, gpu_temp_c=p, gpu_temp_lo_c=p - 1, gpu_temp_hi_c=p + 1,
                                  power_w=power_w, power_lo_w=power_w, power_hi_w=power_w) for h in horizons],
        rack_id=rack, row_id=row, zone_id=zone, pdu_id=f"{rack}-pdu")


def test_doctests_of_view_module_pass() -> None:
    assert doctest.testmod(dashboard.view).failed == 0


def test_layout_from_topology_has_every_rack_and_server() -> None:
    topo = default_topology(60)
    layout = FloorLayout.from_topology(topo)
    assert sum(len(v) for v in layout.racks_by_row.values()) == len(topo.racks)
    assert set(layout.server_rack) == set(topo.server_ids)
    zone = topo.zones[0].zone_id
    assert layout.racks_in("zone", zone) == {r.rack_id for r in topo.racks if r.zone_id == zone}
    assert layout.racks_in("server", topo.servers[5].server_id) == {topo.servers[5].rack_id}


def test_layout_is_learned_from_forecast_tags_in_natural_order() -> None:
    view = DashboardView()
    for k in (10, 2, 1):
        view.apply(forecast(f"s{k}", T0, 60.0, rack=f"rack{k}"), received_at=T0)
    snap = view.snapshot()
    assert snap.layout.racks_by_row["row00"] == ["rack1", "rack2", "rack10"]
    assert snap.layout.servers_by_rack["rack10"] == ["s10"]


def test_stale_since_is_the_last_message_once_the_stream_stops() -> None:
    clock = Clock(T0)
    view = DashboardView(stale_after_s=5.0, clock=clock)
    assert view.snapshot().last_message_at is None and view.snapshot().stale_since is None
    view.apply(forecast("s1", T0, 60.0), received_at=T0)
    clock.at = T0 + timedelta(seconds=4)
    assert view.snapshot().stale_since is None
    clock.at = T0 + timedelta(seconds=6)
    assert view.snapshot().stale_since == T0
    view.apply(forecast("s1", clock.at, 60.0), received_at=clock.at)
    assert view.snapshot().stale_since is None


def test_forecast_accuracy_matches_each_horizon_to_the_actual_at_its_target_time() -> None:
    view = DashboardView(limits=ViewLimits(accuracy_sample_s=1.0))
    # Predicts 70 °C for +10 s and +60 s; the actual is 72 °C at +10 s and 75 °C at +60 s.
    view.apply(forecast("s1", T0, 60.0, pred_c=70.0))
    view.apply(forecast("s1", T0 + timedelta(seconds=10), 72.0, horizons=(10.0, 60.0), pred_c=72.0))
    view.apply(forecast("s1", T0 + timedelta(seconds=60), 75.0, pred_c=75.0))
    acc = {a.horizon_s: a for a in view.snapshot().accuracy}
    # 10 s: T0's 70 °C against 72 °C at +10 s. The +10 s forecast's +20 s target had no observation
    # within the tolerance (the next came at +60 s), so it is dropped rather than scored late.
    assert (acc[10.0].temp_mae_c, acc[10.0].num_matched) == (pytest.approx(2.0), 1)
    assert acc[60.0].temp_mae_c == pytest.approx(5.0)
    assert acc[60.0].num_matched == 1


def test_accuracy_skips_targets_without_a_close_observation() -> None:
    view = DashboardView(limits=ViewLimits(accuracy_match_tolerance_s=2.0))
    view.apply(forecast("s1", T0, 60.0, pred_c=70.0, horizons=(10.0,)))
    view.apply(forecast("s1", T0 + timedelta(seconds=30), 80.0, horizons=(10.0,)))  # 20 s late: not scored
    assert all(a.num_matched == 0 for a in view.snapshot().accuracy)


def test_accuracy_window_forgets_errors_older_than_an_hour() -> None:
    view = DashboardView(limits=ViewLimits(accuracy_sample_s=1.0, accuracy_window_s=3600.0))
    view.apply(forecast("s1", T0, 60.0, pred_c=70.0, horizons=(10.0,)))
    view.apply(forecast("s1", T0 + timedelta(seconds=10), 70.0, horizons=(10.0,)))
    assert view.snapshot().accuracy[0].num_matched == 1
    view.apply(forecast("s1", T0 + timedelta(hours=2), 70.0, horizons=(10.0,)))
    assert view.snapshot().accuracy[0].num_matched == 0


def test_cooling_failure_is_active_until_cleared_or_ended() -> None:
    topo = default_topology(80)
    view = DashboardView(layout=FloorLayout.from_topology(topo))
    zone = topo.zones[0].zone_id
    view.apply(ControlEvent(event_id="e1", event_kind="cooling_failure", severity="critical", occurred_at=T0,
                            domain_kind="zone", domain_id=zone, ends_at=T0 + timedelta(minutes=5)))
    snap = view.snapshot()
    assert [e.domain_id for e in snap.emergencies] == [zone]
    assert snap.highlighted_racks == {r.rack_id for r in topo.racks if r.zone_id == zone}
    assert snap.actions[-1].kind == "event"
    # Ends when the data clock passes ends_at ...
    view.apply(forecast(topo.servers[0].server_id, T0 + timedelta(minutes=6), 60.0))
    assert view.snapshot().emergencies == []
    # ... or on an explicit clear.
    view.apply(ControlEvent(event_id="e2", event_kind="power_emergency", severity="critical", occurred_at=T0,
                            domain_kind="row", domain_id="row00", budget_frac=0.75))
    assert len(view.snapshot().emergencies) == 1
    view.apply(ControlEvent(event_id="e3", event_kind="emergency_cleared", severity="info", occurred_at=T0,
                            domain_kind="row", domain_id="row00"))
    assert view.snapshot().emergencies == []


def _weights(at: datetime, a: float) -> RoutingWeights:
    return RoutingWeights(endpoint_id="ep", issued_at=at, valid_until=at + timedelta(seconds=5), reason="headroom",
                          weights=[InstanceWeight(instance_id="i1", server_id="s1", weight=a, thermal_headroom_c=3.0),
                                   InstanceWeight(instance_id="i2", server_id="s2", weight=1 - a)])


def test_routing_weights_are_logged_only_when_they_change() -> None:
    view = DashboardView()
    view.apply(_weights(T0, 0.5))
    view.apply(_weights(T0, 0.51))  # below routing_change_min
    view.apply(_weights(T0, 0.8))
    entries = [a for a in view.snapshot().actions if a.kind == "routing"]
    assert len(entries) == 2
    assert "i1 0.80" in entries[-1].summary and entries[-1].reason == "headroom"


def test_commands_and_hints_carry_reason_headroom_and_row() -> None:
    view = DashboardView()
    view.apply(forecast("s1", T0, 60.0, rack="row03-rack01", row="row03"))
    view.apply(ReconfigCommand(command_id="cmd-00000001", issued_at=T0, expires_at=T0 + timedelta(minutes=2),
                               server_id="s1", action="set_frequency_cap",
                               params=ReconfigParams(frequency_cap_mhz=1200), reason="hot aisle", trigger="thermal",
                               headroom=1.5))
    view.apply(PlacementHint(request_id="r1", issued_at=T0, feasible=True, reason="coolest feasible",
                             candidates=[PlacementCandidate(server_id="s1", rank=1, score=0.2,
                                                            predicted_peak_gpu_temp_c=70, thermal_headroom_c=12,
                                                            row_power_headroom_w=9000, zone_heat_headroom_w=1,
                                                            free_gpus=8)]))
    cmd, hint = view.snapshot().actions[-2:]
    assert (cmd.kind, cmd.row_id, cmd.reason, cmd.headroom) == ("reconfig", "row03", "hot aisle", "thermal 1.5 °C")
    assert "frequency cap → 1200 MHz" in cmd.summary
    assert (hint.kind, hint.row_id, hint.reason) == ("placement", "row03", "coolest feasible")
    assert "12.0 °C" in hint.headroom


def test_every_buffer_is_bounded() -> None:
    limits = ViewLimits(server_history=5, actions=7, domain_history=3)
    view = DashboardView(limits=limits)
    for k in range(50):
        at = T0 + timedelta(seconds=k)
        view.apply(forecast("s1", at, 60.0))
        view.apply(ControlEvent(event_id=f"e{k}", event_kind="thermal_throttle", severity="warning",
                                occurred_at=at))
    assert len(view.server_detail("s1").forecasts) == 5
    assert len(view.snapshot().actions) == 7
    assert view.snapshot().actions[-1].at == T0 + timedelta(seconds=49)


def test_snapshot_is_isolated_from_later_messages() -> None:
    view = DashboardView()
    view.apply(forecast("s1", T0, 60.0))
    snap = view.snapshot()
    view.apply(forecast("s2", T0, 61.0, rack="row00-rack01"))
    assert set(snap.servers) == {"s1"}
    assert "row00-rack01" not in snap.layout.servers_by_rack
