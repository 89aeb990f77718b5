"""``tapas ingest nvml|dcgm|redfish|snmp|fleet|replay|sim``: collectors publishing contract messages to Kafka.

Every source takes ``--once`` (one round), ``--stdout`` (print JSON lines instead of
publishing, to check a BMC or PDU by hand), ``--interval`` and ``--metrics-port``.
Errors a user can fix (no driver, unreachable BMC, unknown PDU) exit with code 2
and one line, through :class:`contracts.errors.TapasError`.
"""

from __future__ import annotations

import logging
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from contracts.errors import ConfigError, SourceError

ingest_app = typer.Typer(help="Collectors: GPUs (NVML, dcgm-exporter), BMCs (Redfish), PDUs (SNMP), a fleet of "
                         "BMCs and PDUs in one process, replay and the simulator.",
                         no_args_is_help=True)
log = logging.getLogger(__name__)

ONCE = typer.Option(False, "--once", help="Read one round and stop.")
STDOUT = typer.Option(False, "--stdout", help="Print contract messages as JSON lines instead of publishing.")
INTERVAL = typer.Option(None, "--interval", help="Seconds between rounds (default TAPAS_INGEST__INTERVAL_S).")
METRICS_PORT = typer.Option(None, "--metrics-port",
                            help="Prometheus counters port (default TAPAS_INGEST__METRICS_PORT; 0 = off).")
BOOTSTRAP = typer.Option(None, "--bootstrap", help="Kafka bootstrap servers (default TAPAS_KAFKA__BOOTSTRAP_SERVERS).")
MAX_ROUNDS = typer.Option(None, "--max-rounds", help="Stop after this many rounds (default: run until stopped).")


def register(app: typer.Typer) -> None:
    app.add_typer(ingest_app, name="ingest")


def _settings(bootstrap: str | None) -> Any:
    from foundation.settings import load_settings

    settings = load_settings()
    if bootstrap:
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
            update={"bootstrap_servers": bootstrap})})
    return settings


def _sink(source: str, *, stdout: bool, settings: Any, metrics_port: int | None) -> Any:
    from ingest.run import KafkaSink, StdoutSink

    if stdout:
        return StdoutSink()
    from prometheus_client import start_http_server

    from tapas.bootstrap import collector_producer

    producer = collector_producer(settings, source=source)
    port = settings.ingest.metrics_port if metrics_port is None else metrics_port
    if port:
        start_http_server(port, registry=producer.metrics.registry)
        log.info("event=ingest_metrics source=%s port=%d", source, port)
    return KafkaSink(producer)


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so the producer flushes before exit."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _poll(source: Any, name: str, *, once: bool, stdout: bool, interval: float | None, metrics_port: int | None,
          bootstrap: str | None, max_rounds: int | None) -> None:
    from ingest.run import poll_rounds, run_collector

    settings = _settings(bootstrap)
    interval_s = interval if interval is not None else settings.ingest.interval_s
    if interval_s <= 0:
        raise ConfigError("--interval must be > 0 seconds")
    _stop_on_sigterm()
    try:
        sink = _sink(name, stdout=stdout, settings=settings, metrics_port=metrics_port)
        run_collector(poll_rounds(source.read, interval_s=interval_s, once=once), sink, once=once,
                      max_rounds=max_rounds)
    finally:
        source.close()


@ingest_app.command("nvml")
def nvml_cmd(
    server_id: str = typer.Option(None, "--server-id", help="Server id (Kafka key); default: host name."),
    once: bool = ONCE, stdout: bool = STDOUT, interval: float = INTERVAL, metrics_port: int = METRICS_PORT,
    bootstrap: str = BOOTSTRAP, max_rounds: int = MAX_ROUNDS,
) -> None:
    """Every local GPU via NVML: temperature, power and limit, clocks, utilisation, memory, throttle reasons."""
    from ingest.sources.nvml import NvmlSource, open_nvml

    source = NvmlSource(open_nvml(), server_id=server_id)
    _poll(source, "nvml", once=once, stdout=stdout, interval=interval, metrics_port=metrics_port,
          bootstrap=bootstrap, max_rounds=max_rounds)


