"""Kafka plumbing every feature shares: the client seams (typed Protocols) and one assign/seek helper.

Features read their inputs with ``assign()`` to every partition (no consumer-group join)
and start each topic somewhere of their own: the beginning (a compacted mode or model
topic), the end (live samples), a point in time (commands still valid after a restart)
or the last N records (a dashboard's backlog). :func:`assign_all` (kafka-python) and
:func:`assign_all_async` (aiokafka) do that one way: wait for the topics' metadata,
assign every partition, look the start offsets up explicitly and ``seek`` to them, so
nothing is left to a lazy reset that resolves after the caller reports ready.

Features do not build clients: the shell's composition root (``tapas.bootstrap``)
implements :class:`KafkaClients` from settings and passes it in. This module imports
no feature package and no Kafka library at import time (the helpers import theirs lazily).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

#: What to do with a topic whose metadata has not arrived within the wait: assign its partition 0
#: and let the client resolve the start lazily once it exists, leave it out (logged), or raise.
Missing = Literal["partition0", "skip", "raise"]


@dataclass(frozen=True)
class Since:
    """Start at the first record at or after ``at``; ``otherwise`` when the broker finds none or cannot look up."""

    at: datetime
    otherwise: Literal["beginning", "end"] = "end"


@dataclass(frozen=True)
class Last:
    """Start ``num_records`` before the end (at the beginning when fewer are retained)."""

    num_records: int


#: Where a topic is read from.
Start = Literal["beginning", "end"] | Since | Last


class TopicPartitionLike(Protocol):
    """kafka-python's and aiokafka's ``TopicPartition`` (both named tuples)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...


class OffsetAndTimestampLike(Protocol):
    """What ``offsets_for_times`` maps a partition to."""

    @property
    def offset(self) -> int: ...


class SyncConsumer(Protocol):
    """The subset of ``kafka.KafkaConsumer`` the features drive."""

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...
    def assign(self, partitions: list[Any]) -> None: ...
    def seek(self, partition: Any, offset: int) -> None: ...
    def seek_to_beginning(self, *partitions: Any) -> None: ...
    def seek_to_end(self, *partitions: Any) -> None: ...
    def position(self, partition: Any) -> int: ...
    def beginning_offsets(self, partitions: list[Any], timeout_ms: int | None = None) -> dict[Any, int]: ...
    def end_offsets(self, partitions: list[Any], timeout_ms: int | None = None) -> dict[Any, int]: ...
    def offsets_for_times(self, timestamps: dict[Any, int],
                          timeout_ms: int | None = None) -> dict[Any, OffsetAndTimestampLike | None]: ...
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]: ...
    def close(self) -> None: ...


class AsyncConsumer(Protocol):
    """The subset of ``aiokafka.AIOKafkaConsumer`` the features drive."""

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...
    async def topics(self) -> set[str]: ...
    def assign(self, partitions: list[Any]) -> None: ...
    def seek(self, partition: Any, offset: int) -> None: ...
    async def seek_to_beginning(self, *partitions: Any) -> None: ...
    async def seek_to_end(self, *partitions: Any) -> None: ...
    async def beginning_offsets(self, partitions: list[Any]) -> dict[Any, int]: ...
    async def end_offsets(self, partitions: list[Any]) -> dict[Any, int]: ...
    async def offsets_for_times(self, timestamps: dict[Any, int]) -> dict[Any, OffsetAndTimestampLike | None]: ...


class SyncProducer(Protocol):
    """The subset of ``kafka.KafkaProducer`` the features drive."""

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self, timeout: float | None = None) -> None: ...


class Publisher(Protocol):
    """A buffered, retrying publisher (``ingest.producer.BufferedProducer``): accept now, deliver in ``pump``."""

    def publish(self, topic: str, key: bytes | None, value: bytes) -> bool: ...
    def pump(self) -> None: ...
    def close(self, timeout_s: float = 10.0) -> None: ...


class KafkaClients(Protocol):
    """Builds clients for one cluster on demand; ``tapas.bootstrap`` implements it from settings.

    ``role`` names the client to the broker (``client_id`` = the configured id + ``-role``);
    ``config`` adds or overrides client options (``acks``, ``request_timeout_ms``, ...).
    """

    def consumer(self, role: str, **config: Any) -> SyncConsumer: ...
    def producer(self, role: str, **config: Any) -> SyncProducer: ...
    def aiokafka_kwargs(self, role: str) -> dict[str, Any]: ...
    def faust_kwargs(self) -> dict[str, Any]: ...


def start_offset(start: Start, begin: int, end: int, found: int | None = None) -> int:
    """The offset to seek to for ``start``, given a partition's first and end offsets.

    ``found`` is the ``offsets_for_times`` answer for a :class:`Since` (None: no record
    that late, or the broker cannot look up).

    Examples:
        >>> from datetime import UTC, datetime
        >>> start_offset("beginning", 3, 10), start_offset("end", 3, 10)
        (3, 10)
        >>> start_offset(Last(4), 3, 10), start_offset(Last(100), 3, 10)
        (6, 3)
        >>> t = datetime(2026, 1, 1, tzinfo=UTC)
        >>> start_offset(Since(t), 3, 10, 7), start_offset(Since(t), 3, 10), start_offset(Since(t, "beginning"), 3, 10)
        (7, 10, 3)
    """
    if start == "beginning":
        return begin
    if start == "end":
        return end
    if isinstance(start, Last):
        return max(begin, end - start.num_records)
    if found is not None:
        return max(begin, min(found, end))
    return begin if start.otherwise == "beginning" else end


