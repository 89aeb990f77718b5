"""A buffered, retrying kafka-python producer that never loses a sample it accepted.

Collectors must survive broker outages. kafka-python alone retries inside one
request timeout and then fails the future, and its idempotent mode cannot follow a
broker that restarted with an empty log. So this layer owns delivery:

* ``publish`` *accepts* a record into a bounded FIFO (memory, then an optional
  on-disk spool) or refuses it and counts it as dropped — accepted records are the
  ones the collector may forget about;
* records are handed to kafka-python (batching, lz4/gzip compression) oldest first,
  one *window* at a time: everything queued goes out together and the next window
  waits until each record of this one is acknowledged or failed;
* kafka-python itself retries a window across an outage, with one request in flight
  per connection and a long delivery timeout. That is what keeps each key's records
  in order: with ``retries=0`` a batch that failed while a newer batch of the same
  partition was still queued let the newer one land first once the broker was back
  (seen in CI: ticks 54-60 of a server before its ticks 31-53). A retried batch goes
  back to the head of its partition and the partition stays muted until it is
  written, so nothing newer can overtake it;
* a window that stays unacknowledged longer than the stall timeout marks the broker
  unreachable (for the metrics and ``broker_reachable``); a send that fails at once
  (no metadata, kafka-python's buffer full) goes back to the head of the FIFO and is
  retried with exponential backoff, one probe record at a time; a record that finally
  fails (delivery timeout) is requeued at the head once every older send settled;
* a record counts as ``sent`` only when the broker acknowledged it. A duplicate needs
  an acknowledgement lost after the broker wrote the batch, which makes delivery
  at-least-once in that one case (idempotence is off because an idempotent producer
  id does not survive a broker that restarted with an empty log).

Overflow refuses the *newest* record rather than evicting an accepted one: the
promise "accepted means delivered" holds within capacity, and the drop is counted,
logged and exported.

Metrics (prometheus-client, one registry per producer so tests can build many):
``tapas_ingest_samples_sent_total``, ``tapas_ingest_samples_buffered_total`` (accepted
while the broker was unreachable), ``tapas_ingest_samples_dropped_total``,
``tapas_ingest_invalid_readings_total`` (readings flagged by the edge rules) and the
gauge ``tapas_ingest_buffered_samples``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from contracts.messages import Contract
from contracts.topics import TOPIC_BY_MESSAGE
from foundation.kafka import KafkaClients

log = logging.getLogger(__name__)


class Record:
    """One Kafka record waiting for delivery; ``seq`` orders it in the FIFO."""

    __slots__ = ("key", "seq", "topic", "value")

    def __init__(self, topic: str, key: bytes | None, value: bytes, seq: int = 0) -> None:
        self.topic = topic
        self.key = key
        self.value = value
        self.seq = seq


class SendFuture(Protocol):
    """What kafka-python's ``FutureRecordMetadata`` offers and this module uses."""

    @property
    def is_done(self) -> bool: ...

    def succeeded(self) -> bool: ...

    @property
    def exception(self) -> BaseException | None: ...


class KafkaSender(Protocol):
    """The subset of ``kafka.KafkaProducer`` the buffered producer drives."""

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


