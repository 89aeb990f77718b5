"""Foundation commands: ``tapas broker``, ``tapas contracts export``, ``tapas config show``."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer
from rich.console import Console

contracts_app = typer.Typer(help="Message contracts: JSON Schema export and the topic table.", no_args_is_help=True)
config_app = typer.Typer(help="Settings: show the effective configuration.", no_args_is_help=True)
console = Console()


def register(app: typer.Typer) -> None:
    app.add_typer(contracts_app, name="contracts")
    app.add_typer(config_app, name="config")
    app.command("broker")(broker)


@contracts_app.command("export")
def export(directory: Path = typer.Argument(..., help="Folder to write one JSON Schema per message into.")) -> None:
    """Write one JSON Schema file per contract message into DIRECTORY."""
    from contracts.schemas import export_schemas

    for path in export_schemas(directory):
        console.print(f"wrote {path}")


@contracts_app.command("topics")
def topics() -> None:
    """Print the topic table as Markdown (the README's table)."""
    from contracts.topics import markdown_table

    print(markdown_table())


@contracts_app.command("create-topics")
def create_topics_cmd(
    wait: float = typer.Option(30.0, "--wait", help="Seconds to wait for the broker to answer first."),
) -> None:
    """Create every topic of the topic table on TAPAS_KAFKA__BOOTSTRAP_SERVERS (idempotent)."""
    from foundation.broker import create_topics, wait_for_metadata
    from foundation.settings import load_settings

    bootstrap = load_settings().kafka.bootstrap_servers
    wait_for_metadata(bootstrap, wait)
    created = create_topics(bootstrap)
    console.print(f"created {len(created)} topic(s): {', '.join(created) or '(all existed)'}")


@config_app.command("show")
def show(as_table: bool = typer.Option(False, "--table", help="Print the settings reference table instead.")) -> None:
    """Print the effective settings (secrets masked), or the reference table with --table."""
    from foundation.settings import load_settings, settings_table

    if as_table:
        print(settings_table())
    else:
        console.print_json(load_settings().model_dump_json())


def broker(
    port: int = typer.Option(None, "--port", "-p", help="Port on 127.0.0.1 (default: TAPAS_BROKER__PORT, 9092)."),
    host: str = typer.Option(None, "--host", help="Listen address (default 127.0.0.1)."),
) -> None:
    """Run the embedded Tansu broker on loopback, create the topics, stop cleanly on SIGINT/SIGTERM."""
    from foundation.broker import EmbeddedBroker
    from foundation.settings import load_settings

    settings = load_settings()
    b = EmbeddedBroker(host or settings.broker.host, port or settings.broker.port,
                       start_timeout_s=settings.broker.start_timeout_s)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with b:
        console.print(f"[green]broker ready[/] on {b.bootstrap} (topics created); Ctrl-C to stop")
        while not stop.wait(0.5):
            if b.proc is None or b.proc.poll() is not None:
                console.print("[red]broker process exited[/]")
                raise typer.Exit(1)
    console.print("broker stopped")