def _partitions_known(partitions_for_topic: Any, topics: Sequence[str]) -> dict[str, set[int]]:
    known: dict[str, set[int]] = {}
    for topic in topics:
        ids = partitions_for_topic(topic)
        if ids:
            known[topic] = set(ids)
    return known


def _missing_topics(topics: Sequence[str], known: Mapping[str, set[int]], missing: Missing,
                    wait_s: float) -> list[str]:
    """The topics still without metadata, handled as ``missing`` says; returns those to assign partition 0 of."""
    absent = [t for t in topics if t not in known]
    if not absent:
        return []
    if missing == "raise":
        raise RuntimeError(f"topics {', '.join(absent)}: no partitions after {wait_s:g} s "
                           "(was the topic table created? `tapas contracts create-topics`)")
    log.warning("event=topic_missing topics=%s action=%s", ",".join(absent), missing)
    return absent if missing == "partition0" else []


def _lazily_at_end(start: Start) -> bool:
    """Whether a partition without metadata starts at its end (else its beginning) once it exists."""
    return start == "end" or (isinstance(start, Since) and start.otherwise == "end")


def _since_ms(starts: Mapping[str, Start], tps: Sequence[TopicPartitionLike]) -> dict[Any, int]:
    return {tp: int(s.at.timestamp() * 1000) for tp in tps if isinstance(s := starts[tp.topic], Since)}


def assign_all(consumer: SyncConsumer, starts: Mapping[str, Start], *, metadata_wait_s: float = 10.0,
               missing: Missing = "partition0") -> list[Any]:
    """Assign every partition of ``starts``' topics to a kafka-python consumer and seek each to its start.

    Waits up to ``metadata_wait_s`` for the topics' metadata; a topic still unknown is
    handled as ``missing`` says (its partition 0 then starts lazily, at its end for ``"end"``
    and a :class:`Since` whose fallback is the end, else at its beginning). Returns the assigned partitions (``kafka.TopicPartition``).
    """
    from kafka import TopicPartition

    topics = list(starts)
    deadline = time.monotonic() + metadata_wait_s
    known = _partitions_known(consumer.partitions_for_topic, topics)
    while len(known) < len(topics) and time.monotonic() < deadline:
        time.sleep(0.1)
        known = _partitions_known(consumer.partitions_for_topic, topics)
    lazy = [TopicPartition(t, 0) for t in _missing_topics(topics, known, missing, metadata_wait_s)]
    tps = [TopicPartition(t, p) for t in topics if t in known for p in sorted(known[t])]
    consumer.assign(tps + lazy)
    if tps:
        begins = consumer.beginning_offsets(tps)
        ends = consumer.end_offsets(tps)
        found: dict[Any, OffsetAndTimestampLike | None] = {}
        if since := _since_ms(starts, tps):
            try:
                found = consumer.offsets_for_times(since)
            except Exception:  # noqa: BLE001 - a broker without timestamp lookup: each Since's fallback
                log.warning("event=offsets_for_times_failed topics=%s", ",".join(sorted({tp.topic for tp in since})))
        for tp in tps:
            hit = found.get(tp)
            consumer.seek(tp, start_offset(starts[tp.topic], begins[tp], ends[tp], hit.offset if hit else None))
    for tp in lazy:
        if _lazily_at_end(starts[tp.topic]):
            consumer.seek_to_end(tp)
        else:
            consumer.seek_to_beginning(tp)
    return tps + lazy


async def assign_all_async(consumer: AsyncConsumer, starts: Mapping[str, Start], *, metadata_wait_s: float = 10.0,
                           missing: Missing = "raise") -> list[Any]:
    """:func:`assign_all` for a started aiokafka consumer (metadata refreshed with ``topics()``)."""
    from aiokafka import TopicPartition

    topics = list(starts)
    deadline = time.monotonic() + metadata_wait_s
    known = _partitions_known(consumer.partitions_for_topic, topics)
    while len(known) < len(topics) and time.monotonic() < deadline:
        await consumer.topics()  # a metadata request: aiokafka's cache fills only on demand
        known = _partitions_known(consumer.partitions_for_topic, topics)
        if len(known) < len(topics):
            await asyncio.sleep(0.1)
    lazy = [TopicPartition(t, 0) for t in _missing_topics(topics, known, missing, metadata_wait_s)]
    tps = [TopicPartition(t, p) for t in topics if t in known for p in sorted(known[t])]
    consumer.assign(tps + lazy)
    if tps:
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        found: dict[Any, OffsetAndTimestampLike | None] = {}
        if since := _since_ms(starts, tps):
            try:
                found = await consumer.offsets_for_times(since)
            except Exception:  # noqa: BLE001 - a broker without timestamp lookup: each Since's fallback
                log.warning("event=offsets_for_times_failed topics=%s", ",".join(sorted({tp.topic for tp in since})))
        for tp in tps:
            hit = found.get(tp)
            consumer.seek(tp, start_offset(starts[tp.topic], begins[tp], ends[tp], hit.offset if hit else None))
    for tp in lazy:
        await (consumer.seek_to_end(tp) if _lazily_at_end(starts[tp.topic]) else consumer.seek_to_beginning(tp))
    return tps + lazy