class IngestMetrics:
    """The Prometheus counters of one collector process (own registry, so many can coexist)."""

    def __init__(self, source: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["source"]
        self.sent = Counter("tapas_ingest_samples_sent", "Samples acknowledged by the broker.", labels,
                            registry=self.registry).labels(source)
        self.buffered = Counter("tapas_ingest_samples_buffered",
                                "Samples accepted while the broker was unreachable (held for retry).", labels,
                                registry=self.registry).labels(source)
        self.dropped = Counter("tapas_ingest_samples_dropped", "Samples refused because the buffer was full.",
                               labels, registry=self.registry).labels(source)
        self.invalid = Counter("tapas_ingest_invalid_readings",
                               "Readings flagged invalid by the edge rules (published as null).", labels,
                               registry=self.registry).labels(source)
        self.buffered_now = Gauge("tapas_ingest_buffered_samples", "Samples accepted and not yet acknowledged.",
                                  labels, registry=self.registry).labels(source)


_FRAME = struct.Struct("<HII")  # topic length, key length (0xFFFFFFFF = None), value length
_NO_KEY = 0xFFFFFFFF
_FIRST_SEGMENT = 1_000_000_000


class DiskSpool:
    """A FIFO of records in numbered segment files, so a buffer can outgrow memory and outlive a restart.

    Segments are appended at the tail and read back whole from the head; records put
    back at :meth:`prepend` go to a segment numbered before every other, so the order
    across a process restart is still oldest first. A torn last frame (crash mid-write)
    is ignored on read.
    """

    def __init__(self, directory: Path, *, max_bytes: int, segment_records: int = 10_000) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_records = segment_records
        directory.mkdir(parents=True, exist_ok=True)
        self._segments: deque[int] = deque(sorted(self._existing()))
        self._counts: dict[int, int] = {i: sum(1 for _ in self._read(i)) for i in self._segments}
        self._num_records = sum(self._counts.values())
        self._bytes = sum(self._path(i).stat().st_size for i in self._segments)
        self._writer: Any = None
        self._writer_index: int | None = None

    def _existing(self) -> Iterator[int]:
        for p in self.directory.glob("seg-*.bin"):
            with contextlib.suppress(ValueError):
                yield int(p.stem[4:])

    def _path(self, index: int) -> Path:
        return self.directory / f"seg-{index:012d}.bin"

    def __len__(self) -> int:
        return self._num_records

    @staticmethod
    def _encode(rec: Record) -> bytes:
        topic = rec.topic.encode()
        key_len = _NO_KEY if rec.key is None else len(rec.key)
        return _FRAME.pack(len(topic), key_len, len(rec.value)) + topic + (rec.key or b"") + rec.value

    def _read(self, index: int) -> Iterator[Record]:
        raw = self._path(index).read_bytes()
        pos = 0
        while pos + _FRAME.size <= len(raw):
            tlen, klen, vlen = _FRAME.unpack_from(raw, pos)
            pos += _FRAME.size
            key_size = 0 if klen == _NO_KEY else klen
            end = pos + tlen + key_size + vlen
            if end > len(raw):
                break  # torn frame from a crash: everything before it is intact
            topic = raw[pos:pos + tlen].decode()
            key = None if klen == _NO_KEY else raw[pos + tlen:pos + tlen + klen]
            yield Record(topic, key, raw[pos + tlen + key_size:end])
            pos = end

    def append(self, rec: Record) -> bool:
        """Add ``rec`` at the tail; False when the spool is at its size cap."""
        frame = self._encode(rec)
        if self._bytes + len(frame) > self.max_bytes:
            return False
        if self._writer is None or self._counts[self._writer_index or 0] >= self.segment_records:
            self._close_writer()
            index = (self._segments[-1] + 1) if self._segments else _FIRST_SEGMENT
            self._segments.append(index)
            self._counts[index] = 0
            self._writer = open(self._path(index), "ab")  # noqa: SIM115 - kept open across appends
            self._writer_index = index
        self._writer.write(frame)
        self._counts[self._writer_index or 0] += 1
        self._num_records += 1
        self._bytes += len(frame)
        return True

    def prepend(self, records: list[Record]) -> None:
        """Write ``records`` as a segment before every other (used on close for undelivered memory)."""
        if not records:
            return
        index = (self._segments[0] - 1) if self._segments else _FIRST_SEGMENT
        with open(self._path(index), "wb") as fh:
            for rec in records:
                fh.write(self._encode(rec))
        self._segments.appendleft(index)
        self._counts[index] = len(records)
        self._num_records += len(records)
        self._bytes += self._path(index).stat().st_size

    def pop_segment(self) -> list[Record]:
        """Remove and return the oldest segment's records (empty list when the spool is empty)."""
        if not self._segments:
            return []
        index = self._segments[0]
        if index == self._writer_index:
            self._close_writer()
        records = list(self._read(index))
        self._segments.popleft()
        self._bytes -= self._path(index).stat().st_size
        self._num_records -= self._counts.pop(index)
        os.unlink(self._path(index))
        return records

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._writer_index = None

    def close(self) -> None:
        """Flush and close the open segment; the files stay for the next run."""
        self._close_writer()


def encode_message(message: Contract) -> bytes:
    """The wire bytes of a message, identical to ``message.to_bytes()``.

    Calls pydantic's compiled serializer directly: it skips ``model_dump_json``'s
    Python wrapper and the ``str.encode`` copy, which matters at 20,000 samples/s.
    """
    return type(message).__pydantic_serializer__.to_json(message)


#: kafka-python errors that say the *record* can never be delivered, so retrying it would block the queue.
_POISON_ERRORS = ("MessageSizeTooLargeError", "RecordTooLargeError", "InvalidTopicError", "CorruptRecordError")


def is_poison(exc: BaseException | None) -> bool:
    """True for errors about the record itself; outages and authorisation errors are retried instead.

    Examples:
        >>> from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
        >>> is_poison(MessageSizeTooLargeError()), is_poison(KafkaTimeoutError())
        (True, False)
    """
    return exc is not None and type(exc).__name__ in _POISON_ERRORS


class BufferedProducer:
    """Accept records into a bounded FIFO and deliver them oldest first, retrying across outages.

    Args:
        connect: builds the kafka-python producer; called again after a failure to build one.
        source: label of the metrics (``nvml``, ``redfish``, ...).
        max_buffered: records held in memory (not yet handed to kafka-python).
        spool: optional on-disk overflow; while it holds records, new ones queue behind them.
        max_in_flight: records handed to kafka-python and not yet acknowledged.
        retry_backoff_s / max_retry_backoff_s: exponential wait between probes of a dead broker.
        stall_timeout_s: a window unacknowledged this long marks the broker unreachable.
        clock: monotonic seconds (injected for tests).

    Examples:
        >>> from foundation.settings import load_settings  # doctest: +SKIP
        >>> from tapas.bootstrap import kafka_clients  # doctest: +SKIP
        >>> settings = load_settings()  # doctest: +SKIP
        >>> prod = BufferedProducer(kafka_connector(kafka_clients(settings), settings), source="redfish")  # doctest: +SKIP
        >>> prod.publish_message(sample); prod.flush(10)  # doctest: +SKIP
    """

    def __init__(self, connect: Callable[[], KafkaSender], *, source: str, max_buffered: int = 100_000,
                 spool: DiskSpool | None = None, max_in_flight: int = 50_000, retry_backoff_s: float = 0.5,
                 max_retry_backoff_s: float = 10.0, stall_timeout_s: float = 5.0,
                 metrics: IngestMetrics | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._connect = connect
        self.source = source
        self.max_buffered = max_buffered
        self.spool = spool
        self.max_in_flight = max_in_flight
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_backoff_s = max_retry_backoff_s
        self.stall_timeout_s = stall_timeout_s
        self.metrics = metrics or IngestMetrics(source)
        self._clock = clock
        self._kafka: KafkaSender | None = None
        self._pending: deque[Record] = deque()
        self._inflight: deque[tuple[Record, SendFuture]] = deque()
        self._failed: list[Record] = []
        self._seq = 0
        self._degraded = False
        self._backoff_s = retry_backoff_s
        self._retry_at = 0.0
        self._window_sent_at = 0.0
        self._last_drop_log = -1e9
        self.num_sent = 0
        self.num_dropped = 0
        self.last_error: str | None = None
        self.metrics.buffered_now.set_function(lambda: self.num_buffered)  # read at scrape time

    # ------------------------------------------------------------------ accepting

    @property
    def num_buffered(self) -> int:
        """Accepted records not yet acknowledged (memory, in flight, failed and spooled)."""
        return len(self._pending) + len(self._inflight) + len(self._failed) + (len(self.spool) if self.spool else 0)

    @property
    def broker_reachable(self) -> bool:
        """False while the producer is probing a broker that refused or timed out."""
        return not self._degraded

    def publish_message(self, message: Contract) -> bool:
        """Publish a contract message on its topic, keyed by the field the topic table names."""
        spec = TOPIC_BY_MESSAGE[type(message)]
        key = getattr(message, spec.key)
        return self.publish(spec.name, str(key).encode(), encode_message(message))

    def publish(self, topic: str, key: bytes | None, value: bytes) -> bool:
        """Accept one record for delivery; False (and counted as dropped) when the buffer is full."""
        rec = Record(topic, key, value)
        if self.spool is not None and (len(self.spool) or len(self._pending) >= self.max_buffered):
            accepted = self.spool.append(rec)
        elif len(self._pending) < self.max_buffered:
            self._seq += 1
            rec.seq = self._seq
            self._pending.append(rec)
            accepted = True
        else:
            accepted = False
        if not accepted:
            self.num_dropped += 1
            self.metrics.dropped.inc()
            now = self._clock()
            if now - self._last_drop_log >= 10.0:
                self._last_drop_log = now
                log.warning("event=ingest_buffer_full source=%s dropped_total=%d buffered=%d",
                            self.source, self.num_dropped, self.num_buffered)
        elif self._degraded or self._kafka is None:
            self.metrics.buffered.inc()
        self.pump()
        return accepted

    # ------------------------------------------------------------------ delivering

    def _send(self, kafka: KafkaSender, rec: Record) -> bool:
        """Hand one record to kafka-python; on an immediate error put it back and go degraded."""
        try:
            fut = kafka.send(rec.topic, value=rec.value, key=rec.key)
        except Exception as exc:  # noqa: BLE001 - KafkaTimeoutError, KafkaConnectionError, closed producer...
            if is_poison(exc):
                self._drop_poison(rec, exc)
                return True
            self._pending.appendleft(rec)
            self._enter_degraded(exc)
            return False
        self._inflight.append((rec, fut))
        return True

    def _drop_poison(self, rec: Record, exc: BaseException) -> None:
        """A record the broker will never take (too large, invalid topic): drop it rather than block the queue."""
        self.num_dropped += 1
        self.metrics.dropped.inc()
        log.error("event=ingest_record_refused source=%s topic=%s key=%r error=%r", self.source, rec.topic,
                  rec.key, exc)

    def _enter_degraded(self, exc: BaseException) -> None:
        if not self._degraded:
            log.warning("event=ingest_broker_unreachable source=%s error=%r buffered=%d",
                        self.source, exc, self.num_buffered)
        self.last_error = repr(exc)
        self._degraded = True
        self._retry_at = self._clock() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2.0, self.max_retry_backoff_s)

    def _drain(self, now: float) -> None:
        """Settle acknowledged and failed sends at the head of the in-flight queue; flag a stalled window."""
        inflight = self._inflight
        if not (inflight and inflight[0][1].is_done) and not (self._failed and not inflight):
            if inflight and not self._degraded and now - self._window_sent_at > self.stall_timeout_s:
                self._enter_degraded(TimeoutError(f"no acknowledgement in {self.stall_timeout_s:g} s"))
            return
        while inflight and inflight[0][1].is_done:
            rec, fut = inflight.popleft()
            if fut.succeeded():
                self.num_sent += 1
                self.metrics.sent.inc()
                if self._degraded:
                    self._degraded = False
                    self._backoff_s = self.retry_backoff_s
                    log.info("event=ingest_broker_recovered source=%s buffered=%d", self.source, self.num_buffered)
            elif is_poison(fut.exception):
                self._drop_poison(rec, fut.exception or RuntimeError("refused"))
            else:
                self._failed.append(rec)
                self._enter_degraded(fut.exception or RuntimeError("send failed"))
        if self._failed and not inflight:
            # Every older send has settled: requeue the failures at the head, oldest first.
            self._failed.sort(key=lambda r: r.seq)
            self._pending.extendleft(reversed(self._failed))
            self._failed.clear()

    def _refill_from_spool(self) -> None:
        if self.spool is None or not len(self.spool) or len(self._pending) > self.max_buffered // 2:
            return
        for rec in self.spool.pop_segment():
            self._seq += 1
            rec.seq = self._seq
            self._pending.append(rec)

    def pump(self) -> None:
        """Make progress: connect if needed, settle finished sends, dispatch queued records."""
        now = self._clock()
        kafka = self._kafka
        if kafka is None:
            if now < self._retry_at:
                return
            try:
                kafka = self._kafka = self._connect()
            except (ValueError, TypeError):
                raise  # a configuration mistake: retrying will not fix it
            except Exception as exc:  # noqa: BLE001 - NoBrokersAvailable, connection errors
                self._enter_degraded(exc)
                return
        self._drain(now)
        if self._inflight or self._failed or (self._degraded and now < self._retry_at):
            return  # one window at a time: a newer record must not land before an older one that fails
        self._refill_from_spool()
        self._window_sent_at = now
        limit = 1 if self._degraded else self.max_in_flight
        while self._pending and len(self._inflight) < limit:
            if not self._send(kafka, self._pending.popleft()):
                return
            if self._degraded:
                # One probe per backoff period while the broker is unreachable.
                self._retry_at = now + self._backoff_s
            if not self._pending:
                self._refill_from_spool()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Deliver everything accepted so far (retrying) until done or ``timeout_s``; True when done."""
        deadline = self._clock() + timeout_s
        while True:
            self.pump()
            if self._kafka is not None and self._inflight:
                with contextlib.suppress(Exception):
                    self._kafka.flush(timeout=max(0.0, min(1.0, deadline - self._clock())))
                self._drain(self._clock())
            if self.num_buffered == 0:
                return True
            if self._clock() >= deadline:
                return False
            if not self._inflight:
                time.sleep(min(0.05, max(0.0, self._retry_at - self._clock())) or 0.01)

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush, then close kafka-python; undelivered records go to the spool if there is one."""
        self.flush(timeout_s)
        if self._kafka is not None:
            with contextlib.suppress(Exception):
                self._kafka.close(timeout=min(timeout_s, 5.0))
            self._kafka = None
        unsettled = []
        for rec, fut in self._inflight:  # closing kafka-python settled these: acknowledged ones are not leftovers
            if fut.is_done and fut.succeeded():
                self.num_sent += 1
                self.metrics.sent.inc()
            else:
                unsettled.append(rec)
        leftover = sorted(unsettled + self._failed, key=lambda r: r.seq) + list(self._pending)
        self._inflight.clear()
        self._failed.clear()
        self._pending.clear()
        if self.spool is not None:
            self.spool.prepend(leftover)
            self.spool.close()
        elif leftover:
            self.num_dropped += len(leftover)
            self.metrics.dropped.inc(len(leftover))
            log.error("event=ingest_closed_undelivered source=%s dropped=%d", self.source, len(leftover))

    def __enter__(self) -> BufferedProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def key_caching_partitioner() -> Any:
    """kafka-python's keyed murmur2 partitioning, memoised per (topic, key, partition count).

    Collectors send the same few thousand server ids over and over; the pure-Python
    murmur2 was about 6 % of a send in a profile. The mapping is the Java client's
    (and aiokafka's), so every producer of a server id agrees on its partition.
    """
    import random

    from kafka.partitioner import Partitioner
    from kafka.partitioner.default import murmur2

    class KeyCachingPartitioner(Partitioner):  # type: ignore[misc]
        def __init__(self) -> None:
            self._cache: dict[tuple[str, bytes, int], int] = {}

        def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                      serialized_value: Any, cluster: Any) -> int:
            partitions = cluster.partitions_for_topic(topic)
            if partitions is None:
                raise ValueError(f"Topic {topic} not found in ClusterMetadata")
            if serialized_key is None:
                return int(random.choice(sorted(partitions)))  # noqa: S311 - load spreading, not security
            cache_key = (topic, serialized_key, len(partitions))
            found = self._cache.get(cache_key)
            if found is None:
                if len(self._cache) > 200_000:
                    self._cache.clear()
                found = int(sorted(partitions)[(murmur2(serialized_key) & 0x7FFFFFFF) % len(partitions)])
                self._cache[cache_key] = found
            return found

    return KeyCachingPartitioner()


