"""The live controller through the embedded broker: forecasts in, a placement answered, weights and commands out,
no new aggressive command while forecasts are stale, recovery when they return."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from contracts import (
    Contract,
    ControlEvent,
    PlacementHint,
    PlacementRequest,
    ReconfigCommand,
    RoutingWeights,
    decode,
)
from controller.metrics import ControllerMetrics
from controller.service import Controller, ControllerTopics, run_service
from foundation.broker import free_port
from foundation.settings import Settings
from tapas.bootstrap import collector_producer, kafka_clients
from tests.controller_world import ENDPOINT, forecast, gpu_sample, world_catalogue, world_topology

pytestmark = pytest.mark.integration

STALE_AFTER_S = 3.0


class Harness:
    """The service in a thread, a producer for inputs and a collector for outputs."""

    def __init__(self, bootstrap: str, topics: ControllerTopics, *, clock: Callable[[], datetime] | None = None,
                 **controller: object) -> None:
        self.topics = topics
        self.topology = world_topology(8)
        settings = Settings(kafka={"bootstrap_servers": bootstrap},
                            controller={"tick_s": 0.5, "stale_after_s": STALE_AFTER_S, "reconfig_period_s": 1.0,
                                        "metrics_port": 0, "health_port": 0, "stale_decay_s": 5.0, **controller})
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.controller: Controller | None = None

        def ready(c: Controller) -> None:
            self.controller = c
            self.ready.set()

        self.thread = threading.Thread(target=run_service, name="controller-under-test", kwargs=dict(
            settings=settings, topology=self.topology, catalogue=world_catalogue(), clients=kafka_clients(settings),
            producer=collector_producer(settings, source="controller"), stop=self.stop, topics=topics,
            metrics=ControllerMetrics(), on_ready=ready, clock=clock))
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        outs = [topics.placement_hints, topics.routing_weights, topics.commands, topics.events]
        self.consumer.assign([TopicPartition(t, p) for t in outs for p in sorted(self.consumer.partitions_for_topic(t)
                                                                                 or {0})])
        self.models: dict[str, type[Contract]] = {topics.placement_hints: PlacementHint,
                                                  topics.routing_weights: RoutingWeights,
                                                  topics.commands: ReconfigCommand, topics.events: ControlEvent}
        self.received: list[Contract] = []

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(20), "controller did not start"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(20)
        self.producer.close(timeout=5)
        self.consumer.close()

    def send(self, topic: str, key: str, msg: Contract) -> None:
        self.producer.send(topic, key=key.encode(), value=msg.to_bytes())

    def feed(self, *, hot: int | None = 0) -> None:
        now = datetime.now(UTC)
        for i, s in enumerate(self.topology.server_ids):
            h = i == hot
            self.send(self.topics.server_forecasts, s, forecast(s, now, temp_c=84 if h else 60, hi_c=90 if h else 64,
                                                                inlet_c=50 if h else 24))
            if i < 4:
                self.send(self.topics.gpu_samples, s, gpu_sample(s, now))
        self.producer.flush()

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for tp, recs in self.consumer.poll(200).items():
                self.received += [decode(self.models[tp.topic], r.value) for r in recs]

    def wait_for(self, pred: Callable[[Contract], bool], timeout_s: float, *, feeding: bool = False,
                 since: int = 0, hot: int | None = 0) -> Contract:
        """The first message matching ``pred`` among those received after the first ``since``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [m for m in self.received[since:] if pred(m)]
            if found:
                return found[0]
            if feeding:
                self.feed(hot=hot)
            self.collect(0.5)
        raise AssertionError(f"no matching message within {timeout_s} s; got {len(self.received)} messages")


@pytest.fixture
def harness(broker: object, topic_factory: Callable[..., str]) -> Iterator[Harness]:
    topics = ControllerTopics(**{f.name: topic_factory(f.name) for f in fields(ControllerTopics)})
    h = Harness(broker.bootstrap, topics)  # type: ignore[attr-defined]
    h.start()
    try:
        yield h
    finally:
        h.close()


