"""``tapas dashboard``: the operators' live page (Dash), fed by a background Kafka consumer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard)


def dashboard(
    host: str = typer.Option(None, "--host", help="Bind address (default TAPAS_DASHBOARD__HOST, 127.0.0.1)."),
    port: int = typer.Option(None, "--port", "-p", help="Port (default TAPAS_DASHBOARD__PORT, 8050)."),
    cluster_file: Path = typer.Option(None, "--cluster-file",
                                      help="Cluster TOML whose full floor is drawn (default TAPAS_CLUSTER_FILE)."),
    servers: int = typer.Option(None, "--servers", min=1,
                                help="Draw the default layout with this many servers instead of a cluster file."),
) -> None:
    """Serve the dashboard. Without a cluster file the floor is learned from the forecasts' rack/row tags."""
    from dashboard.app import create_app
    from dashboard.view import DashboardView, FloorLayout, ViewConsumer
    from foundation.settings import load_settings
    from tapas.bootstrap import kafka_clients

    settings = load_settings()
    d = settings.dashboard
    layout = None
    if servers is not None:
        from foundation.topology import default_topology

        layout = FloorLayout.from_topology(default_topology(servers))
    elif cluster_file is not None:
        from foundation.topology import load_topology

        layout = FloorLayout.from_topology(load_topology(cluster_file))
    elif settings.topology.inventory is not None or settings.cluster_file is not None:
        from foundation.inventory import topology_from_settings

        layout = FloorLayout.from_topology(topology_from_settings(settings))
    if d.username and d.password is None:
        raise typer.BadParameter("TAPAS_DASHBOARD__USERNAME is set but TAPAS_DASHBOARD__PASSWORD is not")
    view = DashboardView(layout=layout, stale_after_s=d.stale_after_s)
    consumer = ViewConsumer(view, clients=kafka_clients(settings))
    app = create_app(view, refresh_s=d.refresh_s, username=d.username,
                     password=d.password.get_secret_value() if d.password else None,
                     consuming=lambda: consumer.alive)
    consumer.start()
    bind_host, bind_port = host or d.host, port or d.port
    console.print(f"dashboard on http://{bind_host}:{bind_port}/ (broker {settings.kafka.bootstrap_servers}"
                  f"{', basic auth on' if d.username else ''})")
    try:
        app.run(host=bind_host, port=bind_port, debug=False)
    finally:
        consumer.stop()
