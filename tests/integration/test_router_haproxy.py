"""A real haproxy follows tapas.routing.weights through its runtime API (embedded broker, loopback backends)."""

from __future__ import annotations

import base64
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from contracts import DeadLetter, InstanceWeight, RoutingWeights, decode
from foundation.settings import Settings
from router.service import HaproxyRouter, run_haproxy_router
from router.weights import ServerRef, parse_map
from tapas.bootstrap import collector_producer, kafka_clients
from tests.integration.haproxy_env import Backends, Haproxy, start_haproxy, stop_haproxy

pytestmark = pytest.mark.integration

TICK_S = 0.5


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[Haproxy, Backends]]:
    backends = Backends(["b0", "b1", "b2"])
    ports = backends.start()
    h = start_haproxy(tmp_path, ports)
    try:
        yield h, backends
    finally:
        stop_haproxy(h)
        backends.stop()


def _weights(endpoint: str, shares: dict[str, float], *, drain: tuple[str, ...] = (), valid_s: float = 30.0,
             issued_at: datetime | None = None) -> RoutingWeights:
    t = issued_at or datetime.now(UTC)
    return RoutingWeights(endpoint_id=endpoint, issued_at=t, valid_until=t + timedelta(seconds=valid_s),
                          weights=[InstanceWeight(instance_id=i, weight=w, state="drain" if i in drain else "active")
                                   for i, w in shares.items()])


def test_haproxy_weights_follow_routing_weights_within_one_tick(
        broker: object, topic_factory: Callable[..., str], haproxy: tuple[Haproxy, Backends], tmp_path: Path) -> None:
    h, backends = haproxy
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    topic, dlq = topic_factory("weights", partitions=4), topic_factory("dlq")
    mapping = parse_map("inst-0 llama/s0\ninst-1 llama/s1\ninst-2 llama/s2\n", "test.map")
    # stale_after_s is long enough that the start-up grace never ends during the fresh phase
    settings = Settings(kafka={"bootstrap_servers": bootstrap},
                        router={"tick_s": TICK_S, "stale_after_s": 6.0, "reconcile_s": 1.0})
    stop, ready = threading.Event(), threading.Event()
    box: dict[str, HaproxyRouter] = {}

    def on_ready(r: HaproxyRouter) -> None:
        box["r"] = r
        ready.set()

    t = threading.Thread(target=run_haproxy_router, args=(settings, h.runtime, mapping),
                         kwargs=dict(clients=kafka_clients(settings), producer=collector_producer(settings, source="router-test"),
                                     stop=stop, topic=topic, deadletter_topic=dlq, on_ready=on_ready))
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1)
    t.start()
    try:
        assert ready.wait(20)
        router = box["r"]
        assert h.runtime.weights() == {ServerRef("llama", s): 10 for s in h.servers}  # untouched before any weights

        def publish(msg: RoutingWeights | bytes, key: bytes = b"llama") -> int:
            value = msg if isinstance(msg, bytes) else msg.to_bytes()
            producer.send(topic, key=key, value=value).get(timeout=10)
            return router.num_ticks

        def wait_for(want: dict[str, int], ticks_at_publish: int, within_ticks: int) -> float:
            start = time.monotonic()
            expect = {ServerRef("llama", s): w for s, w in want.items()}
            while time.monotonic() - start < 20:
                got = h.runtime.weights()
                if got == expect:
                    used = router.num_ticks - ticks_at_publish
                    assert used <= within_ticks, f"weights reached haproxy after {used} ticks, allowed {within_ticks}"
                    return time.monotonic() - start
                time.sleep(0.02)
            raise AssertionError(f"haproxy weights {h.runtime.weights()} never reached {expect}")

        # 1. weights arrive: the next tick sets them (one tick to apply, plus the tick in progress at publish)
        ticks = publish(_weights("llama", {"inst-0": 0.6, "inst-1": 0.3, "inst-2": 0.1}))
        latency_s = wait_for({"s0": 256, "s1": 128, "s2": 43}, ticks, within_ticks=2)
        print(f"weights applied {latency_s:.3f} s after the publish ack (tick {TICK_S} s)")
        assert h.runtime.execute("get weight llama/s1").startswith("128 (initial 10)")

        # 2. a drained instance gets weight 0 and HAProxy sends it no request
        ticks = publish(_weights("llama", {"inst-0": 0.5, "inst-1": 0.5, "inst-2": 0.0}, drain=("inst-2",)))
        wait_for({"s0": 256, "s1": 256, "s2": 0}, ticks, within_ticks=2)
        backends.hits.clear()
        for _ in range(30):
            with urllib.request.urlopen(f"http://127.0.0.1:{h.frontend_port}/", timeout=5) as resp:
                assert resp.status == 200
        assert backends.hits["b2"] == 0 and backends.hits["b0"] >= 10 and backends.hits["b1"] >= 10, backends.hits

        # 3. a manual change through the socket is undone at the next reconcile (reconcile_s = 1 s)
        h.runtime.execute("set server llama/s0 weight 7")
        wait_for({"s0": 256, "s1": 256, "s2": 0}, router.num_ticks, within_ticks=int(1.0 / TICK_S) + 2)

        # 4. a malformed message is dead-lettered with its field; the weights stay
        bad = _weights("llama", {"inst-0": 0.5, "inst-1": 0.5}).model_dump(mode="json")
        bad["weights"][0]["weight"] = 1.7
        import json

        publish(json.dumps(bad).encode())
        dl_consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        dl_consumer.assign([TopicPartition(dlq, 0)])
        dl_consumer.seek_to_beginning()
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + 15
        while not letters and time.monotonic() < deadline:
            for recs in dl_consumer.poll(500).values():
                letters += [decode(DeadLetter, r.value) for r in recs]
        dl_consumer.close()
        assert letters and letters[0].source_topic == topic and "weight" in letters[0].field, letters
        assert b"1.7" in base64.b64decode(letters[0].raw_b64)
        assert h.runtime.weights()[ServerRef("llama", "s2")] == 0

        # 5. stale weights (past valid_until) fail safe to equal weights within one tick of expiry
        short = _weights("llama", {"inst-0": 0.8, "inst-1": 0.1, "inst-2": 0.1}, valid_s=2.0)
        ticks = publish(short)
        wait_for({"s0": 256, "s1": 32, "s2": 32}, ticks, within_ticks=2)
        while datetime.now(UTC) <= short.valid_until:
            time.sleep(0.02)
        wait_for({"s0": 256, "s1": 256, "s2": 256}, router.num_ticks, within_ticks=2)
        assert router.metrics.weights_stale.labels("llama")._value.get() == 1.0
        assert router.metrics.errors._value.get() == 0
    finally:
        stop.set()
        t.join(20)
        producer.close()
    assert not t.is_alive()


def test_cli_refuses_a_map_naming_servers_haproxy_lacks(haproxy: tuple[Haproxy, Backends], tmp_path: Path) -> None:
    import subprocess
    import sys

    h, _backends = haproxy
    routes = tmp_path / "routes.map"
    routes.write_text("inst-0 llama/s0\ninst-7 llama/s7\ninst-8 other/s0\n")
    proc = subprocess.run([sys.executable, "-m", "tapas.cli", "router", "haproxy", "--socket", str(h.socket),
                           "--map", str(routes)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "has no server llama/s7, other/s0" in proc.stderr
    assert h.runtime.weights()[ServerRef("llama", "s0")] == 10  # nothing was set