@ingest_app.command("dcgm")
def dcgm_cmd(
    url: str = typer.Option(..., "--url", help="dcgm-exporter metrics URL, e.g. http://gpu-node-07:9400/metrics"),
    server_id: str = typer.Option(None, "--server-id", help="Server id (Kafka key); default: each line's "
                                  "Hostname label."),
    once: bool = ONCE, stdout: bool = STDOUT, interval: float = INTERVAL, metrics_port: int = METRICS_PORT,
    bootstrap: str = BOOTSTRAP, max_rounds: int = MAX_ROUNDS,
) -> None:
    """GPU readings from dcgm-exporter's Prometheus text (what GPU-Operator nodes already serve) into gpu_sample."""
    from ingest.sources.dcgm import DcgmSource, RequestsTextGetter

    settings = _settings(bootstrap)
    source = DcgmSource(url, getter=RequestsTextGetter(timeout_s=settings.ingest.device_timeout_s),
                        server_id=server_id)
    _poll(source, "dcgm", once=once, stdout=stdout, interval=interval, metrics_port=metrics_port,
          bootstrap=bootstrap, max_rounds=max_rounds)


@ingest_app.command("redfish")
def redfish_cmd(
    url: str = typer.Option(..., "--url", help="BMC base URL, e.g. https://10.0.3.7"),
    server_id: str = typer.Option(..., "--server-id", help="Server id (Kafka key)."),
    username: str = typer.Option(None, "--username", help="BMC user (session login); omit for no auth."),
    password: str = typer.Option(None, "--password", envvar="TAPAS_REDFISH_PASSWORD",
                                 help="BMC password (or TAPAS_REDFISH_PASSWORD)."),
    chassis: str = typer.Option(None, "--chassis", help="Chassis id; default: the first with an intake sensor."),
    auth: str = typer.Option("session", "--auth", help="session (Redfish session login) or basic (HTTP basic)."),
    once: bool = ONCE, stdout: bool = STDOUT, interval: float = INTERVAL, metrics_port: int = METRICS_PORT,
    bootstrap: str = BOOTSTRAP, max_rounds: int = MAX_ROUNDS,
) -> None:
    """Inlet temperature and chassis power from a BMC over Redfish (Sensors/EnvironmentMetrics or Thermal/Power)."""
    from ingest.sources.redfish import RedfishLibraryClient, RedfishSource

    settings = _settings(bootstrap)
    if auth not in ("session", "basic"):
        raise ConfigError(f"--auth {auth!r}: choose session or basic")
    client = RedfishLibraryClient(url, username=username, password=password,
                                  timeout_s=settings.ingest.device_timeout_s, auth=auth)
    source = RedfishSource(client, server_id=server_id, chassis_id=chassis)
    _poll(source, "redfish", once=once, stdout=stdout, interval=interval, metrics_port=metrics_port,
          bootstrap=bootstrap, max_rounds=max_rounds)


