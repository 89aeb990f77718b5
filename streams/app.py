"""The Faust app: topics, the changelog-backed state table, and thin agents around :class:`StreamProcessor`.

Agents take raw bytes in batches (``take_events``), hand them to the processor and
send what it returns; every decision about joins, models and aggregates lives in
``streams.processor`` and below. Two inputs are read by every worker outside the
consumer group (plain aiokafka ``assign()``, no join): PDU power (every worker
needs every PDU for its servers' shares and headroom) and model announcements
(every worker must switch version).

Durability: per-server state is written to the ``server-state`` table (changelog
``<app_id>-server-state-changelog``, 8 partitions, keyed like the telemetry) for
every server changed since the last write, at every offset commit and when
partitions are revoked. At a commit the consumer (:func:`tansu_safe_consumer_class`)
first fixes the offsets it will commit, then takes the changed states in the same
instant, sends them as record batches and waits for the broker's acknowledgement,
and only then commits those offsets — so the changelog always holds every update
the committed offsets cover. Replayed samples are ignored by the state (not newer),
so a restart restores exactly the state that was lost. (Writing through Faust's
per-key ``table[key] = value`` took 8-10 % of the worker's profile samples at 2,000
servers — one producer call and one debug log line per server per commit; the
batched write puts the same records in the same partitions.)
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust

from contracts.messages import (
    DeadLetter,
    DomainForecast,
    GpuSample,
    InletSample,
    ModelAnnouncement,
    PduPowerSample,
    ServerForecast,
)
from contracts.topics import TOPIC_BY_NAME, topic_for
from forecasting.online import OnlineForecaster
from foundation.health import Readiness, probe_response, readiness
from foundation.kafka import KafkaClients, Last, assign_all_async
from foundation.settings import Settings
from streams.aggregate import partials_from_bytes, partials_to_bytes
from streams.joins import JoinWindows
from streams.processor import BatchOutput, RawRecord, StreamProcessor, TimeWindow, TopologyView
from streams.store.base import HistoryStore, Point

log = logging.getLogger(__name__)

PARTIALS_TOPIC_SUFFIX = "domain-partials"
STATE_TABLE = "server-state"


def load_forecaster(registry_dir: Path, version: str | None = None) -> OnlineForecaster:
    """The promoted forecaster of ``forecasting.registry`` (the physics default when nothing is promoted)."""
    from forecasting.registry import load_forecaster as registry_load

    return registry_load(registry_dir, version=version)


def faust_settings(settings: Settings, connection: Mapping[str, Any]) -> dict[str, Any]:
    """Faust configuration from settings and ``connection`` (``KafkaClients.faust_kwargs``: brokers, TLS, client id).

    The group timeouts are what shorten the join on Tansu.
    """
    w = settings.worker
    kw: dict[str, Any] = dict(
        value_serializer="raw", key_serializer="raw", store="memory://",
        topic_partitions=TOPIC_BY_NAME[topic_for(GpuSample)].partitions, topic_replication_factor=1,
        topic_disable_leader=True, table_standby_replicas=0,
        web_port=w.web_port, web_host=w.web_host, web_bind=w.web_host, datadir=str(w.data_dir),
        broker_session_timeout=w.session_timeout_s, broker_heartbeat_interval=w.heartbeat_interval_s,
        broker_max_poll_interval=w.max_poll_interval_s, broker_rebalance_timeout=w.rebalance_timeout_s,
        consumer_auto_offset_reset="earliest", producer_linger_ms=30, producer_max_batch_size=256 * 1024, broker_commit_interval=2.0,
        stream_buffer_maxsize=8192,
    )
    return {**kw, **connection}


async def true_end_offsets(kafka_kwargs: dict[str, Any], reported: dict[Any, int]) -> dict[Any, int]:
    """End offsets corrected for brokers that report the last *batch's* base offset + 1 (Tansu does).

    Reads from ``reported - 1``: the batch starting there comes back whole, and its
    last offset + 1 is the true end. Against Apache Kafka the probe returns the last
    record and changes nothing. Without this, Faust's table recovery stops at the
    reported offset and silently drops the newest batch of every changelog partition.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    probe = {tp: end for tp, end in reported.items() if end}
    if not probe:
        return dict(reported)
    consumer = AIOKafkaConsumer(**kafka_kwargs, enable_auto_commit=False, max_partition_fetch_bytes=16 << 20)
    await consumer.start()
    try:
        tps = {tp: TopicPartition(tp.topic, tp.partition) for tp in probe}
        consumer.assign(list(tps.values()))
        for tp, end in probe.items():
            consumer.seek(tps[tp], end - 1)
        fixed = dict(reported)
        pending = set(probe)
        for _ in range(20):
            if not pending:
                break
            got = await consumer.getmany(timeout_ms=250)
            for tp in list(pending):
                msgs = got.get(tps[tp], [])
                if msgs:
                    fixed[tp] = max(fixed[tp], msgs[-1].offset + 1)
                    pending.discard(tp)
        return fixed
    finally:
        await consumer.stop()


