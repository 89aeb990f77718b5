"""The live controller's state machine without Kafka: forecasts in, hints/weights/commands/events out."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from contracts import (
    ControlEvent,
    ControllerMode,
    PlacementHint,
    PlacementRequest,
    ReconfigCommand,
    RoutingWeights,
)
from controller.core.policy import TapasPolicy
from controller.core.snapshot import ConfigChange
from controller.service import Controller, Outgoing, raises_power
from foundation.settings import ControllerSettings
from tests.controller_world import ENDPOINT, T0, forecast, gpu_sample, world_catalogue, world_topology


def make(**settings: object) -> Controller:
    return Controller(world_topology(8), world_catalogue(), ControllerSettings(metrics_port=0, **settings),
                      started_at=T0)


def feed(c: Controller, at: datetime, *, hot: int | None = None, saas: int = 4) -> None:
    for i, s in enumerate(c.topology.server_ids):
        is_hot = i == hot
        c.handle("f", forecast(s, at, temp_c=84 if is_hot else 60, hi_c=90 if is_hot else 64,
                               inlet_c=50 if is_hot else 24), now=at)
        if i < saas:
            c.handle("g", gpu_sample(s, at), now=at)


def of(out: list[Outgoing], kind: type) -> list:
    return [o.message for o in out if isinstance(o.message, kind)]


def test_placement_hint_ranks_free_servers_and_is_advisory() -> None:
    c = make()
    feed(c, T0)
    c.tick(T0)
    [hint] = of(c.handle("p", PlacementRequest(request_id="r1", requested_at=T0, vm_kind="iaas", num_gpus=8), now=T0),
                PlacementHint)
    assert hint.feasible and hint.advisory
    saas_servers = set(c.topology.server_ids[:4])
    assert hint.candidates and not {x.server_id for x in hint.candidates} & saas_servers
    assert [x.rank for x in hint.candidates] == list(range(1, len(hint.candidates) + 1))
    assert all(x.thermal_headroom_c >= 0 for x in hint.candidates)


def test_routing_weights_while_a_headroom_binds_drain_hot_instance() -> None:
    c = make()
    feed(c, T0)
    assert not of(c.tick(T0), RoutingWeights), "calm cluster: the load-aware router is left alone"
    every = make(knobs={"route_only_when_constrained": False})
    feed(every, T0)
    [w0] = of(every.tick(T0), RoutingWeights)
    assert w0.endpoint_id == ENDPOINT and abs(sum(x.weight for x in w0.weights) - 1) < 1e-9
    assert len(w0.weights) == 4 and w0.advisory and not w0.stale_inputs
    t1 = T0 + timedelta(seconds=1)
    every.handle("m", ControllerMode(mode="enforce", changed_at=t1), now=t1)
    feed(every, t1)
    [w_enforced] = of(every.tick(t1), RoutingWeights)
    assert not w_enforced.advisory
    hot_c = make()
    feed(hot_c, T0, hot=0)
    [w1] = of(hot_c.tick(T0), RoutingWeights)
    hot = next(x for x in w1.weights if x.server_id == hot_c.topology.server_ids[0])
    assert hot.state == "drain" and hot.weight == 0.0
    assert hot_c.metrics.registry.get_sample_value("tapas_routing_weight",
                                                   {"tapas_endpoint": ENDPOINT, "tapas_instance": hot.instance_id}) == 0.0
    assert hot_c.metrics.registry.get_sample_value("tapas_thermal_headroom_celsius",
                                                   {"tapas_endpoint": ENDPOINT, "tapas_instance": hot.instance_id}) < 0


def test_hot_instance_gets_a_command_with_id_expiry_reason_and_mode_follows_switch() -> None:
    c = make()
    feed(c, T0)
    c.tick(T0)
    t1 = T0 + timedelta(seconds=6)
    feed(c, t1, hot=0)
    cmds = of(c.tick(t1), ReconfigCommand)
    assert cmds, "a hot instance must be reconfigured"
    cmd = cmds[0]
    assert cmd.server_id == c.topology.server_ids[0] and cmd.action == "set_frequency_cap"
    assert cmd.mode == "advisory" and cmd.expires_at > cmd.issued_at and "thermal" in cmd.reason
    assert cmd.params.frequency_cap_mhz is not None and cmd.params.frequency_cap_mhz < 1410
    ev = of(c.handle("m", ControllerMode(mode="enforce", changed_at=t1), now=t1), ControlEvent)
    assert [e.event_kind for e in ev] == ["mode_changed"] and c.mode == "enforce"
    # the same plan in a later epoch is a new command, now enforced
    t2 = t1 + timedelta(seconds=6)
    feed(c, t2, hot=0)
    cmds2 = of(c.tick(t2), ReconfigCommand)
    assert cmds2 and all(x.mode == "enforce" for x in cmds2)


def test_core_respects_the_frequency_floor() -> None:
    """The service hands settings.min_frequency_mhz to the core: nothing is planned below it, nothing refused."""
    c = make(min_frequency_mhz=1300.0)
    feed(c, T0)
    c.tick(T0)
    t1 = T0 + timedelta(seconds=6)
    feed(c, t1, hot=0)
    out = c.tick(t1)  # the same hot tick that, without the floor in the core, gets refused (next test)
    assert not [m for m in of(out, ReconfigCommand) if (m.params.frequency_cap_mhz or 2000) < 1300]
    assert not [e for e in of(out, ControlEvent) if e.event_kind == "safety_refused"]


def test_commands_outside_safety_bounds_are_refused_and_reported() -> None:
    """Defence in depth: a core configured without the floor is still stopped by the safety gate."""
    c = make(min_frequency_mhz=1300.0, knobs={"reconfig_params.min_frequency_mhz": 0.0})
    assert c.gate.bounds.min_frequency_mhz == 1300.0
    feed(c, T0)
    c.tick(T0)
    t1 = T0 + timedelta(seconds=6)
    feed(c, t1, hot=0)
    out = c.tick(t1)
    assert not [m for m in of(out, ReconfigCommand) if (m.params.frequency_cap_mhz or 2000) < 1300]
    refused = [e for e in of(out, ControlEvent) if e.event_kind == "safety_refused"]
    assert refused and "minimum frequency" in refused[0].detail
    assert c.num_refused >= 1


def test_stale_forecasts_decay_weights_refuse_placement_and_recover() -> None:
    c = make(stale_after_s=5.0, stale_decay_s=10.0)
    feed(c, T0, hot=0)
    [good] = of(c.tick(T0), RoutingWeights)
    assert good.weights[0].weight == 0.0  # hot instance drained while data is fresh
    # no forecast for a while: stale event once, weights decay to capacity-proportional (equal here)
    t_stale = T0 + timedelta(seconds=6)
    out = c.tick(t_stale)
    assert [e.event_kind for e in of(out, ControlEvent)] == ["stale_forecasts"]
    [w_early] = of(out, RoutingWeights)
    assert w_early.stale_inputs and "STALE" in w_early.reason
    out_later = c.tick(t_stale + timedelta(seconds=60))
    assert not [e for e in of(out_later, ControlEvent) if e.event_kind == "stale_forecasts"]
    [w_late] = of(out_later, RoutingWeights)
    early = np.array([x.weight for x in w_early.weights])
    late = np.array([x.weight for x in w_late.weights])
    assert np.abs(late - 0.25).max() < 0.01 < np.abs(early - 0.25).max()
    [hint] = of(c.handle("p", PlacementRequest(request_id="r2", requested_at=t_stale, vm_kind="saas", num_gpus=8),
                         now=t_stale), PlacementHint)
    assert not hint.feasible and "stale" in hint.reason
    # data returns
    t_back = t_stale + timedelta(seconds=61)
    feed(c, t_back)
    out_back = c.tick(t_back)
    assert [e.event_kind for e in of(out_back, ControlEvent)] == ["forecasts_recovered"]
    assert not [w for w in of(out_back, RoutingWeights) if w.stale_inputs]


def test_changes_that_raise_power_are_blocked_while_stale() -> None:
    c = make(stale_after_s=5.0)
    feed(c, T0)
    snap = c.snapshot(T0)
    relax = ConfigChange(instance_id=snap.instances.instance_ids[0], instance_index=0, server_index=0,
                         server_id=snap.server_ids[0], from_config_id="70b-tp8-fp16-1000",
                         to_config_id="70b-tp8-fp16-1410", slow=False, trigger="relax", headroom=10.0, reason="cool",
                         issued_at_s=snap.now_s, expires_at_s=snap.now_s + 60)
    tighten = ConfigChange(**{**relax.__dict__, "from_config_id": "70b-tp8-fp16-1410",
                              "to_config_id": "70b-tp8-fp16-1000", "trigger": "thermal"})
    assert raises_power(relax, snap, c.catalogue) and not raises_power(tighten, snap, c.catalogue)
    pol = c.policy
    assert isinstance(pol, TapasPolicy)
    assert not pol._blocked(relax, snap, (), stale=False)
    c.tick(T0 + timedelta(seconds=10))
    stale_snap = c.snapshot(T0 + timedelta(seconds=10))
    assert c.stale and stale_snap.forecast_age_s > pol.k.stale_after_s
    assert pol._blocked(relax, snap, (), stale=True) and not pol._blocked(tighten, snap, (), stale=True)


def test_retained_mode_older_than_start_does_not_override_pinned_mode() -> None:
    c = Controller(world_topology(8), world_catalogue(), ControllerSettings(metrics_port=0), mode="advisory",
                   started_at=T0)
    assert c.handle("m", ControllerMode(mode="enforce", changed_at=T0 - timedelta(hours=1)), now=T0) == []
    assert c.mode == "advisory"
    c2 = make()
    c2.handle("m", ControllerMode(mode="enforce", changed_at=T0 - timedelta(hours=1)), now=T0)
    assert c2.mode == "enforce"


def test_agent_failure_report_releases_the_intent_so_the_change_is_retried() -> None:
    from contracts import CommandStatus

    c = make()
    feed(c, T0)
    c.tick(T0)
    t1 = T0 + timedelta(seconds=6)
    feed(c, t1, hot=0)
    [cmd] = [m for m in of(c.tick(t1), ReconfigCommand) if m.layer == "host"]
    t2 = t1 + timedelta(seconds=6)
    feed(c, t2, hot=0)
    assert not of(c.tick(t2), ReconfigCommand)  # in flight: not re-issued
    c.handle("s", CommandStatus(command_id=cmd.command_id, server_id=cmd.server_id, reported_at=t2,
                                status="failed", detail="NVMLError_NoPermission"), now=t2)
    t3 = t2 + timedelta(seconds=6)
    feed(c, t3, hot=0)
    retried = of(c.tick(t3), ReconfigCommand)
    assert retried and retried[0].instance_id == cmd.instance_id and retried[0].command_id != cmd.command_id


def test_enforce_command_reported_dry_run_or_failed_raises_an_alarm() -> None:
    from contracts import CommandStatus, ControlEvent, ReconfigCommand, ReconfigParams

    c = make(mode="enforce")
    cmd = ReconfigCommand(command_id="cmd-alarm0001", issued_at=T0, expires_at=T0 + timedelta(seconds=60),
                          server_id="s000", action="set_power_limit", params=ReconfigParams(power_limit_w=300.0),
                          reason="test", trigger="emergency", mode="enforce")
    assert c._admit(cmd, T0)  # published (the path every command takes)
    for status in ("applied", "dry_run", "failed"):
        out = c.handle(c.topics.status, CommandStatus(command_id=cmd.command_id, server_id="s000", reported_at=T0,
                                                      status=status, detail="no NVML"), now=T0)  # type: ignore[arg-type]
        events = [o.message for o in out if isinstance(o.message, ControlEvent)]
        if status == "applied":
            assert events == []
        else:
            assert [e.event_kind for e in events] == ["command_not_applied"] and events[0].severity == "critical"
            assert c.metrics.not_applied.labels(status)._value.get() == 1
    advisory = make(mode="advisory")
    adv = cmd.model_copy(update={"mode": "advisory", "command_id": "cmd-alarm0002"})
    advisory._admit(adv, T0)
    assert advisory.handle(advisory.topics.status, CommandStatus(command_id=adv.command_id, server_id="s000",
                                                                 reported_at=T0, status="dry_run"), now=T0) == []
