"""Emergencies in the live controller: planned on arrival, once per event, caps lifted when cleared."""

from __future__ import annotations

from datetime import timedelta

from contracts import ControlEvent, ReconfigCommand
from controller.core.policy import TapasPolicy
from controller.core.snapshot import ConfigChange
from controller.service import Controller, to_emergency
from foundation.settings import ControllerSettings
from tests.controller_world import T0, forecast, gpu_sample, world_catalogue, world_topology


def loaded_controller(**settings: object) -> Controller:
    """Four SaaS servers near full load and two IaaS VMs in one row, all fresh."""
    c = Controller(world_topology(8), world_catalogue(), ControllerSettings(metrics_port=0, **settings),  # type: ignore[arg-type]
                   started_at=T0)
    for i, s in enumerate(c.topology.server_ids):
        c.handle("f", forecast(s, T0, power_w=5000), now=T0)
        if i < 4:
            c.handle("g", gpu_sample(s, T0, tokens_per_s=9000), now=T0)
        elif i < 6:
            c.handle("g", gpu_sample(s, T0, config_id=None, instances=[f"vm-{i}"]), now=T0)
    return c


def power_event(event_id: str = "em-1", **kw: object) -> ControlEvent:
    return ControlEvent(event_id=event_id, event_kind="power_emergency", severity="critical", occurred_at=T0,
                        domain_kind="row", domain_id="row00", budget_frac=0.75,
                        ends_at=T0 + timedelta(minutes=5), **kw)  # type: ignore[arg-type]


def test_power_emergency_is_planned_at_once_with_emergency_commands_and_a_plan_event() -> None:
    c = loaded_controller()
    out = c.handle("e", power_event(), now=T0)
    cmds = [o.message for o in out if isinstance(o.message, ReconfigCommand)]
    events = [o.message for o in out if isinstance(o.message, ControlEvent)]
    assert cmds and all(x.trigger == "emergency" for x in cmds)
    caps = [x for x in cmds if x.action == "set_power_limit"]
    assert caps and {x.instance_id for x in caps} <= {"vm-4", "vm-5"}
    assert all(x.expires_at <= T0 + timedelta(minutes=5) for x in caps)
    [plan] = [e for e in events if e.event_kind == "emergency_plan"]
    assert plan.domain_id == "row00" and "relaxed" in plan.detail
    # the same event delivered again is not planned twice
    assert c.handle("e", power_event(), now=T0 + timedelta(seconds=1)) == []


def test_cleared_emergency_reverts_caps_and_power_raising_changes_wait_for_it() -> None:
    c = loaded_controller(knobs={"block_power_raises_in_emergency_domain": True})
    pol = c.policy
    assert isinstance(pol, TapasPolicy)
    c.handle("e", power_event(), now=T0)
    snap = c.snapshot(T0)
    relax = ConfigChange(instance_id=snap.instances.instance_ids[0], instance_index=0, server_index=0,
                         server_id=snap.server_ids[0], from_config_id="70b-tp8-fp16-1000",
                         to_config_id="70b-tp8-fp16-1410", slow=False, trigger="relax", headroom=5.0, reason="x",
                         issued_at_s=snap.now_s, expires_at_s=snap.now_s + 60)
    assert pol._blocked(relax, snap, c.active_emergencies(), stale=False)
    assert not TapasPolicy(catalogue=c.catalogue)._blocked(relax, snap, c.active_emergencies(), stale=False), (
        "by default the narrower evaluated rule holds (no raise for load while IaaS VMs are capped)")
    t1 = T0 + timedelta(seconds=30)
    cleared = ControlEvent(event_id="em-1-end", event_kind="emergency_cleared", severity="info", occurred_at=t1,
                           domain_kind="row", domain_id="row00")
    out = c.handle("e", cleared, now=t1)
    reverts = [o.message for o in out if isinstance(o.message, ReconfigCommand)]
    assert reverts and all(x.action == "revert" for x in reverts)
    assert {x.server_id for x in reverts} == {c.topology.server_ids[4], c.topology.server_ids[5]}
    assert not c.emergencies and not pol._blocked(relax, snap, c.active_emergencies(), stale=False)


def test_emergency_domains_map_to_rows_and_zones() -> None:
    topo = world_topology(8)
    rack = topo.racks[0]
    em = to_emergency(power_event().model_copy(update={"domain_kind": "pdu", "domain_id": rack.pdu_id}), topo)
    assert em is not None and em.domain_kind == "row" and em.domain_index == 0
    cool = ControlEvent(event_id="c1", event_kind="cooling_failure", severity="critical", occurred_at=T0,
                        domain_kind="row", domain_id="row00", supply_temp_rise_c=6.0)
    em2 = to_emergency(cool, topo)
    assert em2 is not None and em2.kind == "cooling" and em2.domain_kind == "zone"
    assert to_emergency(power_event().model_copy(update={"domain_id": "nowhere"}), topo) is None


