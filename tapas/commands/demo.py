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
    from foundation.settings import load_settings
    from tapas.demo import Demo, DemoPlan

    settings = load_settings()
    trace = settings.resolved_trace_file
    if not trace.is_file():  # fail here, not as a feed that exits while the rest runs on with no data
        from contracts.errors import ConfigError

        raise ConfigError(f"the simulator's request trace {trace} is missing: set TAPAS_DATA_DIR to the folder "
                          "holding azure-llm-inference-2023/ (default ../shared/data) or TAPAS_TRACE_FILE to a trace")
    if port:
        settings.broker.port = port
    plan = DemoPlan(scenario=scenario, num_servers=servers, speed=speed, num_workers=workers,
                    with_dashboard=not no_dashboard, log_dir=log_dir)
    Demo(plan, settings, print_fn=console.print).run()
