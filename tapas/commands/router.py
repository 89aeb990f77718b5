"""Router adapters: ``tapas router haproxy --socket PATH --map FILE``, ``tapas router sidecar --instance-id ID``."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)
router_app = typer.Typer(help="Router adapters that consume tapas.routing.weights.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(router_app, name="router")


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


@router_app.command("haproxy")
def haproxy(
    socket: str = typer.Option(..., "--socket", help="HAProxy stats socket (unix path, or host:port), "
                                                     "configured with 'level admin'."),
    map_file: Path = typer.Option(..., "--map", help="Map file: one '<instance_id> <backend>/<server>' per line."),
) -> None:
    """Keep HAProxy's server weights on tapas.routing.weights (runtime API; equal weights when stale)."""
    from contracts.errors import ConfigError
    from foundation.settings import load_settings
    from router.haproxy import HaproxyRuntime
    from router.service import run_haproxy_router
    from router.weights import parse_map
    from tapas.bootstrap import collector_producer, kafka_clients

    try:
        text = map_file.read_text()
    except OSError as exc:
        raise ConfigError(f"--map {map_file}: {exc.strerror or exc}") from exc
    mapping = parse_map(text, str(map_file))
    settings = load_settings()
    runtime = HaproxyRuntime(socket, timeout_s=settings.router.socket_timeout_s)
    current = runtime.weights()  # fail now, clearly, on a wrong socket or unknown servers
    unknown = sorted(str(ref) for ref in mapping.values() if ref not in current)
    if unknown:
        raise ConfigError(f"--map {map_file}: HAProxy at {socket} has no server {', '.join(unknown)}")
    console.print(f"router haproxy: {len(mapping)} servers from {map_file}, socket {socket}; Ctrl-C to stop")
    router = run_haproxy_router(settings, runtime, mapping, clients=kafka_clients(settings),
                                producer=collector_producer(settings, source="router-haproxy", role="router-haproxy"),
                                stop=_stop_on_signals())
    console.print(f"router stopped: {router.num_updates} weights set")


@router_app.command("sidecar")
def sidecar(
    instance_id: str = typer.Option(..., "--instance-id", help="The TAPAS instance this pod serves."),
    endpoint_id: str = typer.Option(None, "--endpoint-id", help="Only weights of this endpoint (default: any "
                                                                "endpoint naming the instance)."),
    port: int = typer.Option(None, "--port", help="Port of /metrics, /healthz, /readyz (default "
                                                  "TAPAS_ROUTER__SIDECAR_PORT)."),
    upstream: str = typer.Option(None, "--upstream", help="Model server metrics URL (e.g. "
                                                          "http://127.0.0.1:8000/metrics) served after TAPAS's."),
) -> None:
    """Per-endpoint exporter: one instance's weight and headroom on its pod's /metrics (llm-d / GIE)."""
    from foundation.settings import load_settings
    from router.service import run_sidecar
    from tapas.bootstrap import collector_producer, kafka_clients

    settings = load_settings()
    console.print(f"router sidecar: instance {instance_id}; Ctrl-C to stop")
    run_sidecar(settings, instance_id, clients=kafka_clients(settings),
                producer=collector_producer(settings, source=f"sidecar-{instance_id}", role=f"sidecar-{instance_id}"),
                stop=_stop_on_signals(), endpoint_id=endpoint_id, port=port,
                upstream=upstream)