@ingest_app.command("snmp")
def snmp_cmd(
    host: str = typer.Option(..., "--host", help="PDU address."),
    pdu_id: str = typer.Option(..., "--pdu-id", help="PDU id (Kafka key)."),
    port: int = typer.Option(161, "--port", help="SNMP UDP port."),
    community: str = typer.Option("public", "--community", help="SNMP v2c community."),
    profile: str = typer.Option(None, "--profile", help="apc-rpdu2 or apc-rpdu; default: from sysObjectID/sysDescr."),
    v3_user: str = typer.Option(None, "--v3-user", help="SNMPv3 user (switches to v3)."),
    v3_auth_key: str = typer.Option(None, "--v3-auth-key", envvar="TAPAS_SNMP_AUTH_KEY", help="SNMPv3 auth key."),
    v3_priv_key: str = typer.Option(None, "--v3-priv-key", envvar="TAPAS_SNMP_PRIV_KEY", help="SNMPv3 privacy key."),
    v3_auth_protocol: str = typer.Option("sha", "--v3-auth-protocol", help="sha, sha256, sha512 or md5."),
    v3_priv_protocol: str = typer.Option("aes", "--v3-priv-protocol", help="aes, aes256 or des."),
    v3_context: str = typer.Option("", "--v3-context", help="SNMPv3 context name (usually empty)."),
    server_ids: str = typer.Option(None, "--server-ids", help="Comma-separated servers fed by this PDU."),
    once: bool = ONCE, stdout: bool = STDOUT, interval: float = INTERVAL, metrics_port: int = METRICS_PORT,
    bootstrap: str = BOOTSTRAP, max_rounds: int = MAX_ROUNDS,
) -> None:
    """Rack PDU total power/current (and per phase, bank, outlet) over SNMP v2c or v3."""
    from ingest.sources.snmp import SnmpClient, SnmpSource, SnmpTarget

    settings = _settings(bootstrap)
    target = SnmpTarget(host=host, port=port, community=community, timeout_s=settings.ingest.device_timeout_s,
                        v3_user=v3_user, v3_auth_key=v3_auth_key, v3_priv_key=v3_priv_key,
                        v3_auth_protocol=v3_auth_protocol, v3_priv_protocol=v3_priv_protocol, v3_context=v3_context)
    ids = [s.strip() for s in server_ids.split(",") if s.strip()] if server_ids else None
    source = SnmpSource(SnmpClient(target), pdu_id=pdu_id, profile=profile, server_ids=ids)
    _poll(source, "snmp", once=once, stdout=stdout, interval=interval, metrics_port=metrics_port,
          bootstrap=bootstrap, max_rounds=max_rounds)


@ingest_app.command("fleet")
def fleet_cmd(
    config: Path = typer.Option(..., "--config", help="Fleet TOML: [[redfish]] BMCs and [[snmp]] PDUs "
                                "(docs/ingest.md#fleet)."),
    max_in_flight: int = typer.Option(None, "--max-in-flight", help="Polls running at once (default: the "
                                      "file's [defaults].max_in_flight)."),
    duration: float = typer.Option(None, "--duration", help="Stop after this many seconds (default: run until "
                                   "stopped)."),
    seed: int = typer.Option(None, "--seed", help="Seed of the start and backoff jitter (default: random)."),
    once: bool = typer.Option(False, "--once", help="Poll every source once and stop; exit 2 if any failed."),
    stdout: bool = STDOUT, metrics_port: int = METRICS_PORT, bootstrap: str = BOOTSTRAP,
) -> None:
    """Many BMCs (Redfish) and PDUs (SNMP) from one process, each on its own interval (jittered, bounded, backed off)."""
    import numpy as np

    from ingest.fleet import FleetMetrics, FleetPoller, describe, fleet_specs, load_fleet_config

    cfg = load_fleet_config(config)
    specs = fleet_specs(cfg)
    settings = _settings(bootstrap)
    _stop_on_sigterm()
    sink = _sink("fleet", stdout=stdout, settings=settings, metrics_port=metrics_port)
    producer = getattr(sink, "producer", None)
    metrics = FleetMetrics(producer.metrics.registry if producer is not None else None)
    poller = FleetPoller(specs, sink.write, max_in_flight=max_in_flight or cfg.defaults.max_in_flight,
                         max_backoff_s=cfg.defaults.max_backoff_s, rng=np.random.default_rng(seed), metrics=metrics)
    log.info("event=fleet_started sources=%s max_in_flight=%d", describe(specs), poller.max_in_flight)
    try:
        stats = poller.run(duration_s=duration, once=once)
    except KeyboardInterrupt:
        stats = poller.stats
    finally:
        poller.close()
        sink.close()
    log.info("event=fleet_stopped polls=%d errors=%d late=%d max_lateness_s=%.3f", stats.num_polls,
             stats.num_errors, stats.num_late, stats.max_lateness_s)
    failed = poller.failures()
    if once and failed:
        name, error = next(iter(failed.items()))
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise SourceError(f"fleet: {len(failed)} of {len(specs)} sources failed; {name}: {error}{more}")


