"""One settings object for every process, from ``TAPAS_*`` variables and an optional TOML file.

Precedence: explicit arguments > environment (``TAPAS_KAFKA__BOOTSTRAP_SERVERS`` for
nested keys) > the file named by ``TAPAS_CONFIG`` > defaults. Each field's
description is the documentation; ``tapas config show`` prints them and the README
table is generated from them.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from contracts.errors import ConfigError


class _Section(BaseModel):
    """A settings section: an unknown key is an error naming it (a typo in a safety setting must not be ignored).

    Inverted bounds (``min_*`` above ``max_*``, see ``_ORDERED_PAIRS``) are errors naming both keys.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _bounds_in_order(self) -> _Section:
        _check_ordered(self)
        return self


#: (lower, upper) setting pairs of a section that must not be inverted.
_ORDERED_PAIRS: tuple[tuple[str, str], ...] = (
    ("min_frequency_mhz", "max_frequency_mhz"), ("min_power_limit_w", "max_power_limit_w"),
    ("retry_backoff_s", "max_retry_backoff_s"))


def _check_ordered(section: BaseModel) -> None:
    for lo, hi in _ORDERED_PAIRS:
        a, b = getattr(section, lo, None), getattr(section, hi, None)
        if a is not None and b is not None and a > b:
            raise ValueError(f"{lo}={a} is above {hi}={b}: the bounds are inverted")


