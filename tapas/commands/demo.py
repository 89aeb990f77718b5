"""``tapas demo``: the whole live system on embedded defaults (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    scenario: str = typer.Option("normal", "--scenario", help="Simulator scenario: normal, load-spike, "
                                 "cooling-failure, power-failure."),
    servers: int = typer.Option(200, "--servers", min=8, help="Simulated servers."),
    speed: float = typer.Option(1.0, "--speed", min=0.1, help="Simulated seconds per wall second."),
    workers: int = typer.Option(1, "--workers", min=1, max=8, help="Stream worker processes."),
    port: int = typer.Option(None, "--broker-port", help="Embedded broker port (default TAPAS_BROKER__PORT)."),
    log_dir: Path = typer.Option(Path("var/demo"), "--log-dir", help="Where each process logs."),
    no_dashboard: bool = typer.Option(False, "--no-dashboard", help="Run headless (for checks)."),
) -> None:
    """Start broker, simulator feed, worker(s), controller and dashboard; Ctrl-C stops them all."""
    from tapas.demo import Demo, DemoPlan
    from tapas.settings import load_settings

    settings = load_settings()
    if port:
        settings.broker.port = port
    plan = DemoPlan(scenario=scenario, num_servers=servers, speed=speed, num_workers=workers,
                    with_dashboard=not no_dashboard, log_dir=log_dir)
    Demo(plan, settings, print_fn=console.print).run()