#: Attribute of the Faust app holding an ``async () -> bool`` run inside every commit (see below).
BEFORE_COMMIT_ATTR = "tapas_before_commit"


def tansu_safe_consumer_class(kafka_kwargs: dict[str, Any], *, fetch_max_wait_ms: int = 50) -> type:
    """Faust's aiokafka consumer with corrected highwaters (:func:`true_end_offsets`), a short fetch wait and a commit hook.

    Faust hard-codes ``fetch_max_wait_ms=1500``; the embedded broker holds a fetch
    that long whenever the request's partitions are not all fed, which put 1-3 s
    between a sample and its forecast even at 150 samples/s. 50 ms keeps the p99
    latency budget.

    Commit hook: when the app has an ``async`` callable under :data:`BEFORE_COMMIT_ATTR`,
    a commit first fixes the offsets to commit (what has been acknowledged so far),
    then runs the hook — whose synchronous start captures the state those offsets
    cover — and commits those same offsets only when the hook returns true. Events
    processed while the hook awaits are left for the next commit. Faust's own
    sequence follows (attached messages, producer flush, offset commit).
    """
    from faust.exceptions import ProducerSendError
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
    from faust.transport.drivers.aiokafka import Consumer as FaustConsumer

    class ShortFetchWaitThread(AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # noqa: SLF001 - Faust hard-codes 1500 ms
            return consumer

    class TansuSafeConsumer(FaustConsumer):
        async def highwaters(self, *partitions: Any) -> Any:
            reported = dict(await super().highwaters(*partitions))
            return await true_end_offsets(kafka_kwargs, reported)

        def _new_consumer_thread(self) -> Any:
            return ShortFetchWaitThread(self, loop=self.loop, beacon=self.beacon)

        async def _commit_tps(self, tps: Any, start_new_transaction: bool) -> bool:
            hook = getattr(self.app, BEFORE_COMMIT_ATTR, None)
            if hook is None:
                return bool(await super()._commit_tps(tps, start_new_transaction))
            commit_offsets = self._filter_committable_offsets(tps)  # fixed before the hook captures state
            if not commit_offsets:
                return False
            if not await hook():
                return False  # nothing committed: these events are processed again after a crash
            try:
                await self._handle_attached(commit_offsets)
            except ProducerSendError as exc:
                await self.crash(exc)
                return False
            return bool(await self._commit_offsets(commit_offsets, start_new_transaction=start_new_transaction))

    return TansuSafeConsumer


class WorkerApp:
    """The stream worker: builds the Faust app around a processor, a store and the settings."""

    def __init__(self, settings: Settings, *, view: TopologyView, forecaster: OnlineForecaster,
                 store: HistoryStore | None, clients: KafkaClients,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.clients = clients
        w = settings.worker
        self._clock = clock or (lambda: datetime.now(UTC))
        self.last_input_at: datetime | None = None
        """When the agents last took a telemetry batch (``/readyz``'s freshness)."""
        self.worker_id = uuid.uuid4().hex[:12]
        self.processor = StreamProcessor(
            view, forecaster, horizons_s=w.horizons_s, tick_s=w.tick_s,
            windows=JoinWindows(w.inlet_max_age_s, w.power_max_age_s), downsample_s=settings.store.downsample_s,
            worker_id=self.worker_id, store_enabled=store is not None,
            time_window=TimeWindow(w.max_sample_age_s, w.max_clock_skew_s), max_servers=w.max_servers)
        self.store = store
        self._points: list[Point] = []
        self._partition_cache: dict[tuple[str, int], dict[bytes, int]] = {}
        self._changelog_lock = asyncio.Lock()
        self.num_forecast_batches_failed = 0
        self.app = faust.App(w.app_id, **faust_settings(settings, clients.faust_kwargs()))
        app = self.app

        def raw_topic(name: str, **kw: Any) -> Any:
            return app.topic(name, value_serializer="raw", key_serializer="raw", **kw)

        self.forecast_name = topic_for(ServerForecast)
        self.domain_name = topic_for(DomainForecast)
        self.deadletter_name = topic_for(DeadLetter)
        self.gpu_topic = raw_topic(topic_for(GpuSample))
        self.inlet_topic = raw_topic(topic_for(InletSample))
        self.forecast_topic = raw_topic(topic_for(ServerForecast))
        self.deadletter_topic = raw_topic(topic_for(DeadLetter))
        self.partials_topic = raw_topic(f"{w.app_id}-{PARTIALS_TOPIC_SUFFIX}", partitions=1, internal=True)
        # key_type/value_type=bytes is what makes recovery decode raw (Faust derives the store's codec from them).
        self.table = app.Table(STATE_TABLE, partitions=self.app.conf.topic_partitions, use_partitioner=True,
                               key_type=bytes, value_type=bytes,
                               schema=faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw",
                                                   value_serializer="raw"))
        setattr(app, BEFORE_COMMIT_ATTR, self.flush_states_batched)
        self.changelog_name = self.table.changelog_topic.get_topic_name()
        app.transport.Consumer = tansu_safe_consumer_class(  # type: ignore[misc]
            clients.aiokafka_kwargs("end-offsets"), fetch_max_wait_ms=w.fetch_max_wait_ms)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self._wire()

    # ------------------------------------------------------------------ state table
    async def flush_states_batched(self) -> bool:
        """Write every changed server's state as record batches and wait for the broker.

        The one path to the changelog: the commit hook, a partition revocation and the
        state page all call it, so a server's states reach its changelog partition in
        the order they were captured. (A second path through Faust's per-key
        ``table[key] = value`` buffered its sends, so an older state captured by the
        state page could land after a newer one from the next commit, and a worker
        taking the partition over restored a state one sample short of the committed
        offsets.) For the commit hook: the changed set is taken before the first
        ``await``, so it covers every event acknowledged when the commit fixed its
        offsets. On a failed send the states are marked changed again and the commit
        is skipped.
        """
        # The lock may wait for the state page's or a revocation's flush; states captured after that wait
        # cover more events than the offsets the commit fixed, never fewer (replayed samples are ignored).
        async with self._changelog_lock:
            dirty_slots = self.processor.take_dirty_slots()
            if not dirty_slots:
                return True
            records = [(self.processor.states.ids[i].encode(), self.processor.states.slot_bytes(i))
                       for i in dirty_slots]
            data = self.table.data
            for key, raw in records:  # the table's own copy, without Faust's per-key changelog send
                data[key] = raw
            try:  # queued in the producer under the lock: a revocation's flush queues after these
                futures = await self._send_batched(self.changelog_name, records)
            except Exception as exc:
                return self._changelog_failed(dirty_slots, exc)
        try:
            await asyncio.gather(*futures)
        except Exception as exc:  # a failed send must not commit offsets past the lost state
            return self._changelog_failed(dirty_slots, exc)
        return True

    def _changelog_failed(self, dirty_slots: list[int], exc: BaseException) -> bool:
        self.processor.dirty |= set(dirty_slots)
        log.error("event=changelog_write_failed states=%d error=%s", len(dirty_slots), exc)
        return False

    async def _on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        # Same ordered path as the commit hook: no older state can land after a newer one.
        await self.flush_states_batched()
        self.processor.forget_servers()

    def _restore_unknown(self, records: list[RawRecord]) -> None:
        known = self.processor.states.index
        for rec in records:
            if rec.key is None or len(known) >= self.processor.max_servers:
                continue
            sid = rec.key.decode(errors="replace")
            if sid in known:
                continue
            raw = self.table.get(rec.key)
            if raw:
                try:
                    self.processor.restore(sid, raw)
                except ValueError as exc:
                    log.error("event=state_restore_failed server=%s error=%s", sid, exc)

    # ------------------------------------------------------------------ output
    async def _send(self, out: BatchOutput) -> None:
        if out.forecasts:
            for fut in await self._send_batched(self.forecast_name, out.forecasts):
                fut.add_done_callback(self._count_failed_forecasts)
        send = self.app.producer.send
        for dl_key, dl in out.dead_letters:
            await send(self.deadletter_name, dl_key or b"", dl, None, None, None)
        if out.points and self.store is not None:
            self._points.extend(out.points)
            if len(self._points) >= self.settings.store.max_buffered_points:
                await self.flush_store()  # backpressure: the agent waits for the store

    def _count_failed_forecasts(self, fut: asyncio.Future[Any]) -> None:
        """A forecast batch the producer gave up on is counted and logged, never dropped silently."""
        exc = None if fut.cancelled() else fut.exception()
        if exc is None:
            return
        self.num_forecast_batches_failed += 1
        log.error("event=forecast_send_failed batches_failed=%d error=%s", self.num_forecast_batches_failed, exc)

    async def _send_batched(self, topic: str, messages: list[tuple[bytes, bytes]]) -> list[asyncio.Future[Any]]:
        """Send keyed messages as one record batch per partition (aiokafka ``send_batch``).

        Per-message ``send`` costs more than the rest of the worker's per-sample work;
        a batch append is a few microseconds. Partitions come from the producer's own
        (murmur2) partitioner, so keys land exactly where ``send`` would put them.
        Returns the batches' delivery futures.
        """
        aio = self.app.producer._ensure_producer()  # type: ignore[attr-defined]  # noqa: SLF001 - no batch API
        await aio.client._wait_on_metadata(topic)  # noqa: SLF001
        # murmur2 is pure Python in aiokafka (~10 us a key); server keys repeat every tick, so remember
        # each key's partition for as long as the topic's partition count stays the same.
        num_parts = len(aio.client.cluster.partitions_for_topic(topic) or ())
        parts = self._partition_cache.setdefault((topic, num_parts), {})
        batches: dict[int, Any] = {}
        futures: list[asyncio.Future[Any]] = []
        for key, value in messages:
            part = parts.get(key)
            if part is None:
                part = parts[key] = aio._partition(topic, None, None, None, key, value)  # noqa: SLF001
            batch = batches.get(part)
            if batch is None:
                batch = batches[part] = aio.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: ship it, start another
                batch.close()
                futures.append(await aio.send_batch(batch, topic, partition=part))
                batch = batches[part] = aio.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for part, batch in batches.items():
            batch.close()
            futures.append(await aio.send_batch(batch, topic, partition=part))
        return futures

    async def flush_store(self) -> None:
        """Write buffered history points in batches (in a thread: the store client blocks)."""
        if self.store is None or not self._points:
            return
        points, self._points = self._points, []
        size = self.settings.store.batch_size
        for i in range(0, len(points), size):
            try:
                await asyncio.to_thread(self.store.write, points[i:i + size])
            except Exception as exc:  # StoreError or a client error: log, keep streaming
                log.error("event=store_write_failed points=%d error=%s", len(points[i:i + size]), exc)

    # ------------------------------------------------------------------ health
    def readiness(self) -> Readiness:
        """Ready while telemetry partitions are assigned (not mid-rebalance) and a batch arrived lately."""
        try:
            assigned = {tp.topic for tp in self.app.assignor.assigned_actives()}
        except Exception:  # noqa: BLE001 - before the first assignment the assignor has no table
            assigned = set()
        consuming = (not self.app.rebalancing
                     and bool(assigned & {self.gpu_topic.get_topic_name(), self.inlet_topic.get_topic_name()}))
        return readiness("worker", consuming=consuming, last_input_at=self.last_input_at, now=self._clock(),
                         stale_after_s=self.settings.worker.stale_after_s)

    def _note_input(self) -> None:
        self.last_input_at = self._clock()

    # ------------------------------------------------------------------ agents
    def _wire(self) -> None:
        app, w = self.app, self.settings.worker

        def records(events: Any) -> list[RawRecord]:
            return [RawRecord(e.message.key, e.message.value, e.message.topic, e.message.partition,
                              e.message.offset) for e in events]

        @app.agent(self.gpu_topic, name="gpu-samples")
        async def gpu_samples(stream: Any) -> None:
            async for events in stream.take_events(w.batch_max, within=w.batch_within_s):
                self._note_input()
                batch = records(events)
                self._restore_unknown(batch)
                await self._send(self.processor.handle_gpu(batch))

        @app.agent(self.inlet_topic, name="inlet-samples")
        async def inlet_samples(stream: Any) -> None:
            async for events in stream.take_events(w.batch_max, within=w.batch_within_s):
                self._note_input()
                batch = records(events)
                self._restore_unknown(batch)
                await self._send(self.processor.handle_inlet(batch))

        @app.agent(self.partials_topic, name="domain-partials")
        async def domain_partials(stream: Any) -> None:
            async for events in stream.take_events(1000, within=0.1):
                now_s = self.processor.clock()  # freshness by arrival on this worker's clock
                for e in events:
                    try:
                        for p in partials_from_bytes(e.message.value):
                            self.processor.combiner.add(p, now_s)
                    except (ValueError, KeyError, TypeError) as exc:
                        log.error("event=bad_partial error=%s", exc)

        @app.timer(interval=w.domain_tick_s)  # type: ignore[untyped-decorator]
        async def publish_domains() -> None:
            partials = self.processor.domain_partials()
            if partials:
                await self.partials_topic.send(key=self.worker_id.encode(), value=partials_to_bytes(partials))
            domains = [(f"{d.domain_kind}:{d.domain_id}".encode(), d.to_bytes())
                       for d in self.processor.domain_forecasts()]
            if domains:
                await self._send_batched(self.domain_name, domains)

        @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
        async def flush_history() -> None:
            await self.flush_store()

        @app.task  # type: ignore[untyped-decorator]
        async def broadcast_inputs() -> None:
            await self._consume_broadcast()

        def probe_page(path: str) -> Any:
            async def page(web: Any, request: Any) -> Any:
                status, body = probe_response(path, "worker", self.readiness) or (404, {})
                return web.json(body, status=status)
            page.__name__ = page.__qualname__ = f"probe_{path.strip('/')}"
            return page

        for path in ("/healthz", "/readyz"):  # unauthenticated, like the rest of the worker's loopback web
            app.page(path)(probe_page(path))

        @app.page("/tapas/state/")
        async def state_page(web: Any, request: Any) -> Any:
            """Every server's state bytes (base64) as held in the changelog table (after flushing).

            ``active_servers``: the servers this worker has processed since its last
            partition assignment (the table may still hold revoked partitions' entries).
            """
            await self.flush_states_batched()
            await app.producer.flush()
            body = {k.decode(): base64.b64encode(v).decode() for k, v in self.table.items()}
            return web.json({"worker_id": self.worker_id, "model_version": self.processor.forecaster.version,
                              "num_late": self.processor.num_late, "states": body,
                              "num_forecast_batches_failed": self.num_forecast_batches_failed,
                              "num_dead_letters": self.processor.num_dead_letters,
                              "num_time_refused": self.processor.num_time_refused,
                              "num_internal_errors": self.processor.num_internal_errors,
                              "num_servers_refused": self.processor.num_evicted,
                              "collector_skew_min_s": _finite(self.processor.skew_min_s),
                              "collector_skew_max_s": _finite(self.processor.skew_max_s),
                              "stream_time_s": _finite(self.processor.stream_time_s),
                              "active_servers": list(self.processor.states.ids)})

    # ------------------------------------------------------------------ broadcast inputs
    async def _consume_broadcast(self) -> None:
        """PDU power and model announcements: every partition, no consumer group (``assign``)."""
        from aiokafka import AIOKafkaConsumer

        pdu, models = topic_for(PduPowerSample), topic_for(ModelAnnouncement)
        consumer = AIOKafkaConsumer(**self.clients.aiokafka_kwargs(f"broadcast-{self.worker_id}"),
                                    enable_auto_commit=False)
        await consumer.start()
        try:  # models: whole (compacted) history; PDU: a bounded look-back
            await assign_all_async(consumer, {pdu: Last(10_000), models: Last(1_000_000)})
            while True:
                got = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, msgs in got.items():
                    recs = [RawRecord(m.key, m.value, tp.topic, tp.partition, m.offset) for m in msgs]
                    if tp.topic == pdu:
                        await self._send(self.processor.handle_pdu(recs))
                    else:
                        for rec in recs:
                            await self._on_announcement(rec)
        finally:
            await consumer.stop()

    async def _on_announcement(self, rec: RawRecord) -> None:
        got = self.processor.decode_announcement(rec)
        if isinstance(got, bytes):
            await self.deadletter_topic.send(key=rec.key or b"", value=got)
            return
        from forecasting.registry import MODEL_NAME, load_announced

        if got.model_name != MODEL_NAME or got.version == self.processor.forecaster.version:
            return
        try:  # path must stay inside the registry and the digest must match (load_announced checks both)
            forecaster = await asyncio.to_thread(load_announced, Path(self.settings.registry_dir), got)
        except Exception as exc:  # a bad artifact must not stop the worker: keep the current version
            log.error("event=model_load_failed version=%s error=%s", got.version, exc)
            return
        self.processor.set_forecaster(forecaster)
        log.info("event=model_switched version=%s", forecaster.version)


def _finite(x: float) -> float | None:
    """JSON has no NaN: ``None`` before the first sample."""
    return None if x != x else x  # noqa: PLR0124 - NaN check without importing math


def describe(app: WorkerApp) -> str:
    """One-line summary for logs."""
    return json.dumps({"worker_id": app.worker_id, "app_id": app.settings.worker.app_id,
                       "horizons_s": list(app.processor.horizons_s)})
