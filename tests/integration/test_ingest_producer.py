"""The buffered producer against real embedded brokers: outages, a broker restart, overflow.

The restart test is the issue's acceptance check: stop the broker mid-stream, keep
collecting, start a new broker on the same port, and every sample the producer
accepted arrives exactly once, oldest first per key. Tansu runs in memory, so the
second broker starts empty: the topic is created again, and what the first broker
held is read before it stops.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from foundation.broker import EmbeddedBroker, free_port
from foundation.settings import load_settings
from ingest.producer import BufferedProducer
from tapas.bootstrap import collector_producer

pytestmark = pytest.mark.integration

TOPIC = "test.ingest.restart"
PARTITIONS = 4
NUM_SERVERS = 8


def make_topic(bootstrap: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:  # a producer probing the new broker may have auto-created it already
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        admin.close()


def producer_for(bootstrap: str, **ingest: object) -> BufferedProducer:
    settings = load_settings(kafka={"bootstrap_servers": bootstrap},
                             ingest={"request_timeout_ms": 1500, "retry_backoff_s": 0.2, "max_retry_backoff_s": 1.0,
                                     "linger_ms": 5, **ingest})
    return collector_producer(settings, source="test")


def read_all(bootstrap: str, expected: int, timeout_s: float = 20.0) -> list[dict[str, int]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(TOPIC) or set(range(PARTITIONS))
        consumer.assign([TopicPartition(TOPIC, p) for p in sorted(partitions)])
        got: list[dict[str, int]] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                got += [json.loads(r.value) for r in records]
        time.sleep(0.3)  # anything beyond `expected` (a duplicate) must show up too
        for records in consumer.poll(timeout_ms=300).values():
            got += [json.loads(r.value) for r in records]
        return got
    finally:
        consumer.close()


@pytest.fixture
def broker_port() -> Iterator[int]:
    yield free_port()


def publish_ticks(producer: BufferedProducer, ticks: range, accepted: list[dict[str, int]],
                  pause_s: float) -> None:
    for tick in ticks:
        for server in range(NUM_SERVERS):
            payload = {"server": server, "tick": tick}
            if producer.publish(TOPIC, f"srv-{server}".encode(), json.dumps(payload).encode()):
                accepted.append(payload)
        producer.pump()
        time.sleep(pause_s)


@pytest.mark.fault
def test_broker_restart_mid_stream_delivers_every_accepted_sample_once(broker_port: int) -> None:
    first = EmbeddedBroker(port=broker_port, create_project_topics=False).start()
    second: EmbeddedBroker | None = None
    producer = producer_for(first.bootstrap)
    accepted: list[dict[str, int]] = []
    try:
        make_topic(first.bootstrap)
        publish_ticks(producer, range(0, 30), accepted, pause_s=0.01)
        assert producer.flush(15)
        before = read_all(first.bootstrap, expected=producer.num_sent)
        first.stop()

        publish_ticks(producer, range(30, 60), accepted, pause_s=0.1)  # broker down 3 s: buffered
        assert not producer.broker_reachable
        assert producer.num_buffered > 0
        buffered_while_down = producer.metrics.buffered._value.get()  # type: ignore[attr-defined]

        second = EmbeddedBroker(port=broker_port, create_project_topics=False).start()
        make_topic(second.bootstrap)
        publish_ticks(producer, range(60, 90), accepted, pause_s=0.01)
        assert producer.flush(30), f"undelivered: {producer.num_buffered} ({producer.last_error})"
        after = read_all(second.bootstrap, expected=len(accepted) - len(before))
    finally:
        producer.close(5)
        first.stop()
        if second is not None:
            second.stop()

    assert len(accepted) == 90 * NUM_SERVERS and producer.num_dropped == 0
    delivered = before + after
    keys = [(d["server"], d["tick"]) for d in delivered]
    print(f"broker restart: sent={len(accepted)} delivered={len(keys)} duplicated={len(keys) - len(set(keys))} "
          f"lost={len({(a['server'], a['tick']) for a in accepted} - set(keys))} buffered_while_down={buffered_while_down}")
    assert len(keys) == len(set(keys)), "a sample was delivered twice"
    assert sorted(keys) == sorted((a["server"], a["tick"]) for a in accepted), "a sample was lost"
    assert producer.num_sent == len(accepted)
    assert buffered_while_down > 0
    for server in range(NUM_SERVERS):  # oldest first per key across the outage
        ticks = [d["tick"] for d in after if d["server"] == server]
        assert ticks == sorted(ticks), (server, [(d["server"], d["tick"]) for d in after][:40])


def test_collector_started_before_the_broker_delivers_once_it_appears(broker_port: int) -> None:
    producer = producer_for(f"127.0.0.1:{broker_port}")
    accepted: list[dict[str, int]] = []
    broker: EmbeddedBroker | None = None
    try:
        publish_ticks(producer, range(0, 5), accepted, pause_s=0.0)
        assert producer.num_sent == 0 and producer.num_buffered == len(accepted)
        broker = EmbeddedBroker(port=broker_port, create_project_topics=False).start()
        make_topic(broker.bootstrap)
        assert producer.flush(30), producer.last_error
        got = read_all(broker.bootstrap, expected=len(accepted))
    finally:
        producer.close(5)
        if broker is not None:
            broker.stop()
    assert sorted((g["server"], g["tick"]) for g in got) == sorted((a["server"], a["tick"]) for a in accepted)


def test_overflow_refuses_and_counts_drops_without_losing_accepted(broker_port: int) -> None:
    producer = producer_for(f"127.0.0.1:{broker_port}", max_buffered_samples=20)
    accepted: list[dict[str, int]] = []
    try:
        publish_ticks(producer, range(0, 5), accepted, pause_s=0.0)  # 40 offered, nothing listening
        assert len(accepted) == 20
        assert producer.num_dropped == 20
        assert producer.metrics.dropped._value.get() == 20  # type: ignore[attr-defined]
        assert accepted == [{"server": s, "tick": t} for t in range(3) for s in range(NUM_SERVERS)][:20]
    finally:
        producer.close(0.5)


def test_disk_spool_extends_the_buffer_and_survives_a_collector_restart(broker_port: int, tmp_path: object) -> None:
    """Beyond max_buffered, samples spill to disk; a collector stopped during the outage resumes from the spool."""
    spool = {"spool_dir": str(tmp_path), "max_buffered_samples": 10}
    accepted: list[dict[str, int]] = []
    first = producer_for(f"127.0.0.1:{broker_port}", **spool)
    publish_ticks(first, range(0, 6), accepted, pause_s=0.0)  # 48 samples, nothing listening
    assert len(accepted) == 48 and first.num_dropped == 0
    first.close(0.5)  # collector stops mid-outage: memory goes to the spool, oldest first
    assert first.num_dropped == 0

    broker = EmbeddedBroker(port=broker_port, create_project_topics=False).start()
    second = producer_for(broker.bootstrap, **spool)
    try:
        make_topic(broker.bootstrap)
        publish_ticks(second, range(6, 8), accepted, pause_s=0.0)
        assert second.flush(30), second.last_error
        got = read_all(broker.bootstrap, expected=len(accepted))
    finally:
        second.close(5)
        broker.stop()
    keys = [(g["server"], g["tick"]) for g in got]
    assert sorted(keys) == sorted((a["server"], a["tick"]) for a in accepted) and len(keys) == len(set(keys))
    for server in range(NUM_SERVERS):
        ticks = [g["tick"] for g in got if g["server"] == server]
        assert ticks == sorted(ticks)


def test_a_record_the_broker_can_never_take_is_dropped_not_blocking(broker: object, topic_factory: object) -> None:
    topic = topic_factory("ingest-poison", partitions=1)  # type: ignore[operator]
    producer = producer_for(broker.bootstrap)  # type: ignore[attr-defined]
    try:
        assert producer.publish(topic, b"k", b"x" * 2_000_000)  # accepted, then refused by the client: too large
        for i in range(5):
            producer.publish(topic, b"k", json.dumps({"server": 0, "tick": i}).encode())
        assert producer.flush(20), producer.last_error
    finally:
        producer.close(5)
    assert producer.num_dropped == 1 and producer.num_sent == 5