def kafka_producer_config(settings: Any) -> dict[str, Any]:
    """kafka-python producer keyword arguments from :class:`foundation.settings.Settings` (connection included)."""
    from foundation.settings import kafka_python_kwargs

    return {**kafka_python_kwargs(settings.kafka), "client_id": f"{settings.kafka.client_id}-ingest",
            **producer_tuning(settings)}


def producer_tuning(settings: Any) -> dict[str, Any]:
    """The collectors' kafka-python producer options, without the connection (``KafkaClients`` adds that).

    kafka-python retries in order (one request in flight per connection, so a retried
    batch cannot be overtaken by a newer one of its partition) until the delivery
    timeout; idempotence is off because its producer id does not survive a broker that
    restarted with an empty log. See :class:`BufferedProducer` for the whole contract.
    """
    ing = settings.ingest
    compression = None if ing.compression == "none" else ing.compression
    return {
        "acks": 1,
        "enable_idempotence": False,
        "max_in_flight_requests_per_connection": 1,
        "retry_backoff_ms": int(ing.retry_backoff_s * 1000),
        "delivery_timeout_ms": max(ing.delivery_timeout_ms, ing.request_timeout_ms + ing.linger_ms),
        "compression_type": compression,
        "linger_ms": ing.linger_ms,
        "batch_size": ing.batch_size_bytes,
        "request_timeout_ms": ing.request_timeout_ms,
        # send() blocks this long when it has no metadata (broker never reached): keep the collector loop moving.
        "max_block_ms": min(ing.request_timeout_ms, 500),
        "reconnect_backoff_max_ms": int(ing.max_retry_backoff_s * 1000),
        # A fixed protocol version skips kafka-python's version probe, which blocks the
        # constructor for 30 s when the broker is down (the collector must start anyway).
        "api_version": (2, 5),
        # Topics come from the topic table (their partition counts matter for keying); a
        # missing topic buffers samples until it exists instead of creating a wrong one.
        "allow_auto_create_topics": False,
    }


