"""``tapas worker``: run one Faust stream worker (start several to share the partitions)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)


def worker(
    web_port: int = typer.Option(None, "--web-port", help="Faust web port (default TAPAS_WORKER__WEB_PORT); "
                                 "give each worker on one host its own."),
    no_store: bool = typer.Option(False, "--no-store", help="Do not write history (forecasts still published)."),
    loglevel: str = typer.Option("WARNING", "--loglevel", help="Faust log level."),
) -> None:
    """Consume telemetry, keep per-server models live, publish forecasts, write history (Ctrl-C stops)."""
    import faust

    from foundation.inventory import topology_from_settings
    from foundation.settings import load_settings
    from streams.app import WorkerApp, load_forecaster
    from streams.processor import TopologyView
    from tapas.bootstrap import kafka_clients, worker_store

    settings = load_settings()
    if web_port is not None:
        settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={"web_port": web_port})})
    topo = topology_from_settings(settings)
    view = TopologyView.from_topology(topo, inlet_limit_c=settings.worker.inlet_limit_c)
    store = None
    if not no_store and settings.worker.store_enabled:
        store = worker_store(settings)  # outages of the store are buffered and retried
    wa = WorkerApp(settings, view=view, forecaster=load_forecaster(settings.registry_dir), store=store,
                   clients=kafka_clients(settings))
    try:
        faust.Worker(wa.app, loglevel=loglevel, quiet=True).execute_from_commandline()
    finally:
        if store is not None:
            store.close()