class KafkaSettings(_Section):
    """How every Kafka client (kafka-python, aiokafka, Faust) reaches the broker."""

    bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Comma-separated host:port list.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security protocol used by every client."
    )
    ssl_cafile: Path | None = Field(default=None, description="CA bundle that signs the broker's certificate.")
    ssl_certfile: Path | None = Field(default=None, description="Client certificate for mutual TLS.")
    ssl_keyfile: Path | None = Field(default=None, description="Client key for mutual TLS.")
    ssl_check_hostname: bool = Field(default=True, description="Verify the broker's host name against its cert.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism when security_protocol is SASL_*."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    client_id: str = Field(default="tapas", description="Client id prefix reported to the broker.")


class BrokerSettings(_Section):
    """The embedded Tansu broker started by ``tapas broker`` and ``make demo``."""

    host: str = Field(default="127.0.0.1", description="Address the embedded broker listens on (loopback only).")
    port: int = Field(default=9092, ge=1, le=65535, description="Port of the embedded broker.")
    start_timeout_s: float = Field(default=20.0, gt=0, description="How long to wait for the broker to answer.")


class StoreSettings(_Section):
    """The history store: embedded SQLite (default), InfluxQL v1 (InfluxDB 1.x/2.x/3.x) or Flux (InfluxDB 2.x)."""

    kind: Literal["embedded", "influxql", "influx"] = Field(
        default="embedded", description="Which store implementation: embedded (SQLite), influxql (InfluxDB "
        "1.x, 2.x v1 API or 3.x: /write + /query) or influx (InfluxDB 2.x, Flux through influxdb-client).")
    path: Path = Field(default=Path("var/history.sqlite"), description="Embedded store file (SQLite, WAL mode).")
    influx_url: str | None = Field(default=None, description="InfluxDB URL, e.g. http://influxdb:8086 (influxql "
                                   "and influx kinds).")
    influx_token: SecretStr | None = Field(default=None, description="InfluxDB API token (sent as 'Authorization: "
                                           "Token ...'; InfluxDB 2.x and 3.x).")
    influx_org: str = Field(default="tapas", description="InfluxDB organisation (influx kind).")
    influx_bucket: str = Field(default="tapas", description="InfluxDB bucket (influx kind).")
    influx_database: str = Field(default="tapas", description="InfluxQL database (influxql kind; on 2.x the "
                                 "database of a DBRP mapping, on 3.x the database).")
    influx_retention_policy: str | None = Field(default=None, description="InfluxQL retention policy; unset "
                                                "uses the database's default.")
    influx_username: str | None = Field(default=None, description="InfluxQL user (1.x auth, or 2.x v1 "
                                        "user); sent with HTTP basic auth.")
    influx_password: SecretStr | None = Field(default=None, description="InfluxQL password (with "
                                              "influx_username; on 2.x a token works as the password).")
    influx_create_database: bool = Field(default=True, description="influxql kind: create the database when "
                                         "a write finds it missing (1.x; 2.x needs a DBRP mapping instead).")
    influx_timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one InfluxQL HTTP request.")
    influx_max_retries: int = Field(default=3, ge=0, description="Retries of an InfluxQL request that failed "
                                    "for a transient reason (connection, 429, 5xx) before StoreError.")
    query_max_rows: int = Field(default=1_000_000, ge=1, description="A store query returning more rows "
                                "than this fails with StoreError (narrow the range) instead of exhausting memory.")
    downsample_s: float = Field(default=10.0, ge=0, description="Raw telemetry is written at most once per this period per server.")
    batch_size: int = Field(default=5000, ge=1, description="Points per store write batch.")
    max_buffered_points: int = Field(default=500_000, ge=1000, description="Backpressure threshold of the writer.")


class ControllerSettings(_Section):
    """The live controller service."""

    mode: Literal["advisory", "enforce"] = Field(default="advisory", description="Start mode; switchable at run time.")
    tick_s: float = Field(default=1.0, gt=0, description="Routing/decision tick.")
    stale_after_s: float = Field(default=10.0, gt=0, description="Forecasts older than this are stale.")
    command_ttl_s: float = Field(default=120.0, gt=0, description="Expiry of reconfiguration commands.")
    min_frequency_mhz: float = Field(default=900.0, gt=0, description="Safety floor for any frequency cap.")
    max_commands_per_instance_per_min: int = Field(default=6, ge=1, description="Rate limit per instance.")
    metrics_port: int = Field(default=9108, ge=0, le=65535, description="Prometheus gauges port (0 = off).")
    metrics_host: str = Field(default="127.0.0.1", description="Bind address of the gauges (0.0.0.0 in a "
                              "container, so Prometheus and routers can scrape them).")
    health_port: int = Field(default=9109, ge=0, le=65535, description="Controller /healthz and /readyz "
                             "port (0 = off).")
    health_host: str = Field(default="127.0.0.1", description="Bind address of the controller's /healthz "
                             "and /readyz (0.0.0.0 in a container).")
    max_frequency_mhz: float = Field(default=3000.0, gt=0, description="Safety ceiling for any frequency cap.")
    min_power_limit_w: float = Field(default=100.0, gt=0, description="Safety floor for any GPU power limit.")
    max_power_limit_w: float = Field(default=1200.0, gt=0, description="Safety ceiling for any GPU power limit.")
    min_capacity_frac: float = Field(
        default=0.3, ge=0, le=1,
        description="No command may leave an instance below this fraction of its nominal capacity at SLO.")
    max_command_ttl_s: float = Field(default=900.0, gt=0, description="Commands expiring later than this are refused.")
    reconfig_period_s: float = Field(default=5.0, gt=0, description="Period of the (fast-knob) reconfiguration plan.")
    home_layout: Literal["default", "efficient"] = Field(
        default="efficient",
        description="Weight layout instances return to: the endpoint default, or the catalogue's most power-efficient "
                    "one at the default's quality and capacity (reached by staggered reloads).")
    stale_decay_s: float = Field(
        default=30.0, gt=0,
        description="Time constant over which stale routing weights decay to capacity-proportional ones.")
    agent_health_port: int = Field(default=9110, ge=0, le=65535, description="Node agent: /healthz and "
                                   "/readyz port (0 = off).")
    agent_health_host: str = Field(default="127.0.0.1", description="Node agent: bind address of /healthz "
                                   "and /readyz (0.0.0.0 in a pod, for the kubelet's probes).")
    catalogue_file: Path | None = Field(
        default=None,
        description="Configuration catalogue (JSON from `tapas catalogue export`); unset: the shipped "
                    "controller/catalogues/<GPU SKU>.json.")
    policy: str = Field(
        default="tapas",
        description="Decision policy, a name from the registry controller.core.policy.POLICIES (the names "
                    "`tapas simulate --compare` takes).")
    knobs: dict[str, float | bool | str] = Field(
        default_factory=dict,
        description="Policy knob overrides by name (controller.core.policy.PolicyKnobs; `group.field` reaches "
                    "into reconfig_params, routing_params, margins), e.g. {\"feedback_min_step_w\": 10}.")
    agent_reconcile_s: float = Field(default=10.0, gt=0, description="Node agent: re-apply desired GPU settings period.")
    agent_broker_lost_after_s: float = Field(
        default=30.0, gt=0, description="Node agent: broker unreachable this long → apply the safe power cap.")
    agent_safe_power_frac: float = Field(
        default=0.75, gt=0, le=1,
        description="Node agent: safe cap = this fraction of each GPU's default power limit while the broker is lost.")
    agent_metrics_port: int = Field(default=0, ge=0, le=65535, description="Node agent: Prometheus port of "
                                    "tapas_agent_safe_cap_active and the command counts (0 = off).")
    agent_metrics_addr: str = Field(default="0.0.0.0", description="Node agent: bind address of its metrics "  # noqa: S104
                                    "port (0.0.0.0: scraped by Prometheus from outside the pod).")
    command_signing_key: SecretStr | None = Field(
        default=None,
        description="Controller: Ed25519 private key (PEM, or base64 of the 32 raw bytes) that signs every command.")
    command_signing_key_file: Path | None = Field(
        default=None, description="Controller: file holding the signing key (PEM or base64); used when the key is unset.")
    command_public_keys: list[str] = Field(
        default_factory=list,
        description="Agents and serving adapters: pinned controller public keys (base64 raw Ed25519 or PEM); "
                    "several for rotation.")
    command_public_key_files: list[Path] = Field(
        default_factory=list, description="Agents and serving adapters: files holding pinned controller public keys.")
    agent_accept_unsigned: bool = Field(
        default=False,
        description="Node agent: apply enforce commands without a valid signature (test rigs only; refused otherwise).")
    agent_max_clock_skew_s: float = Field(
        default=30.0, ge=0,
        description="Node agent: commands issued more than this ahead of the agent's clock are refused; also the "
                    "slack on expires_at - now <= max_command_ttl_s.")
    agent_max_commands_per_gpu_per_min: int = Field(
        default=12, ge=1,
        description="Node agent: rate limit per GPU whatever a command's instance_id (the controller's commands name "
                    "no GPU, so each counts against all of the server's GPUs: size it for a server's instances).")
    agent_max_mode: Literal["advisory", "enforce"] = Field(
        default="enforce",
        description="Node agent: the most a command's mode may be; advisory = never apply, whatever the message says.")
    agent_state_dir: Path = Field(
        default=Path("var/agent"),
        description="Node agent: where it persists (fsync) the caps it applies, to reconcile them after a crash.")


class DashboardSettings(_Section):
    """The operators' Dash page."""

    host: str = Field(default="127.0.0.1", description="Bind address.")
    port: int = Field(default=8050, ge=1, le=65535, description="Port.")
    refresh_s: float = Field(default=1.5, gt=0, description="Page update interval.")
    stale_after_s: float = Field(default=10.0, gt=0, description="No message for this long shows the stale banner.")
    username: str | None = Field(default=None, description="Basic-auth user; unset disables authentication.")
    password: SecretStr | None = Field(default=None, description="Basic-auth password (an empty one is refused).")

    @field_validator("password")
    @classmethod
    def _no_empty_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("dashboard.password is empty: set a real password or leave it unset")
        return value


class WorkerSettings(_Section):
    """The Faust stream worker."""

    app_id: str = Field(default="tapas-worker", description="Faust app id (consumer group).")
    web_port: int = Field(default=6066, ge=1, le=65535, description="Faust web port (also /healthz, /readyz).")
    web_host: str = Field(default="127.0.0.1", description="Faust web bind address (0.0.0.0 in a container "
                          "so health probes reach /healthz and /readyz).")
    stale_after_s: float = Field(default=30.0, gt=0, description="/readyz answers 503 when no telemetry batch "
                                 "arrived for this long.")
    data_dir: Path = Field(default=Path("var/faust"), description="Faust local table data directory.")
    horizons_s: list[float] = Field(default=[10.0, 60.0, 300.0], description="Forecast horizons.")
    tick_s: float = Field(default=1.0, gt=0, description="Forecast publication period per server.")
    inlet_max_age_s: float = Field(default=120.0, gt=0, description="An inlet reading joins GPU samples up to this "
                                   "far apart in sample time (inlet sensors report every 10-60 s).")
    power_max_age_s: float = Field(default=10.0, gt=0, description="A chassis or PDU power reading joins GPU samples "
                                   "up to this far apart; older ones count as missing.")
    inlet_limit_c: float = Field(default=27.0, gt=0, description="Zone inlet limit, °C (ASHRAE recommended upper "
                                 "bound) used for zone headroom in domain forecasts.")
    batch_max: int = Field(default=5000, ge=1, description="Most telemetry messages handled per Faust batch.")
    batch_within_s: float = Field(default=0.02, gt=0, description="Longest wait to fill a batch: a live sample "
                                    "waits up to this long before it is processed (a backlog fills batches of "
                                    "batch_max regardless, which is what amortises Faust's per-event cost).")
    fetch_max_wait_ms: int = Field(default=50, ge=1, le=1500, description="Longest the broker may hold a fetch "
                                   "with too little data (Faust hard-codes 1500 ms; part of every sample's "
                                   "latency when the broker holds fetches whose partitions are not all fed).")
    session_timeout_s: float = Field(default=10.0, gt=0, description="Kafka consumer session timeout; the embedded "
                                     "broker completes a group join after about half of it (10 s: ~5 s join).")
    heartbeat_interval_s: float = Field(default=1.0, gt=0, description="Kafka consumer heartbeat interval.")
    max_poll_interval_s: float = Field(default=60.0, gt=0, description="Kafka max poll interval: a worker slower "
                                       "than this between polls leaves the group (generous: a loaded host must not "
                                       "cause rebalances).")
    rebalance_timeout_s: float = Field(default=10.0, gt=0, description="Kafka rebalance timeout of the group: how "
                                       "long the embedded broker waits for members to rejoin (bounds join time).")
    domain_tick_s: float = Field(default=2.0, gt=0, description="Rack/row/PDU/zone forecasts are published this "
                                 "often (PDU power is sampled every 1-2 s).")
    store_enabled: bool = Field(default=True, description="Write down-sampled telemetry and forecasts to the "
                                "history store.")
    max_sample_age_s: float = Field(default=86_400.0, gt=0, description="Samples older than this by the worker's "
                                    "clock are dead-lettered (a day: a spool drained after an outage still counts).")
    max_clock_skew_s: float = Field(default=30.0, gt=0, description="Samples more than this ahead of the worker's "
                                    "clock are dead-lettered: a future-dated sample would otherwise hide every "
                                    "later genuine one of its server; stream time never runs further ahead.")
    max_servers: int = Field(default=100_000, ge=1, description="Most servers (and PDUs) one worker holds state "
                             "for; samples of further new ids are dead-lettered and counted (ids come off a topic).")


class TopologySettings(_Section):
    """Where the fleet's layout comes from (foundation.inventory)."""

    inventory: Path | None = Field(default=None, description="Inventory TOML of named servers, rows and zones "
                                   "(docs/inventory.md); when set every service uses it instead of cluster_file.")


class ApiSettings(_Section):
    """The controller's synchronous placement API (``/v1/placement``, ``/v1/headroom``, scheduler extender)."""

    host: str = Field(default="127.0.0.1", description="Bind address of the placement API (0.0.0.0 in a container).")
    port: int = Field(default=0, ge=0, le=65535, description="Port of the placement API inside `tapas controller` "
                      "(0 = off).")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576,
                                description="Largest request body accepted; bigger ones get 413.")
    max_connections: int = Field(default=256, ge=1, le=4096, description="Open connections served at once (one "
                                 "thread each, keep-alive); more are answered 503.")


