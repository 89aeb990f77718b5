"""Typed watchers: iterate decoded contract messages from a TAPAS topic (kafka-python, no consumer group).

Each partition is ``assign()``-ed (every watcher sees every key, as the platform's own
consumers do); compacted topics (weights) start from the beginning, so the first
messages are the latest weights of every endpoint. A record that fails its contract is
passed to ``on_error`` (default: skipped), never raised into the caller's loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from contracts import Contract, ContractError, RoutingWeights, ServerForecast, decode, topic_for
from contracts.topics import TOPIC_BY_NAME

M = TypeVar("M", bound=Contract)


class Watcher(Generic[M]):
    """Decoded messages of one contract from its topic; use as an iterator, ``close()`` when done."""

    def __init__(self, model: type[M], bootstrap_servers: str, *, topic: str | None = None,
                 from_beginning: bool | None = None, poll_timeout_ms: int = 500,
                 on_error: Callable[[ContractError, Any], None] | None = None, **kafka_kwargs: Any) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.model = model
        self.topic = topic or topic_for(model)
        spec = TOPIC_BY_NAME.get(self.topic)
        start = from_beginning if from_beginning is not None else bool(spec and spec.compacted)
        self.on_error = on_error
        self.poll_timeout_ms = poll_timeout_ms
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers.split(","), group_id=None,
                                       enable_auto_commit=False, **kafka_kwargs)
        parts = self._consumer.partitions_for_topic(self.topic) or {0}
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        if start:
            self._consumer.seek_to_beginning(*tps)
        else:
            self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the seeks now: nothing published after construction is missed
            self._consumer.position(tp)

    def poll(self, timeout_ms: int | None = None) -> list[M]:
        """The messages that arrived within ``timeout_ms``."""
        out: list[M] = []
        batches = self._consumer.poll(timeout_ms=self.poll_timeout_ms if timeout_ms is None else timeout_ms)
        for records in batches.values():
            for rec in records:
                try:
                    out.append(decode(self.model, rec.value))
                except ContractError as exc:
                    if self.on_error is not None:
                        self.on_error(exc, rec)
        return out

    def __iter__(self) -> Iterator[M]:
        while True:
            yield from self.poll()

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Watcher[M]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watch_forecasts(bootstrap_servers: str, **kw: Any) -> Watcher[ServerForecast]:
    """Per-server forecasts from ``tapas.forecasts.server`` (from now on)."""
    return Watcher(ServerForecast, bootstrap_servers, **kw)


def watch_weights(bootstrap_servers: str, **kw: Any) -> Watcher[RoutingWeights]:
    """Routing weights from ``tapas.routing.weights`` (compacted: the latest per endpoint first)."""
    return Watcher(RoutingWeights, bootstrap_servers, **kw)
