"""The routers' Kafka input: the latest :class:`~contracts.RoutingWeights` per endpoint.

House conventions (as the controller and the agent): the consumer is ``assign()``-ed
to every partition of ``tapas.routing.weights`` (no group join: every router replica
wants every endpoint) and reads from the beginning, because the topic is compacted
and its retained tail is the latest weights of every endpoint. Each record is decoded
by its contract; one that fails goes to ``tapas.deadletter`` with the field and the
reason, and the feed keeps going. Memory is bounded: one message per endpoint, at most
``max_endpoints`` endpoints.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from contracts import ContractError, DeadLetter, RoutingWeights, decode, topic_for
from foundation.kafka import KafkaClients, Publisher, assign_all
from foundation.settings import Settings

log = logging.getLogger(__name__)


class WeightsFeed:
    """Latest weights per endpoint, read from ``tapas.routing.weights``."""

    def __init__(self, settings: Settings, *, clients: KafkaClients, producer: Publisher, consumer_name: str,
                 topic: str | None = None,
                 deadletter_topic: str | None = None, accept: Callable[[RoutingWeights], bool] | None = None,
                 max_endpoints: int = 10_000) -> None:
        self.settings = settings
        self.clients = clients
        self.consumer_name = consumer_name
        self.topic = topic or topic_for(RoutingWeights)
        self.deadletter_topic = deadletter_topic or topic_for(DeadLetter)
        self.accept = accept or (lambda _msg: True)
        self.max_endpoints = max_endpoints
        self.latest: dict[str, RoutingWeights] = {}
        self.num_received = 0
        self.num_dead_lettered = 0
        self.num_refused_endpoints = 0
        self._consumer: Any = None
        self._producer = producer
        self._tps: list[Any] = []

    def open(self) -> None:
        """Assign every partition from its beginning and resolve the seeks (nothing sent later is skipped)."""
        self._consumer = self.clients.consumer(self.consumer_name, auto_offset_reset="earliest",
                                               request_timeout_ms=5000, fetch_max_wait_ms=200,
                                               reconnect_backoff_max_ms=2000)
        self._tps = assign_all(self._consumer, {self.topic: "beginning"}, metadata_wait_s=0.0)
        for tp in self._tps:
            self._consumer.position(tp)

    def poll(self, timeout_ms: int, now: datetime) -> int:
        """Fold what arrived within ``timeout_ms`` into :attr:`latest`; returns how many records were read."""
        n = 0
        for _tp, records in self._consumer.poll(timeout_ms=timeout_ms, max_records=2000).items():
            for rec in records:
                n += 1
                try:
                    msg = decode(RoutingWeights, rec.value)
                except ContractError as exc:
                    self._dead_letter(rec, exc, now)
                    continue
                self._fold(msg)
        self._producer.pump()
        return n

    def _fold(self, msg: RoutingWeights) -> None:
        if not self.accept(msg):
            return
        self.num_received += 1
        old = self.latest.get(msg.endpoint_id)
        if old is None and len(self.latest) >= self.max_endpoints:
            self.num_refused_endpoints += 1
            log.warning("event=router_endpoint_refused endpoint=%s max_endpoints=%d", msg.endpoint_id,
                        self.max_endpoints)
            return
        if old is None or msg.issued_at >= old.issued_at:  # a replayed older message never wins
            self.latest[msg.endpoint_id] = msg

    def _dead_letter(self, rec: Any, exc: ContractError, now: datetime) -> None:
        raw: bytes = rec.value or b""
        dl = DeadLetter(source_topic=self.topic, partition=rec.partition, offset=rec.offset, received_at=now,
                        field=exc.field, reason=f"{self.consumer_name}: {exc.reason}"[:4000],
                        raw_b64=base64.b64encode(raw[:100_000]).decode())
        self._producer.publish(self.deadletter_topic, rec.key, dl.to_bytes())
        self.num_dead_lettered += 1
        log.warning("event=routing_weights_dead_lettered field=%s reason=%s", exc.field, exc.reason)

    def lag(self) -> int | None:
        """Records on the topic not read yet (None when the broker does not answer)."""
        try:
            ends = self._consumer.end_offsets(self._tps, timeout_ms=1000)
            return int(sum(max(0, ends[tp] - self._consumer.position(tp)) for tp in self._tps))
        except Exception:  # noqa: BLE001 - KafkaTimeoutError and connection errors: lag unknown
            return None

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        if self._producer is not None:
            self._producer.close(5)