def _stream(rounds: Any, name: str, *, once: bool, stdout: bool, metrics_port: int | None, bootstrap: str | None,
            max_rounds: int | None) -> None:
    from ingest.run import run_collector

    settings = _settings(bootstrap)
    _stop_on_sigterm()
    sink = _sink(name, stdout=stdout, settings=settings, metrics_port=metrics_port)
    run_collector(rounds, sink, once=once, max_rounds=max_rounds)


@ingest_app.command("replay")
def replay_cmd(
    path: Path = typer.Argument(..., help="CSV or Parquet file in forecasting.online.Observation columns."),
    speed: float = typer.Option(1.0, "--speed", help="1 = recorded speed, 60 = a minute per second, 0 = max."),
    start_at: datetime = typer.Option(None, "--start-at", help="Instant relative at_s=0 maps to (default now, UTC)."),
    interval: float = typer.Option(None, "--interval", help="Fixed wall seconds between recorded ticks "
                                   "(overrides --speed)."),
    once: bool = ONCE, stdout: bool = STDOUT, metrics_port: int = METRICS_PORT, bootstrap: str = BOOTSTRAP,
    max_rounds: int = MAX_ROUNDS,
) -> None:
    """Replay recorded telemetry (one row per server per tick) as contract messages."""
    from ingest.sources.replay import ReplaySource

    if interval is not None and interval < 0:
        raise ConfigError("--interval must be >= 0 seconds")
    anchor = None if start_at is None else (start_at if start_at.tzinfo else start_at.replace(tzinfo=UTC))
    source = ReplaySource(path, speed=speed, start_at=anchor, fixed_gap_s=interval)
    _stream(source.rounds(), "replay", once=once, stdout=stdout, metrics_port=metrics_port, bootstrap=bootstrap,
            max_rounds=max_rounds)


@ingest_app.command("sim")
def sim_cmd(
    servers: int = typer.Option(64, "--servers", help="Servers in the default topology (ignored with a cluster file)."),
    seed: int = typer.Option(0, "--seed", help="Simulator seed."),
    scenario: str = typer.Option("normal", "--scenario", help="Simulator scenario name."),
    policy: str = typer.Option("baseline", "--policy", help="Policy driving the simulated cluster."),
    tick: float = typer.Option(1.0, "--tick", help="Simulated seconds per tick."),
    speed: float = typer.Option(1.0, "--speed", help="1 = real time, 60 = a simulated minute per second, 0 = max."),
    interval: float = typer.Option(None, "--interval", help="Wall seconds between ticks (overrides --speed: "
                                   "speed = tick / interval)."),
    once: bool = ONCE, stdout: bool = STDOUT, metrics_port: int = METRICS_PORT, bootstrap: str = BOOTSTRAP,
    max_rounds: int = MAX_ROUNDS,
) -> None:
    """The cluster simulator's live feed (GPU, inlet, PDU samples and events), so the pipeline runs without hardware."""
    from ingest.sources.sim import SimSource, build_feed

    if interval is not None:
        if interval <= 0:
            raise ConfigError("--interval must be > 0 seconds (use --speed 0 for as fast as possible)")
        speed = tick / interval
    settings = _settings(bootstrap)
    feed = build_feed(num_servers=servers, seed=seed, scenario=scenario, policy=policy, tick_s=tick,
                      cluster_file=settings.cluster_file)
    source = SimSource(feed, tick_s=tick, speed=speed)
    _stream(source.rounds(), "sim", once=once, stdout=stdout, metrics_port=metrics_port, bootstrap=bootstrap,
            max_rounds=max_rounds)
