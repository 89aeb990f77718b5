"""Controller commands: ``tapas controller [--mode]``, ``tapas controller mode advisory|enforce``, ``tapas agent``."""

from __future__ import annotations

import signal
import threading
from typing import Literal

import typer
from rich.console import Console

console = Console(stderr=True)
controller_app = typer.Typer(
    help="The live controller: placement hints, routing weights, reconfiguration commands, emergencies.",
    invoke_without_command=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(controller_app, name="controller")
    app.command("agent")(agent)


def _quiet_kafka() -> None:
    """kafka-python logs every connection at INFO; keep the service's own events readable."""
    import logging

    logging.getLogger("kafka").setLevel(logging.WARNING)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


@controller_app.callback()
def controller(
    ctx: typer.Context,
    mode: str = typer.Option(None, "--mode", help="advisory or enforce (default: TAPAS_CONTROLLER__MODE, or the "
                                                  "latest mode on tapas.control.mode)."),
    servers: int = typer.Option(None, "--servers", help="Use the default layout resized to N servers (as `tapas "
                                                        "ingest sim --servers N`) instead of the cluster file."),
) -> None:
    """Run the controller service until SIGINT/SIGTERM (when no subcommand is given)."""
    if ctx.invoked_subcommand is not None:
        return
    from contracts.errors import ConfigError
    from controller.service import run_service
    from foundation.settings import load_settings
    from foundation.topology import default_topology, load_topology
    from simulator.catalogue import build_catalogue
    from tapas.bootstrap import collector_producer, kafka_clients

    if mode not in (None, "advisory", "enforce"):
        raise ConfigError(f"--mode={mode!r}: choose advisory or enforce")
    chosen: Literal["advisory", "enforce"] | None = None if mode is None else "enforce" if mode == "enforce" else "advisory"
    settings = load_settings()
    _quiet_kafka()
    topology = default_topology(servers) if servers else load_topology(settings.cluster_file)
    catalogue, _specs = build_catalogue(topology.servers[0].sku)
    stop = _stop_on_signals()
    console.print(f"controller: {topology.num_servers} servers, endpoints {list(catalogue.endpoint_ids)}, "
                  f"mode {mode or settings.controller.mode}; Ctrl-C to stop")
    clients = kafka_clients(settings)
    producer = collector_producer(settings, source="controller", role="controller")
    ctl = run_service(settings, topology, catalogue, clients=clients, producer=producer, stop=stop, mode=chosen)
    console.print(f"controller stopped: {ctl.num_commands} commands issued, {ctl.num_refused} refused")


@controller_app.command("mode")
def set_mode(
    mode: str = typer.Argument(..., help="advisory (publish decisions, enforce nothing) or enforce."),
    changed_by: str = typer.Option("operator", "--by", help="Who switched (recorded in the event)."),
) -> None:
    """Switch the running controller between advisory and enforce (publishes on tapas.control.mode)."""
    from contracts.errors import ConfigError
    from controller.service import publish_mode
    from foundation.settings import load_settings
    from tapas.bootstrap import kafka_clients

    if mode not in ("advisory", "enforce"):
        raise ConfigError(f"mode={mode!r}: choose advisory or enforce")
    chosen: Literal["advisory", "enforce"] = "enforce" if mode == "enforce" else "advisory"
    msg = publish_mode(kafka_clients(load_settings()), chosen, changed_by=changed_by)
    console.print(f"controller mode -> {msg.mode} (published {msg.changed_at.isoformat()})")


def agent(
    server_id: str = typer.Option(..., "--server-id", help="The server this agent runs on (command key)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Never touch the GPUs; report what would be set."),
) -> None:
    """Node agent: apply host reconfiguration commands (GPU clock locks, power limits) for one server."""
    from controller.agent import open_gpu_control, run_agent
    from foundation.settings import load_settings
    from tapas.bootstrap import kafka_clients

    settings = load_settings()
    _quiet_kafka()
    control = open_gpu_control(dry_run=dry_run)
    console.print(f"agent {server_id}: {control.describe()}")
    stop = _stop_on_signals()
    a = run_agent(settings, server_id, control, clients=kafka_clients(settings), stop=stop)
    console.print(f"agent stopped: {a.num_applied} commands applied ({'dry run' if control.dry_run else 'NVML'})")
