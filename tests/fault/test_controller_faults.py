"""Controller and agent under faults, each test counting what went in and what came out.

The fast slice (no marker) drives the Controller and NodeAgent state machines directly;
the ``fault`` tests run them as threads against real embedded brokers, including a
broker that goes away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaProducer

from contracts import CommandStatus, ControlEvent, ReconfigCommand, ReconfigParams, RoutingWeights
from controller.agent import DryRunGpuControl, GpuSetting, NodeAgent, run_agent
from controller.service import Controller, Outgoing
from controller.signing import generate_key_pair, pin, public_key_text, sign_command
from foundation.broker import EmbeddedBroker, free_port
from foundation.settings import ControllerSettings, Settings
from tapas.bootstrap import kafka_clients
from tests.controller_world import T0, forecast, gpu_sample, world_catalogue, world_topology
from tests.unit.test_agent_node import KEY


def controller(**settings: object) -> Controller:
    return Controller(world_topology(8), world_catalogue(), ControllerSettings(metrics_port=0, **settings),
                      started_at=T0)


def feed(c: Controller, at: datetime, *, hot: int | None = None, servers: range | None = None) -> None:
    for i, s in enumerate(c.topology.server_ids):
        if servers is not None and i not in servers:
            continue
        h = i == hot
        c.handle("f", forecast(s, at, temp_c=84 if h else 60, hi_c=90 if h else 64, inlet_c=50 if h else 24),
                 now=at)
        if i < 4:
            c.handle("g", gpu_sample(s, at), now=at)


def kinds(out: list[Outgoing]) -> list[str]:
    return [o.message.event_kind for o in out if isinstance(o.message, ControlEvent)]


# --------------------------------------------------------------------------- fast slice


def test_missing_then_stale_forecasts_fall_back_and_recover_counting_every_tick() -> None:
    # Weights on every tick (the policy's default publishes them only while a headroom binds or inputs are
    # stale; stale ticks are counted below either way), so that every tick is counted.
    c = controller(stale_after_s=5.0, knobs={"route_only_when_constrained": False})
    # no forecast ever: stale from the first tick, no weights (no instances known), no commands
    out0 = c.tick(T0)
    assert kinds(out0) == ["stale_forecasts"]
    feed(c, T0 + timedelta(seconds=1), hot=0)
    ticks = {"weights": 0, "stale_weights": 0, "aggressive": 0, "events": []}
    for k in range(1, 40):
        now = T0 + timedelta(seconds=k)
        if k < 10 or k >= 30:  # forecasts flow, stop for 20 s, then return
            feed(c, now, hot=0 if k < 10 else None)
        for o in c.tick(now):
            m = o.message
            if isinstance(m, RoutingWeights):
                ticks["weights"] += 1  # type: ignore[operator]
                ticks["stale_weights"] += int(m.stale_inputs)  # type: ignore[operator]
            elif isinstance(m, ReconfigCommand) and 15 <= k < 30 and m.trigger != "emergency":
                ticks["aggressive"] += int((m.params.frequency_cap_mhz or 0) > 1000 or m.trigger == "relax")  # type: ignore[operator]
            elif isinstance(m, ControlEvent):
                ticks["events"].append((k, m.event_kind))  # type: ignore[attr-defined]
    assert ticks["weights"] == 39, "weights must be published on every tick, stale or not"
    # stale from k=15 (last forecast at k=9, limit 5 s) up to and excluding k=30
    assert ticks["stale_weights"] == 15
    assert ticks["aggressive"] == 0
    assert ticks["events"] == [(1, "forecasts_recovered"), (15, "stale_forecasts"), (30, "forecasts_recovered")]


def test_emergency_while_reconfiguration_in_flight() -> None:
    c = controller()
    feed(c, T0)
    c.tick(T0)
    t1 = T0 + timedelta(seconds=6)
    feed(c, t1, hot=0)
    in_flight = [o.message for o in c.tick(t1) if isinstance(o.message, ReconfigCommand)]
    assert in_flight, "a reconfiguration must be in flight"
    # telemetry still reports the old configuration (the change has not landed) when the emergency arrives
    t2 = t1 + timedelta(seconds=1)
    feed(c, t2, hot=0)
    ev = ControlEvent(event_id="em-inflight", event_kind="power_emergency", severity="critical", occurred_at=t2,
                      domain_kind="row", domain_id="row00", budget_frac=0.6, ends_at=t2 + timedelta(minutes=5))
    out = c.handle("e", ev, now=t2)
    cmds = [o.message for o in out if isinstance(o.message, ReconfigCommand)]
    assert "emergency_plan" in kinds(out)
    # the plan is issued despite the in-flight change; no id is published twice
    ids = [m.command_id for m in in_flight + cmds]
    assert len(ids) == len(set(ids))
    assert cmds and all(m.trigger == "emergency" for m in cmds)
    # while the emergency lasts no later tick loosens a cap on the row
    for k in range(1, 20):
        now = t2 + timedelta(seconds=k)
        feed(c, now)
        for o in c.tick(now):
            if isinstance(o.message, ReconfigCommand):
                assert o.message.trigger != "relax"


def test_duplicate_command_ids_are_applied_once_across_a_replay() -> None:
    agent = NodeAgent("s1", DryRunGpuControl(num_gpus=8), ControllerSettings(), pinned=pin([KEY.public_key()]))
    stream = [sign_command(ReconfigCommand(command_id=f"cmd-replay{i:03d}", issued_at=T0,
                                           expires_at=T0 + timedelta(minutes=2), server_id="s1",
                                           action="set_frequency_cap", mode="enforce",
                                           params=ReconfigParams(frequency_cap_mhz=1000.0 + 50 * i), reason="r"), KEY)
              for i in range(5)]
    first = [s.status for c in stream for s in agent.receive(c, now=T0) if isinstance(s, CommandStatus)]
    again = [s.status for c in stream for s in agent.receive(c, now=T0 + timedelta(seconds=5))
             if isinstance(s, CommandStatus)]
    assert first == ["dry_run"] * 5 and again == ["duplicate"] * 5
    assert agent.num_applied == 5
    # a restarted controller re-issuing the same decision in the same epoch publishes the same ids
    c1, c2 = controller(), controller()
    for c in (c1, c2):
        feed(c, T0)
        c.tick(T0)
        feed(c, T0 + timedelta(seconds=6), hot=0)
    ids1 = {o.message.command_id for o in c1.tick(T0 + timedelta(seconds=6)) if isinstance(o.message, ReconfigCommand)}
    ids2 = {o.message.command_id for o in c2.tick(T0 + timedelta(seconds=6)) if isinstance(o.message, ReconfigCommand)}
    assert ids1 and ids1 == ids2


# --------------------------------------------------------------------------- through brokers


@pytest.fixture
def private_broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(port=free_port())
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.fault
def test_agent_applies_safe_cap_when_broker_is_lost_and_lifts_it_when_back(private_broker: EmbeddedBroker,
                                                                             tmp_path: Path) -> None:
    settings = Settings(kafka={"bootstrap_servers": private_broker.bootstrap},
                        controller={"agent_broker_lost_after_s": 2.0, "agent_reconcile_s": 1.0, "agent_health_port": 0,
                                    "agent_safe_power_frac": 0.75, "agent_state_dir": str(tmp_path),
                                    "command_public_keys": [public_key_text(KEY.public_key())]})
    ctl = DryRunGpuControl(num_gpus=2, default_limit_w=400.0)
    stop, ready = threading.Event(), threading.Event()
    holder: dict[str, NodeAgent] = {}

    def on_ready(a: NodeAgent) -> None:
        holder["agent"] = a
        ready.set()

    t = threading.Thread(target=run_agent, args=(settings, "s1", ctl),
                         kwargs=dict(clients=kafka_clients(settings), stop=stop, health_every_s=0.5,
                                     on_ready=on_ready))
    t.start()
    try:
        assert ready.wait(20)
        now = datetime.now(UTC)
        producer = KafkaProducer(bootstrap_servers=private_broker.bootstrap)
        cmd = ReconfigCommand(command_id="cmd-beforeloss", issued_at=now, expires_at=now + timedelta(minutes=5),
                              server_id="s1", action="set_frequency_cap", mode="enforce",
                              params=ReconfigParams(frequency_cap_mhz=1100.0), reason="before loss")
        cmd = sign_command(cmd, KEY)
        for _ in range(2):  # sent twice: applied once
            producer.send("tapas.control.commands", key=b"s1", value=cmd.to_bytes())
        producer.flush()
        producer.close()
        _wait(lambda: ctl.applied.get(0) == GpuSetting(1100.0, None), 15)
        assert holder["agent"].num_applied == 1
        t_stop = time.monotonic()
        private_broker.stop()
        _wait(lambda: holder["agent"].safe_mode, 30)
        lost_after_s = time.monotonic() - t_stop
        assert ctl.applied[0] == GpuSetting(1100.0, 300.0)  # the active cap stays, plus 0.75 × 400 W
        private_broker.start()
        _wait(lambda: not holder["agent"].safe_mode, 40)
        assert ctl.applied[0] == GpuSetting(1100.0, None)
        print(f"safe cap applied {lost_after_s:.1f} s after the broker stopped")
    finally:
        stop.set()
        t.join(30)


def _wait(pred: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout_s} s")


def test_restarted_controller_restores_in_flight_commands_instead_of_reissuing() -> None:
    c1 = controller()
    feed(c1, T0)
    c1.tick(T0)
    t1 = T0 + timedelta(seconds=6)
    feed(c1, t1, hot=0)
    sent = [o.message for o in c1.tick(t1) if isinstance(o.message, ReconfigCommand)]
    assert sent
    # a new process, same cluster state, a later planning epoch: it reads its predecessor's commands back
    c2 = controller()
    t2 = t1 + timedelta(seconds=20)
    assert sum(c2.restore(m, now=t2) for m in sent) == len(sent)
    feed(c2, t2, hot=0)
    again = [o.message for o in c2.tick(t2) if isinstance(o.message, ReconfigCommand)]
    assert not {m.instance_id for m in again} & {m.instance_id for m in sent}
    # without the restore the same change would have been issued again under a new id
    c3 = controller()
    feed(c3, t2, hot=0)
    fresh = [o.message for o in c3.tick(t2) if isinstance(o.message, ReconfigCommand)]
    assert {m.instance_id for m in fresh} >= {m.instance_id for m in sent}
    assert not {m.command_id for m in fresh} & {m.command_id for m in sent}


@pytest.mark.fault
def test_controller_restart_through_broker_restores_commands(broker: object, topic_factory: object) -> None:
    from dataclasses import fields

    from controller.service import ControllerTopics
    from tests.integration.test_controller_service import Harness

    topics = ControllerTopics(**{f.name: topic_factory(f.name) for f in fields(ControllerTopics)})  # type: ignore[operator]
    first = Harness(broker.bootstrap, topics)  # type: ignore[attr-defined]
    first.start()
    try:
        cmd = first.wait_for(lambda m: isinstance(m, ReconfigCommand), 20, feeding=True)
    finally:
        first.close()
    assert isinstance(cmd, ReconfigCommand)
    second = Harness(broker.bootstrap, topics)  # type: ignore[attr-defined]
    second.start()
    try:
        ctl = second.controller
        assert ctl is not None and ctl.gate.ledger.seen(cmd.command_id)
        assert ctl.intents[cmd.instance_id or ""][0] == cmd.params.config_id
        second.collect(0.1)
        before = len(second.received)
        for _ in range(6):
            second.feed()
            second.collect(0.5)
        reissued = [m for m in second.received[before:] if isinstance(m, ReconfigCommand)
                    and m.instance_id == cmd.instance_id]
        assert not reissued, "a restarted controller re-issued an in-flight change"
    finally:
        second.close()


@pytest.mark.fault
def test_broker_outage_controller_and_agent_resume_no_command_lost_or_applied_twice(tmp_path: Path) -> None:
    """Controller and node agent (threads) across a 5 s broker outage that keeps the broker's log.

    This is a production broker restart (Kafka keeps its log): every client reaches
    the broker through a proxy that resets and refuses connections for the outage.
    (Restarting Tansu itself loses its in-memory log, and an ``assign()``-ed consumer
    on Tansu is not told that its offset is out of range: that case is covered for
    the collectors and the stream worker.) Counts every command the controller
    published, what the agent applied, and whether what the controller decided while
    the broker was away (the stale-forecasts event) arrived after it returned.
    """
    from kafka import KafkaConsumer, TopicPartition

    from contracts import decode
    from controller.service import ControllerTopics
    from tests.integration.test_controller_service import Harness
    from tests.netfault import TcpProxy

    proxy = TcpProxy(free_port(), free_port()).start()
    broker = EmbeddedBroker(port=proxy.target_port, advertised_port=proxy.listen_port).start()
    bootstrap = f"127.0.0.1:{proxy.listen_port}"
    topics = ControllerTopics()
    private, public = generate_key_pair()
    harness = Harness(bootstrap, topics, mode="enforce", command_signing_key=private)
    # server 0 runs hot before the outage, server 1 after it: one agent each
    servers = harness.topology.server_ids[:2]
    agent_settings = Settings(kafka={"bootstrap_servers": bootstrap},
                              controller={"agent_broker_lost_after_s": 60.0, "agent_reconcile_s": 1.0,
                                          "agent_health_port": 0, "command_public_keys": [public], "agent_state_dir": str(tmp_path)})
    stop = threading.Event()
    agents: dict[str, NodeAgent] = {}
    threads = []
    for server in servers:
        ready = threading.Event()

        def on_ready(a: NodeAgent, ready: threading.Event = ready) -> None:
            agents[a.server_id] = a
            ready.set()

        t = threading.Thread(target=run_agent, args=(agent_settings, server, DryRunGpuControl(num_gpus=8)),
                             kwargs=dict(clients=kafka_clients(agent_settings), stop=stop, health_every_s=0.5,
                                         on_ready=on_ready))
        t.start()
        threads.append(t)
        assert ready.wait(30)
    try:
        harness.start()
        harness.wait_for(lambda m: isinstance(m, ReconfigCommand) and m.server_id == servers[0], 30, feeding=True)
        _wait(lambda: agents[servers[0]].num_applied >= 1, 20)
        applied_before = sum(a.num_applied for a in agents.values())

        proxy.cut()
        down_at, down_wall = time.monotonic(), time.time()
        time.sleep(5.0)  # forecasts stop with the broker: the controller decides "stale" while it is away
        assert harness.thread.is_alive(), "the controller died with the broker"
        proxy.restore()
        back_at, back_wall = time.monotonic(), time.time()
        fresh_weights_s: float | None = None
        while time.monotonic() - back_at < 60 and fresh_weights_s is None:
            harness.feed(hot=0)
            harness.collect(0.5)
            if any(isinstance(m, RoutingWeights) and not m.stale_inputs and m.issued_at.timestamp() > back_wall
                   for m in harness.received):
                fresh_weights_s = time.monotonic() - back_at
        assert fresh_weights_s is not None, "no fresh routing weights after the broker returned"
        harness.wait_for(lambda m: isinstance(m, ReconfigCommand) and m.server_id == servers[1], 30,
                         feeding=True, since=len(harness.received), hot=1)
        for _ in range(4):
            harness.feed(hot=1)
            harness.collect(0.5)
        assert harness.thread.is_alive()

        models = {topics.commands: ReconfigCommand, topics.events: ControlEvent}
        reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        tps = [TopicPartition(t, p) for t in models for p in sorted(reader.partitions_for_topic(t) or {0})]
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        published: list[object] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # Tansu's end offsets are unreliable: read until quiet
            got = reader.poll(timeout_ms=1000)
            published += [decode(models[tp.topic], r.value) for tp, recs in got.items() for r in recs]
        reader.close()
    finally:
        harness.close()
        stop.set()
        for t in threads:
            t.join(30)
        broker.stop()
        proxy.close()

    commands = [m for m in published if isinstance(m, ReconfigCommand)]
    ids = [c.command_id for c in commands]
    mine = {s: {c.command_id for c in commands if c.server_id == s and c.mode == "enforce"} for s in servers}
    applied = {s: agents[s].num_applied for s in servers}
    stale_while_down = [m for m in published if isinstance(m, ControlEvent) and m.event_kind == "stale_forecasts"
                        and down_wall <= m.occurred_at.timestamp() <= back_wall]
    print(f"broker outage (controller+agent): commands_published={len(ids)} duplicated={len(ids) - len(set(ids))} "
          f"for_agents={[len(mine[s]) for s in servers]} applied={[applied[s] for s in servers]} "
          f"(before outage {applied_before}) "
          f"outage_s={back_at - down_at:.1f} decided_while_down_delivered={len(stale_while_down)} "
          f"fresh_weights_after_s={fresh_weights_s:.1f}")
    assert len(ids) == len(set(ids)), "a command was published twice"
    assert all(mine[s] for s in servers), "no command before and after the outage"
    assert applied == {s: len(mine[s]) for s in servers}, "a command for an agent was lost or applied twice"
    assert all(agents[s].gate.ledger.seen(i) for s in servers for i in mine[s])
    assert stale_while_down, "the stale-forecasts event decided while the broker was away never arrived"