class IngestSettings(_Section):
    """The collectors (``tapas ingest``) and their buffered Kafka producer."""

    interval_s: float = Field(default=1.0, gt=0, description="Default sampling interval of every collector.")
    compression: Literal["lz4", "gzip", "none"] = Field(
        default="lz4", description="Kafka batch compression (lz4 is fastest; gzip needs no extra package)."
    )
    linger_ms: int = Field(default=5, ge=0, le=1000, description="How long the producer waits to fill a batch.")
    batch_size_bytes: int = Field(default=1_000_000, ge=1024, description="Kafka producer batch size per partition "
                                  "(under Apache Kafka's default message.max.bytes of 1,048,588; with one request "
                                  "in flight, larger batches carry more records per round trip — docs/ingest.md).")
    max_buffered_samples: int = Field(
        default=100_000, ge=1, description="In-memory buffer while the broker is unreachable; beyond it samples "
        "spill to the spool (if set) or are dropped and counted."
    )
    spool_dir: Path | None = Field(default=None, description="Optional on-disk buffer directory; unset = memory only.")
    max_spool_bytes: int = Field(default=1_073_741_824, ge=0, description="Size cap of the on-disk buffer.")
    request_timeout_ms: int = Field(default=5000, ge=100, description="Kafka request timeout before a retry; a "
                                    "window unacknowledged this long marks the broker unreachable.")
    delivery_timeout_ms: int = Field(default=3_600_000, ge=1000, description="How long kafka-python retries a "
                                     "record in order before handing it back to the collector's buffer.")
    retry_backoff_s: float = Field(default=0.5, gt=0, description="First wait before retrying an unreachable broker.")
    max_retry_backoff_s: float = Field(default=10.0, gt=0, description="Cap of the exponential retry wait.")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus counters port (0 = off).")
    device_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one BMC (Redfish) or PDU (SNMP) request.")


