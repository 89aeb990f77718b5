"""The composition root: the one module that builds Kafka clients, stores and collector producers from Settings.

Feature packages never build these themselves (and never import ``tapas``): the CLI
commands call the builders here and pass the objects into the services' constructors
(``run_service(..., clients=, producer=)``, ``ViewConsumer(..., clients=)``,
``WorkerApp(..., clients=, store=)``). A feature that needs clients on demand takes a
:class:`foundation.kafka.KafkaClients`; :class:`SettingsKafkaClients` is the one
implementation. Tests build theirs here too, pointed at the embedded broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from contracts.errors import ConfigError
from foundation.kafka import KafkaClients, SyncConsumer, SyncProducer
from foundation.settings import (
    KafkaSettings,
    Settings,
    StoreSettings,
    aiokafka_kwargs,
    kafka_python_kwargs,
    ssl_context,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ingest.producer import BufferedProducer
    from streams.store.base import HistoryStore
    from streams.store.buffered import BufferedStore


class SettingsKafkaClients:
    """:class:`foundation.kafka.KafkaClients` for the cluster ``kafka`` describes (address, TLS, SASL).

    Examples:
        >>> clients = SettingsKafkaClients(KafkaSettings(bootstrap_servers="a:9092,b:9092", client_id="tapas"))
        >>> kw = clients.aiokafka_kwargs("worker")
        >>> kw["bootstrap_servers"], kw["client_id"]
        ('a:9092,b:9092', 'tapas-worker')
    """

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka

    def _client_id(self, role: str) -> str:
        return f"{self.kafka.client_id}-{role}"

    def consumer(self, role: str, **config: Any) -> SyncConsumer:
        """A kafka-python consumer outside any group (``group_id=None``, no auto commit) unless ``config`` says."""
        from kafka import KafkaConsumer

        kw: dict[str, Any] = {"client_id": self._client_id(role), "group_id": None, "enable_auto_commit": False}
        consumer: SyncConsumer = KafkaConsumer(**kafka_python_kwargs(self.kafka), **{**kw, **config})
        return consumer

    def producer(self, role: str, **config: Any) -> SyncProducer:
        """A kafka-python producer."""
        from kafka import KafkaProducer

        producer: SyncProducer = KafkaProducer(**kafka_python_kwargs(self.kafka),
                                               **{"client_id": self._client_id(role), **config})
        return producer

    def admin(self, role: str, **config: Any) -> Any:
        """A kafka-python admin client (the shell's own status lines and topic creation)."""
        from kafka import KafkaAdminClient

        return KafkaAdminClient(**kafka_python_kwargs(self.kafka), **{"client_id": self._client_id(role), **config})

    def aiokafka_kwargs(self, role: str) -> dict[str, Any]:
        """Connection keyword arguments for aiokafka clients (TLS as an ``ssl_context``)."""
        return {**aiokafka_kwargs(self.kafka), "client_id": self._client_id(role)}

    def faust_kwargs(self) -> dict[str, Any]:
        """The connection part of a Faust app's configuration (brokers, TLS context, client id)."""
        kw: dict[str, Any] = {"broker": [f"kafka://{b}" for b in self.kafka.bootstrap_servers.split(",")],
                              "broker_client_id": self.kafka.client_id}
        ctx = ssl_context(self.kafka)
        if ctx is not None:
            kw["broker_credentials"] = ctx
        return kw


def kafka_clients(settings: Settings | KafkaSettings) -> SettingsKafkaClients:
    """The clients for the configured cluster."""
    return SettingsKafkaClients(settings.kafka if isinstance(settings, Settings) else settings)


def open_store(settings: StoreSettings) -> HistoryStore:
    """The store named by ``settings.kind`` (``embedded`` SQLite WAL, ``influxql`` or ``influx`` Flux)."""
    if settings.kind == "embedded":
        from streams.store.embedded import EmbeddedStore

        return EmbeddedStore(settings.path)
    if settings.kind == "influxql":
        from streams.store.influxql import InfluxQLStore

        return InfluxQLStore.from_settings(settings)
    if settings.kind == "influx":
        if not settings.influx_url:
            raise ConfigError("TAPAS_STORE__INFLUX_URL: required when TAPAS_STORE__KIND=influx")
        from streams.store.influx import InfluxStore

        return InfluxStore.from_settings(settings)
    raise ConfigError(f"TAPAS_STORE__KIND: unknown store {settings.kind!r}; use embedded, influxql or influx")


def worker_store(settings: Settings) -> BufferedStore:
    """The stream worker's history store: outages are buffered and retried, the worker keeps forecasting."""
    from streams.store.buffered import buffered

    return buffered(open_store(settings.store), max_buffered_points=settings.store.max_buffered_points,
                    batch_size=settings.store.batch_size)


def collector_producer(settings: Settings, *, source: str, role: str = "ingest",
                       registry: CollectorRegistry | None = None, **overrides: Any) -> BufferedProducer:
    """The bounded, retrying producer of a collector (``tapas ingest``) or the controller's outputs.

    ``role`` names the client to the broker; ``overrides`` change kafka-python options of the
    collectors' tuning (``ingest.producer.producer_tuning``).
    """
    from ingest.producer import build_producer, kafka_connector

    connect = kafka_connector(kafka_clients(settings), settings, role=role, **overrides)
    return build_producer(settings, source=source, connect=connect, registry=registry)


def _typed(clients: SettingsKafkaClients) -> KafkaClients:
    """mypy proof that :class:`SettingsKafkaClients` satisfies the Protocol features take."""
    return clients
