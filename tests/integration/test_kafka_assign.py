"""The one assign/seek helper (``foundation.kafka``) against the real embedded broker.

Every start (beginning, end, last N, since a time) must put a consumer of every
partition exactly where it says, for kafka-python and aiokafka alike, and a missing
topic must be skipped, raised or left to partition 0 as asked.
"""

from __future__ import annotations

import asyncio
import doctest
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import foundation.kafka
from foundation.kafka import Last, Since, Start, SyncConsumer, assign_all, assign_all_async
from foundation.settings import KafkaSettings
from tapas.bootstrap import SettingsKafkaClients, kafka_clients

pytestmark = pytest.mark.integration

PARTITIONS = 3
OLD_PER_PARTITION = 4
NEW_PER_PARTITION = 2


def test_doctests_pass() -> None:
    assert doctest.testmod(foundation.kafka).failed == 0


@pytest.fixture
def clients(broker: Any) -> SettingsKafkaClients:
    return kafka_clients(KafkaSettings(bootstrap_servers=broker.bootstrap))


@pytest.fixture
def filled(clients: SettingsKafkaClients, topic_factory: Callable[..., str]) -> tuple[str, datetime]:
    """A topic holding, per partition, 4 records stamped two hours ago then 2 stamped now (one batch each)."""
    topic = topic_factory("assign", partitions=PARTITIONS)
    now = datetime.now(UTC)
    old_ms, new_ms = int((now - timedelta(hours=2)).timestamp() * 1000), int(now.timestamp() * 1000)
    producer: Any = clients.producer("test-fill", acks="all")
    try:
        for p in range(PARTITIONS):
            for i in range(OLD_PER_PARTITION + NEW_PER_PARTITION):
                ts = old_ms if i < OLD_PER_PARTITION else new_ms
                producer.send(topic, value=f"{p}-{i}".encode(), partition=p, timestamp_ms=ts).get(timeout=10)
    finally:
        producer.close(5)
    return topic, now - timedelta(hours=1)


def _drain(consumer: SyncConsumer, idle_s: float = 1.5) -> list[bytes]:
    got: list[bytes] = []
    quiet_until = time.monotonic() + idle_s
    while time.monotonic() < quiet_until:
        batch = consumer.poll(timeout_ms=200)
        for records in batch.values():
            got += [r.value for r in records]
            quiet_until = time.monotonic() + idle_s
    return got


@pytest.fixture
def consumer(clients: SettingsKafkaClients) -> Iterator[SyncConsumer]:
    c = clients.consumer("test-assign")
    try:
        yield c
    finally:
        c.close()


def _expected(indices: range) -> set[bytes]:
    return {f"{p}-{i}".encode() for p in range(PARTITIONS) for i in indices}


@pytest.mark.parametrize(("start", "indices"), [
    ("beginning", range(OLD_PER_PARTITION + NEW_PER_PARTITION)),
    ("end", range(0)),
    (Last(1), range(OLD_PER_PARTITION + NEW_PER_PARTITION - 1, OLD_PER_PARTITION + NEW_PER_PARTITION)),
    (Last(100), range(OLD_PER_PARTITION + NEW_PER_PARTITION)),
], ids=["beginning", "end", "last-1", "last-more-than-held"])
def test_every_partition_starts_where_asked(filled: tuple[str, datetime], consumer: SyncConsumer, start: Start,
                                            indices: range) -> None:
    topic, _ = filled
    tps = assign_all(consumer, {topic: start})
    assert sorted(tp.partition for tp in tps) == list(range(PARTITIONS))
    got = _drain(consumer)
    assert len(got) == len(set(got)) and set(got) == _expected(indices)


def test_since_starts_at_the_brokers_answer_for_the_instant(filled: tuple[str, datetime],
                                                             consumer: SyncConsumer) -> None:
    """Each partition starts at the offset the broker's timestamp lookup names, and reads everything after it."""
    from kafka import TopicPartition

    topic, an_hour_ago = filled
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    answers = consumer.offsets_for_times({tp: int(an_hour_ago.timestamp() * 1000) for tp in tps})
    assign_all(consumer, {topic: Since(an_hour_ago, otherwise="end")})
    first = {tp: found.offset for tp, found in answers.items() if found is not None}
    assert {tp: consumer.position(tp) for tp in tps} == {tp: first.get(tp, OLD_PER_PARTITION + NEW_PER_PARTITION) for tp in tps}
    assert set(_drain(consumer)) == {f"{tp.partition}-{i}".encode() for tp in tps
                                     for i in range(first.get(tp, OLD_PER_PARTITION + NEW_PER_PARTITION), OLD_PER_PARTITION + NEW_PER_PARTITION)}