class RouterSettings(_Section):
    """Router adapters that consume ``tapas.routing.weights`` (``tapas router haproxy``, ``tapas router sidecar``)."""

    tick_s: float = Field(default=1.0, gt=0, description="How often the router applies the latest weights.")
    stale_after_s: float = Field(
        default=15.0, gt=0,
        description="Weights older than this (or past their valid_until) are stale: the router falls back to "
                    "equal weights, as a router without TAPAS would run.")
    reconcile_s: float = Field(default=10.0, gt=0, description="Re-apply every weight this often (undoes manual "
                                                                "changes through the HAProxy socket).")
    socket_timeout_s: float = Field(default=2.0, gt=0, description="Timeout of one HAProxy runtime API command.")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Port of /metrics, /healthz and /readyz of "
                                                                     "`tapas router haproxy` (0 = off).")
    metrics_addr: str = Field(default="0.0.0.0", description="Bind address of the router's and the sidecar's "  # noqa: S104
                                                             "HTTP endpoint (0.0.0.0: scraped from other pods).")
    sidecar_port: int = Field(default=9109, ge=1, le=65535, description="Port of `tapas router sidecar`'s "
                                                                        "/metrics, /healthz and /readyz.")
    upstream_timeout_s: float = Field(default=1.0, gt=0, description="Sidecar: timeout fetching the model "
                                                                     "server's own /metrics (--upstream).")