def test_cooling_caps_follow_the_measured_inlet_while_the_emergency_lasts() -> None:
    c = loaded_controller()
    cool = ControlEvent(event_id="c1", event_kind="cooling_failure", severity="critical", occurred_at=T0,
                        domain_kind="row", domain_id="row00", supply_temp_rise_c=1.0,
                        ends_at=T0 + timedelta(minutes=20))
    first = [o.message for o in c.handle("e", cool, now=T0) if isinstance(o.message, ReconfigCommand)]
    assert not [x for x in first if x.action == "set_power_limit"], "a 1 °C rise needs no IaaS cap"
    # Recirculation: the failed zone's inlets climb far beyond the announced rise, GPUs follow.
    t1 = T0 + timedelta(seconds=60)
    for s in c.topology.server_ids:
        c.handle("f", forecast(s, t1, power_w=5000, inlet_c=45.0, temp_c=80.0, hi_c=84.0), now=t1)
    caps = [o.message for o in c.tick(t1) if isinstance(o.message, ReconfigCommand)
            and o.message.action == "set_power_limit"]
    assert caps and {x.instance_id for x in caps} <= {"vm-4", "vm-5"}
    assert all(x.trigger == "emergency" and x.params.power_limit_w is not None for x in caps)
    assert all("measured inlet" in x.reason for x in caps)
    # The same conditions a tick later issue nothing new (the same limit in force is not re-published).
    t2 = t1 + timedelta(seconds=c.settings.reconfig_period_s)
    for s in c.topology.server_ids:
        c.handle("f", forecast(s, t2, power_w=5000, inlet_c=45.0, temp_c=80.0, hi_c=84.0), now=t2)
    assert not [o for o in c.tick(t2) if isinstance(o.message, ReconfigCommand)
                and o.message.action == "set_power_limit"]


def test_emergency_caps_are_renewed_for_as_long_as_the_emergency_lasts() -> None:
    """Issue 22, "Emergency IaaS caps lapse": in a one-hour emergency the caps expired at max_command_ttl_s."""
    c = loaded_controller()
    hour = power_event("em-hour").model_copy(update={"ends_at": T0 + timedelta(hours=1)})
    caps = [o.message for o in c.handle("e", hour, now=T0)
            if isinstance(o.message, ReconfigCommand) and o.message.action == "set_power_limit"]
    assert caps, "the plan must cap the IaaS VMs for this test to mean anything"
    in_force: dict[str, ReconfigCommand] = {x.instance_id or x.server_id: x for x in caps}
    t = T0
    while t < T0 + timedelta(hours=1) - timedelta(seconds=5):
        t += timedelta(seconds=5)
        for s in c.topology.server_ids:  # fresh forecasts, so the controller keeps planning
            c.handle("f", forecast(s, t, power_w=5000), now=t)
        for o in c.tick(t):
            if isinstance(o.message, ReconfigCommand) and o.message.action == "set_power_limit":
                in_force[o.message.instance_id or o.message.server_id] = o.message
        lapsed = [k for k, x in in_force.items() if x.expires_at <= t]
        assert not lapsed, f"caps of {lapsed} lapsed at {(t - T0).total_seconds():.0f} s of a one-hour emergency"
    assert all(x.expires_at <= T0 + timedelta(hours=1) + timedelta(seconds=1) for x in in_force.values())


def test_switching_to_enforce_mid_emergency_enforces_the_active_plan() -> None:
    from contracts import ControllerMode

    c = loaded_controller()
    first = [o.message for o in c.handle("e", power_event(), now=T0) if isinstance(o.message, ReconfigCommand)
             and o.message.action == "set_power_limit"]
    assert first and all(x.mode == "advisory" for x in first)
    t = T0 + timedelta(seconds=30)
    out = c.handle("m", ControllerMode(mode="enforce", changed_at=t, changed_by="test"), now=t)
    for s in c.topology.server_ids:  # the policy re-issues the plan's caps on the tick after the switch
        c.handle("f", forecast(s, t, power_w=5000), now=t)
    out += c.tick(t)
    caps = [o.message for o in out if isinstance(o.message, ReconfigCommand) and o.message.action == "set_power_limit"]
    assert caps and all(x.mode == "enforce" and x.trigger == "emergency" for x in caps)
    assert {x.instance_id for x in caps} == {x.instance_id for x in first}
    assert not {x.command_id for x in caps} & {x.command_id for x in first}