def kafka_connector(clients: KafkaClients, settings: Any, *, role: str = "ingest",
                    **overrides: Any) -> Callable[[], KafkaSender]:
    """A ``connect`` callable for :class:`BufferedProducer`: a collectors' producer from ``clients``."""
    config = {**producer_tuning(settings), "partitioner": key_caching_partitioner(), **overrides}

    def connect() -> KafkaSender:
        return clients.producer(role, **config)

    return connect


def build_producer(settings: Any, *, source: str, connect: Callable[[], KafkaSender],
                   registry: CollectorRegistry | None = None) -> BufferedProducer:
    """The producer every ``tapas ingest`` source uses, configured from settings (``tapas.bootstrap`` calls it)."""
    ing = settings.ingest
    spool = DiskSpool(ing.spool_dir / source, max_bytes=ing.max_spool_bytes) if ing.spool_dir else None
    return BufferedProducer(connect, source=source,
                            max_buffered=ing.max_buffered_samples, spool=spool,
                            retry_backoff_s=ing.retry_backoff_s, max_retry_backoff_s=ing.max_retry_backoff_s,
                            stall_timeout_s=ing.request_timeout_ms / 1000, metrics=IngestMetrics(source, registry))


def publish_all(producer: BufferedProducer, messages: Iterable[Contract]) -> int:
    """Publish messages, counting their invalid readings; returns how many were accepted."""
    from ingest.validate import count_invalid

    accepted = 0
    for msg in messages:
        num_invalid = count_invalid(msg)
        if num_invalid:
            producer.metrics.invalid.inc(num_invalid)
        accepted += producer.publish_message(msg)
    return accepted