def test_tansu_answers_every_timestamp_lookup_with_its_first_offset(filled: tuple[str, datetime],
                                                                     consumer: SyncConsumer) -> None:
    """Characterises a Tansu defect: ``ListOffsets`` by timestamp ignores the timestamp (fails once fixed).

    Against Apache Kafka the lookup for an hour ago names offset 4 (the first record stamped
    now) and one for the future names none. On Tansu every :class:`Since` therefore starts at
    the beginning; the callers (controller events, command restore, agent) drop what expired.
    """
    from kafka import TopicPartition

    topic, an_hour_ago = filled
    tp = TopicPartition(topic, 0)
    for at in (an_hour_ago, datetime.now(UTC) + timedelta(hours=1)):
        answer = consumer.offsets_for_times({tp: int(at.timestamp() * 1000)})[tp]
        assert answer is not None and answer.offset == 0


def test_starts_differ_per_topic_and_new_records_follow(filled: tuple[str, datetime], consumer: SyncConsumer,
                                                        clients: SettingsKafkaClients,
                                                        topic_factory: Callable[..., str]) -> None:
    topic, _ = filled
    live = topic_factory("assign-live", partitions=2)
    tps = assign_all(consumer, {topic: "beginning", live: "end"})
    assert {(tp.topic, tp.partition) for tp in tps} == {(topic, p) for p in range(PARTITIONS)} | {(live, 0), (live, 1)}
    assert set(_drain(consumer)) == _expected(range(OLD_PER_PARTITION + NEW_PER_PARTITION))
    producer: Any = clients.producer("test-live", acks="all")
    try:
        for p in (0, 1):
            producer.send(live, value=f"live-{p}".encode(), partition=p).get(timeout=10)
    finally:
        producer.close(5)
    assert set(_drain(consumer)) == {b"live-0", b"live-1"}


def test_missing_topic_is_skipped_raised_or_left_to_partition_zero(consumer: SyncConsumer) -> None:
    missing = f"test.assign.absent.{time.monotonic_ns()}"
    assert assign_all(consumer, {missing: "beginning"}, metadata_wait_s=0.3, missing="skip") == []
    with pytest.raises(RuntimeError, match=f"{missing}: no partitions"):
        assign_all(consumer, {missing: "beginning"}, metadata_wait_s=0.3, missing="raise")
    tps = assign_all(consumer, {missing: "end"}, metadata_wait_s=0.3, missing="partition0")
    assert [(tp.topic, tp.partition) for tp in tps] == [(missing, 0)]


def test_aiokafka_consumer_starts_where_asked(filled: tuple[str, datetime], clients: SettingsKafkaClients) -> None:
    from aiokafka import AIOKafkaConsumer

    topic, _ = filled

    async def read(start: Start) -> set[bytes]:
        c = AIOKafkaConsumer(**clients.aiokafka_kwargs("test-assign-async"), enable_auto_commit=False)
        await c.start()
        try:
            tps = await assign_all_async(c, {topic: start})
            assert sorted(tp.partition for tp in tps) == list(range(PARTITIONS))
            got: list[bytes] = []
            for _ in range(8):
                for msgs in (await c.getmany(timeout_ms=250)).values():
                    got += [m.value for m in msgs]
            assert len(got) == len(set(got))
            return set(got)
        finally:
            await c.stop()

    async def scenario() -> None:
        assert await read("beginning") == _expected(range(OLD_PER_PARTITION + NEW_PER_PARTITION))
        assert await read(Last(2)) == _expected(range(OLD_PER_PARTITION, OLD_PER_PARTITION + NEW_PER_PARTITION))
        assert await read("end") == set()

    asyncio.run(scenario())