def test_forecasts_in_hints_weights_commands_out_and_safe_when_stale(harness: Harness) -> None:
    h = harness
    # 1. forecasts in: weights every tick, the hot instance reconfigured
    w = h.wait_for(lambda m: isinstance(m, RoutingWeights) and not m.stale_inputs and len(m.weights) == 4, 15,
                   feeding=True)
    assert isinstance(w, RoutingWeights) and w.endpoint_id == ENDPOINT
    cmd = h.wait_for(lambda m: isinstance(m, ReconfigCommand), 15, feeding=True)
    assert isinstance(cmd, ReconfigCommand)
    assert cmd.server_id == h.topology.server_ids[0] and cmd.action == "set_frequency_cap"
    assert cmd.expires_at > cmd.issued_at and cmd.reason and cmd.mode == "advisory"

    # 2. a placement request answered with hints
    h.feed()
    h.send(h.topics.placement_requests, "req-int-1",
           PlacementRequest(request_id="req-int-1", requested_at=datetime.now(UTC), vm_kind="iaas", num_gpus=8))
    h.producer.flush()
    hint = h.wait_for(lambda m: isinstance(m, PlacementHint) and m.request_id == "req-int-1", 10, feeding=True)
    assert isinstance(hint, PlacementHint) and hint.feasible and hint.candidates
    assert hint.candidates[0].server_id not in h.topology.server_ids[:4]  # SaaS servers have no free GPUs

    # 3. forecasts stop: stale event, flagged weights, no placement vouched, no new aggressive command
    # (the controller also reports stale inputs right after it starts, before any forecast: skip that one)
    stale = h.wait_for(lambda m: isinstance(m, ControlEvent) and m.event_kind == "stale_forecasts",
                       STALE_AFTER_S + 10, since=len(h.received))
    assert isinstance(stale, ControlEvent)
    h.send(h.topics.placement_requests, "req-int-2",
           PlacementRequest(request_id="req-int-2", requested_at=datetime.now(UTC), vm_kind="saas", num_gpus=8))
    h.producer.flush()
    hint2 = h.wait_for(lambda m: isinstance(m, PlacementHint) and m.request_id == "req-int-2", 10)
    assert isinstance(hint2, PlacementHint) and not hint2.feasible and "stale" in hint2.reason
    h.collect(3.0)
    during = [m for m in h.received if getattr(m, "issued_at", None) and m.issued_at > stale.occurred_at]
    weights_during = [m for m in during if isinstance(m, RoutingWeights)]
    assert weights_during and all(m.stale_inputs for m in weights_during)
    commanded = {c.instance_id: c.params.frequency_cap_mhz for c in h.received
                 if isinstance(c, ReconfigCommand) and c.issued_at <= stale.occurred_at}
    for c in (m for m in during if isinstance(m, ReconfigCommand)):
        assert c.trigger != "relax", f"aggressive command while stale: {c.reason}"
        assert (c.params.frequency_cap_mhz or 0) <= (commanded.get(c.instance_id) or 1e9)

    # 4. forecasts return: recovery event and fresh weights
    h.wait_for(lambda m: isinstance(m, ControlEvent) and m.event_kind == "forecasts_recovered", 15, feeding=True,
               since=len(h.received))
    h.wait_for(lambda m: isinstance(m, RoutingWeights) and not m.stale_inputs and m.issued_at > stale.occurred_at,
               10, feeding=True)
    assert h.controller is not None and h.controller.metrics.registry.get_sample_value(
        "tapas_controller_forecasts_stale") == 0.0


