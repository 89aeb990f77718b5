"""Controller commands: ``tapas controller [--mode]``, ``tapas controller mode advisory|enforce``, ``tapas agent``."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console

console = Console(stderr=True)
controller_app = typer.Typer(
    help="The live controller: placement hints, routing weights, reconfiguration commands, emergencies.",
    invoke_without_command=True,
)


catalogue_app = typer.Typer(help="The configuration catalogue as data: what the controller and simulator choose from.")


def register(app: typer.Typer) -> None:
    app.add_typer(controller_app, name="controller")
    app.add_typer(catalogue_app, name="catalogue")
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
                                                        "ingest sim --servers N`) instead of the inventory or cluster file."),
    policy: str = typer.Option(None, "--policy", help="Decision policy from the registry (the names `tapas simulate "
                                                      "--compare` takes; default TAPAS_CONTROLLER__POLICY, tapas)."),
) -> None:
    """Run the controller service until SIGINT/SIGTERM (when no subcommand is given)."""
    if ctx.invoked_subcommand is not None:
        return
    from contracts.errors import ConfigError
    from controller.catalogue_file import load_catalogue
    from controller.core.policy import POLICIES
    from controller.service import run_service
    from foundation.inventory import topology_from_settings
    from foundation.settings import load_settings
    from foundation.topology import default_topology
    from tapas.bootstrap import collector_producer, kafka_clients

    if mode not in (None, "advisory", "enforce"):
        raise ConfigError(f"--mode={mode!r}: choose advisory or enforce")
    chosen: Literal["advisory", "enforce"] | None = None if mode is None else "enforce" if mode == "enforce" else "advisory"
    settings = load_settings()
    if policy is not None:
        settings = settings.model_copy(update={"controller": settings.controller.model_copy(update={"policy": policy})})
    if settings.controller.policy not in POLICIES:
        raise ConfigError(f"policy={settings.controller.policy!r} unknown; choose from {', '.join(POLICIES)}")
    _quiet_kafka()
    topology = default_topology(servers) if servers else topology_from_settings(settings)
    catalogue = load_catalogue(settings.controller.catalogue_file, sku=topology.skus[0].name)  # the fleet's most common SKU
    stop = _stop_on_signals()
    console.print(f"controller: {topology.num_servers} servers, endpoints {list(catalogue.endpoint_ids)}, "
                  f"mode {mode or settings.controller.mode}, policy {settings.controller.policy}; Ctrl-C to stop")
    clients = kafka_clients(settings)
    producer = collector_producer(settings, source="controller", role="controller")
    ctl = run_service(settings, topology, catalogue, clients=clients, producer=producer, stop=stop, mode=chosen)
    console.print(f"controller stopped: {ctl.num_commands} commands issued, {ctl.num_refused} refused")


@controller_app.command("keygen")
def keygen(
    out_dir: str = typer.Argument(..., help="Folder to write command-signing.key (private, mode 0600) and "
                                            "command-signing.pub into."),
) -> None:
    """Make an Ed25519 key pair for signing commands (see SECURITY.md#key-rotation)."""
    import os
    from pathlib import Path

    from contracts.errors import ConfigError
    from controller.signing import generate_key_pair

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    private, public = generate_key_pair()
    key_path, pub_path = folder / "command-signing.key", folder / "command-signing.pub"
    if key_path.exists():
        raise ConfigError(f"{key_path} exists: refusing to overwrite a signing key (move it aside first)")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(private)
    pub_path.write_text(public + "\n")
    console.print(f"wrote {key_path} (controller: TAPAS_CONTROLLER__COMMAND_SIGNING_KEY_FILE) and {pub_path} "
                  f"(agents: TAPAS_CONTROLLER__COMMAND_PUBLIC_KEYS='[\"{public}\"]')")


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
    max_mode: str = typer.Option(None, "--max-mode", help="advisory: never apply a command whatever its mode says "
                                                          "(default: TAPAS_CONTROLLER__AGENT_MAX_MODE, enforce)."),
) -> None:
    """Node agent: apply signed host reconfiguration commands (GPU clock locks, power limits) for one server."""
    from contracts.errors import ConfigError
    from controller.agent import open_gpu_control, run_agent
    from foundation.settings import load_settings
    from tapas.bootstrap import kafka_clients

    if max_mode not in (None, "advisory", "enforce"):
        raise ConfigError(f"--max-mode={max_mode!r}: choose advisory or enforce")
    settings = load_settings()
    if max_mode is not None:
        settings = settings.model_copy(update={"controller": settings.controller.model_copy(
            update={"agent_max_mode": max_mode})})
    _quiet_kafka()
    control = open_gpu_control(dry_run=dry_run, max_mode=settings.controller.agent_max_mode)
    console.print(f"agent {server_id}: {control.describe()}")
    stop = _stop_on_signals()
    a = run_agent(settings, server_id, control, clients=kafka_clients(settings), stop=stop)
    console.print(f"agent stopped: {a.num_applied} commands applied ({'dry run' if control.dry_run else 'NVML'})")


@catalogue_app.command("export")
def catalogue_export(
    path: Path = typer.Argument(None, help="Output JSON (default: the shipped controller/catalogues/<SKU>.json)."),
    sku: str = typer.Option("A100-SXM-80GB", "--sku", help="GPU SKU (foundation.topology.SKUS)."),
    mean_prompt: float = typer.Option(2048.0, "--mean-prompt", help="Request mix: mean prompt tokens."),
    mean_output: float = typer.Option(28.0, "--mean-output", help="Request mix: mean output tokens."),
) -> None:
    """Write the catalogue built from the simulator's physics, with the sources of its numbers, as JSON."""
    import json

    from contracts.errors import ConfigError
    from controller.catalogue_file import shipped_path
    from foundation.topology import SKUS
    from simulator.catalogue import export_catalogue

    if sku not in SKUS:
        raise ConfigError(f"--sku={sku!r} unknown; choose from {sorted(SKUS)}")
    out = path or shipped_path(sku)
    data = export_catalogue(SKUS[sku], mean_prompt=mean_prompt, mean_output=mean_output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    console.print(f"wrote {out}")