class Settings(BaseSettings):
    """Everything configurable in TAPAS. Environment: ``TAPAS_<FIELD>``, nested ``TAPAS_<GROUP>__<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="TAPAS_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(default=Path("../shared/data"), description="Where the public datasets live.")
    trace_file: Path | None = Field(
        default=None,
        description="Azure-LLM-schema trace for the simulator/demo; unset uses data_dir's Azure 2023 code trace.",
    )
    registry_dir: Path = Field(default=Path("var/registry"), description="Model registry (trusted artifacts only).")
    cluster_file: Path | None = Field(default=None, description="Cluster topology TOML; unset uses the shipped default.")
    log_level: str = Field(default="INFO", description="Python log level.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    topology: TopologySettings = Field(default_factory=TopologySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFileSource(settings_cls))

    @property
    def resolved_trace_file(self) -> Path:
        """The trace the simulator uses when none is given."""
        return self.trace_file or self.data_dir / "azure-llm-inference-2023" / "AzureLLMInferenceTrace_code.csv"


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by ``TAPAS_CONFIG`` (if any)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("TAPAS_CONFIG")
        if not path:
            return {}
        try:
            with open(path, "rb") as fh:
                return tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"TAPAS_CONFIG={path}: {exc}") from exc


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into a :class:`ConfigError` naming the key."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = "__".join(str(p) for p in err["loc"]).upper()
        raise ConfigError(f"TAPAS_{key}: {err['msg']}") from None


def kafka_python_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection keyword arguments for kafka-python clients (producer, consumer, admin)."""
    kw: dict[str, Any] = {"bootstrap_servers": kafka.bootstrap_servers.split(","),
                          "security_protocol": kafka.security_protocol}
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        kw.update(ssl_cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
                  ssl_certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
                  ssl_keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
                  ssl_check_hostname=kafka.ssl_check_hostname)
    if kafka.security_protocol.startswith("SASL"):
        kw.update(sasl_mechanism=kafka.sasl_mechanism or "PLAIN",
                  sasl_plain_username=kafka.sasl_username,
                  sasl_plain_password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None)
    return kw


def ssl_context(kafka: KafkaSettings) -> Any:
    """An ``ssl.SSLContext`` for aiokafka/Faust when TLS is on, else ``None``."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    import ssl

    ctx = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
    ctx.check_hostname = kafka.ssl_check_hostname
    if kafka.ssl_certfile:
        ctx.load_cert_chain(str(kafka.ssl_certfile), str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None)
    return ctx


def aiokafka_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection keyword arguments for aiokafka clients."""
    kw: dict[str, Any] = {"bootstrap_servers": kafka.bootstrap_servers, "security_protocol": kafka.security_protocol}
    ctx = ssl_context(kafka)
    if ctx is not None:
        kw["ssl_context"] = ctx
    if kafka.security_protocol.startswith("SASL"):
        kw.update(sasl_mechanism=kafka.sasl_mechanism or "PLAIN", sasl_plain_username=kafka.sasl_username,
                  sasl_plain_password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None)
    return kw


def settings_table() -> str:
    """Markdown table of every setting with its env variable, default and description (for the README)."""
    rows = ["| variable | default | description |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name.upper()}__")
                continue
            default = field.default if field.default_factory is None else field.default_factory()  # type: ignore[call-arg]
            rows.append(f"| `{prefix}{name.upper()}` | `{default}` | {field.description or ''} |")

    walk(Settings, "TAPAS_")
    return "\n".join(rows)