def test_undecodable_input_goes_to_dead_letter_with_field_and_service_keeps_running(harness: Harness) -> None:
    from contracts import DeadLetter

    h = harness
    h.producer.send(h.topics.server_forecasts, key=b"s-bad", value=b'{"server_id": "s-bad", "gpu_temp_c": "hot"}')
    h.producer.send(h.topics.placement_requests, key=b"r-bad", value=b"\xff\x00 not json")
    h.producer.flush()
    dl = KafkaConsumer(bootstrap_servers=h.producer.config["bootstrap_servers"], enable_auto_commit=False)
    dl.assign([TopicPartition(h.topics.deadletter, 0)])
    dl.seek_to_beginning()
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + 15
    while len(letters) < 2 and time.monotonic() < deadline:
        for recs in dl.poll(300).values():
            letters += [decode(DeadLetter, r.value) for r in recs]
    dl.close()
    assert {d.source_topic for d in letters} == {h.topics.server_forecasts, h.topics.placement_requests}
    assert all(d.reason.startswith("controller:") and d.raw_b64 for d in letters)
    # still alive: it answers a valid request afterwards
    h.feed()
    h.send(h.topics.placement_requests, "req-after-bad",
           PlacementRequest(request_id="req-after-bad", requested_at=datetime.now(UTC), vm_kind="iaas", num_gpus=1))
    h.producer.flush()
    h.wait_for(lambda m: isinstance(m, PlacementHint) and m.request_id == "req-after-bad", 15, feeding=True)


def test_power_emergency_through_the_broker_is_planned_within_its_deadline(harness: Harness) -> None:
    h = harness
    h.wait_for(lambda m: isinstance(m, RoutingWeights) and len(m.weights) == 4, 15, feeding=True)
    h.feed(hot=None)
    sent_at = time.monotonic()
    h.send(h.topics.events, "row00", ControlEvent(
        event_id="em-int-1", event_kind="power_emergency", severity="critical", occurred_at=datetime.now(UTC),
        domain_kind="row", domain_id="row00", budget_frac=0.5))
    h.producer.flush()
    plan = h.wait_for(lambda m: isinstance(m, ControlEvent) and m.event_kind == "emergency_plan", 10)
    latency_s = time.monotonic() - sent_at
    assert isinstance(plan, ControlEvent) and plan.domain_id == "row00"
    h.collect(0.5)
    caps = [m for m in h.received if isinstance(m, ReconfigCommand) and m.trigger == "emergency"]
    assert caps, "the plan must reduce power with emergency commands"
    assert latency_s < 10.0, f"plan published {latency_s:.1f} s after the event (power deadline 10 s)"
    print(f"emergency plan published {latency_s * 1000:.0f} ms after the event")


def _probe(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthz_and_readyz_follow_forecasts_and_the_injected_clock(broker: object,
                                                                   topic_factory: Callable[..., str]) -> None:
    topics = ControllerTopics(**{f.name: topic_factory(f.name) for f in fields(ControllerTopics)})
    skew = [timedelta(0)]
    port = free_port()
    h = Harness(broker.bootstrap, topics, clock=lambda: datetime.now(UTC) + skew[0],  # type: ignore[attr-defined]
                health_port=port)
    h.start()
    base = f"http://127.0.0.1:{port}"
    try:
        assert _probe(f"{base}/healthz") == (200, {"service": "controller", "alive": True})
        status, body = _probe(f"{base}/readyz")
        assert status == 503 and body["reason"] == "no input received yet" and body["stale"]
        deadline = time.monotonic() + 15
        while (status := _probe(f"{base}/readyz")[0]) != 200 and time.monotonic() < deadline:
            h.feed()
            time.sleep(0.3)
        status, body = _probe(f"{base}/readyz")
        assert status == 200 and body["consuming"] and body["age_s"] <= STALE_AFTER_S, body
        skew[0] = timedelta(seconds=STALE_AFTER_S + 5)  # no forecast for longer than stale_after_s
        deadline = time.monotonic() + 10  # until the loop has polled under the new clock
        while not (body := _probe(f"{base}/readyz")[1])["consuming"] and time.monotonic() < deadline:
            time.sleep(0.1)
        status, body = _probe(f"{base}/readyz")
        assert status == 503 and body["stale"] and body["age_s"] > STALE_AFTER_S and body["consuming"], body
        assert body["reason"].startswith("newest input is")
    finally:
        h.close()
    with pytest.raises(OSError):  # the health server is gone with the service
        urllib.request.urlopen(f"{base}/healthz", timeout=2)
