"""The model topic (``tapas.models``): announce a promoted version, and follow announcements.

This is the only Kafka I/O in ``forecasting``. The announcement carries the
artifact's path inside the registry and its sha256; a follower loads it through
:func:`forecasting.registry.load_announced`, which verifies both (see the trust
boundary in ``forecasting/__init__.py``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from contracts import ModelAnnouncement, decode
from contracts.errors import ContractError, TapasError
from contracts.topics import topic_for
from forecasting.online import OnlineForecaster
from forecasting.registry import load_announced
from foundation.kafka import KafkaClients, assign_all

log = logging.getLogger(__name__)


def announcement_from_record(record: dict[str, Any]) -> ModelAnnouncement:
    """The wire message for a promotion record written by :func:`forecasting.registry.promote`."""
    metrics = {k: float(v) for k, v in record.get("metrics", {}).items() if isinstance(v, int | float)}
    return ModelAnnouncement(model_name=record["model_name"], version=record["version"],
                             promoted_at=datetime.fromisoformat(record["promoted_at"]),
                             artifact_path=record["artifact_path"], sha256=record["sha256"], metrics=metrics)


def announce(clients: KafkaClients, announcement: ModelAnnouncement, *, topic: str | None = None,
             timeout_s: float = 15.0) -> None:
    """Publish ``announcement`` (key: model name) and wait until the broker has it."""
    producer = clients.producer("model-announce", acks="all")
    try:
        producer.send(topic or topic_for(ModelAnnouncement), key=announcement.model_name.encode(),
                      value=announcement.to_bytes()).get(timeout=timeout_s)
    finally:
        producer.close(timeout=5)


class ModelFollower:
    """Follows the model topic and hands back the newest verified forecaster (for workers and tests).

    Reads every partition from the beginning with ``assign()`` (no consumer-group
    join), so a worker started after a promotion still picks the promoted version.
    Announcements that fail validation or verification are logged and skipped; the
    current forecaster stays in use.

    Args:
        clients: builds the consumer (``tapas.bootstrap.kafka_clients``).
        registry_dir: this process's registry directory (artifacts must lie inside it).
        topic: the model topic.
        model_name: only announcements of this model are followed.
    """

    def __init__(self, clients: KafkaClients, registry_dir: Path, *, topic: str | None = None,
                 model_name: str = "tapas-forecaster") -> None:
        self.registry_dir = Path(registry_dir)
        self.model_name = model_name
        self.topic = topic or topic_for(ModelAnnouncement)
        self._consumer = clients.consumer("model-follower", auto_offset_reset="earliest")
        assign_all(self._consumer, {self.topic: "beginning"}, metadata_wait_s=0.0)

    def poll(self, timeout_s: float = 0.0) -> OnlineForecaster | None:
        """The forecaster of the newest valid announcement since the last poll, or None."""
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        newest: OnlineForecaster | None = None
        for records in batches.values():
            for rec in records:
                try:
                    msg = decode(ModelAnnouncement, rec.value)
                    if msg.model_name != self.model_name:
                        continue
                    newest = load_announced(self.registry_dir, msg)
                except (ContractError, TapasError, ValueError, OSError) as exc:
                    log.warning("event=model_announcement_refused offset=%s reason=%s", rec.offset, exc)
        return newest

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()
