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

    if mode not in (None, "advisory", "enforce"):
        raise ConfigError(f"--mode={mode!r}: choose advisory or enforce")
    settings = load_settings()
    _quiet_kafka()
    topology = default_topology(servers) if servers else load_topology(settings.cluster_file)
    catalogue, _specs = build_catalogue(topology.servers[0].sku)
    stop = _stop_on_signals()
    console.print(f"controller: {topology.num_servers} servers, endpoints {list(catalogue.endpoint_ids)}, "
                  f"mode {mode or settings.controller.mode}; Ctrl-C to stop")
    ctl = run_service(settings, topology, catalogue, stop=stop, mode=mode)  # type: ignore[arg-type]
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

    if mode not in ("advisory", "enforce"):
        raise ConfigError(f"mode={mode!r}: choose advisory or enforce")
    chosen: Literal["advisory", "enforce"] = "enforce" if mode == "enforce" else "advisory"
    msg = publish_mode(load_settings(), chosen, changed_by=changed_by)
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
    a = run_agent(settings, server_id, control, stop=stop)
    console.print(f"agent stopped: {a.num_applied} commands applied ({'dry run' if control.dry_run else 'NVML'})")
