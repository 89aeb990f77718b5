"""``tapas train``, ``tapas backtest`` and ``tapas models list|show|promote``: the forecasting workflow."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Iterator

    import pandas as pd

models_app = typer.Typer(help="Model registry: list, show and promote forecaster versions.", no_args_is_help=True)
console = Console(width=120)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("backtest")(backtest)
    app.add_typer(models_app, name="models")


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _history(history: Path | None, simulate: bool, from_store: bool, last_hours: float, servers: int,
             hours: float, seed: int, scenario: str, sweep_s: float) -> tuple[pd.DataFrame, str]:
    """Load the history the options name; returns it with a one-line description of its source."""
    from forecasting.history import load_history, read_history_file, simulated_history

    chosen = sum([history is not None, simulate, from_store])
    if chosen != 1:
        raise typer.BadParameter("give exactly one of --history FILE, --simulate or --from-store")
    if history is not None:
        return read_history_file(history), f"file {history}"
    if simulate:
        sweep = f", configuration sweep every {sweep_s:g} s" if sweep_s > 0 else ""
        with console.status(f"simulating {servers} servers for {hours:g} h (seed {seed}, scenario {scenario})"):
            df = simulated_history(servers, hours, seed=seed, scenario=scenario,
                                   config_sweep_s=sweep_s if sweep_s > 0 else None)
        return df, f"simulator: {servers} servers, {hours:g} h, seed {seed}, scenario {scenario}{sweep}"
    from foundation.settings import load_settings
    from tapas.bootstrap import open_store

    store = open_store(load_settings().store)
    try:
        end = datetime.now(UTC)
        df = load_history(store, end - timedelta(hours=last_hours), end)
    finally:
        store.close()
    return df, f"history store, last {last_hours:g} h"


_HISTORY = typer.Option(None, "--history", help="Parquet or CSV with Observation columns (one row per server per sample).")
_SIMULATE = typer.Option(False, "--simulate", help="Generate the history with the simulator.")
_FROM_STORE = typer.Option(False, "--from-store", help="Read the history from the configured store.")
_LAST_HOURS = typer.Option(24.0, "--last-hours", help="With --from-store: how much history.")
_SERVERS = typer.Option(60, "--servers", help="With --simulate: cluster size.")
_HOURS = typer.Option(1.5, "--hours", help="With --simulate: hours of telemetry.")
_SEED = typer.Option(0, "--seed", help="With --simulate: random seed.")
_SCENARIO = typer.Option("normal", "--scenario", help="With --simulate: simulator scenario.")
_SWEEP = typer.Option(600.0, "--config-sweep-s", min=0.0,
                      help="With --simulate: every this many seconds a tenth of the SaaS instances move to "
                           "another feasible configuration (0 = none), so the history holds configuration changes.")


def backtest(
    history: Path = _HISTORY, simulate: bool = _SIMULATE, from_store: bool = _FROM_STORE,
    last_hours: float = _LAST_HOURS, servers: int = _SERVERS, hours: float = _HOURS, seed: int = _SEED,
    scenario: str = _SCENARIO, config_sweep_s: float = _SWEEP,
    json_out: Path = typer.Option(None, "--json", help="Write the figures as JSON here."),
    plot: Path = typer.Option(Path("artifacts/backtest.png"), "--plot", help="Plot file (PNG)."),
    horizons: str = typer.Option("10,60,300", "--horizons", help="Comma-separated horizons, seconds."),
    folds: int = typer.Option(3, "--folds", min=1, help="Rolling-origin test blocks."),
    no_seasonal: bool = typer.Option(False, "--no-seasonal", help="Skip the statsmodels inlet/load backtest."),
) -> None:
    """Rolling-origin backtest: model MAE/RMSE per horizon beside persistence and moving average, and coverage."""
    from forecasting.report import plot_backtest, target_check
    from forecasting.workflow import run_backtest

    df, source = _history(history, simulate, from_store, last_hours, servers, hours, seed, scenario,
                          config_sweep_s)
    hs = tuple(float(h) for h in horizons.split(","))
    with _progress(len(df), "folding history through the online model") as advance:
        result = run_backtest(df, horizons_s=hs, num_folds=folds, source=source, seasonal=not no_seasonal,
                              progress=advance)
    title = f"backtest ({source}, {result['num_servers']} servers, {result['hours']:.2f} h, {folds} folds)"
    temp_t = Table("horizon", "model MAE °C", "physics", "persistence", "moving avg", "model RMSE",
                   "coverage", "known level", "known 5-min level",
                   title=f"hottest-GPU temperature: {title} (last columns: the lag model fed the power that "
                   "followed, smoothed over 1 or 5 minutes)")
    power_t = Table("horizon", "model MAE %peak", "physics", "persistence", "moving avg", "model RMSE",
                    "coverage", "future-minute mean",
                    title="server power (MAE as % of server peak; last column: the error left when the actual "
                          "mean of the minute around the target is known)")
    for h, row in result["horizons"].items():
        phys = result["physics"]["horizons"][h]
        temp_t.add_row(f"{h} s", f"{row['gpu_temp_mae_c']:.3f}", f"{phys['gpu_temp_mae_c']:.3f}",
                       f"{row['gpu_temp_mae_persistence_c']:.3f}", f"{row['gpu_temp_mae_moving_average_c']:.3f}",
                       f"{row['gpu_temp_rmse_c']:.3f}", f"{row['gpu_temp_coverage_90']:.3f}",
                       f"{row['gpu_temp_mae_known_level_c']:.3f}", f"{row['gpu_temp_mae_known_5min_level_c']:.3f}")
        power_t.add_row(f"{h} s", f"{100 * row['power_mae_frac']:.2f}", f"{100 * phys['power_mae_frac']:.2f}",
                        f"{100 * row['power_mae_persistence_frac']:.2f}",
                        f"{100 * row['power_mae_moving_average_frac']:.2f}", f"{100 * row['power_rmse_frac']:.2f}",
                        f"{row['power_coverage_90']:.3f}", f"{100 * row['power_mae_future_minute_mean_frac']:.2f}")
    console.print(temp_t)
    console.print(power_t)
    reg_t = Table("horizon", "load", "origins", "temp MAE °C", "persistence", "oracle 1-min level",
                  "oracle 5-min level", "power MAE %peak", "persistence", "oracle minute mean",
                  title="by load type (bursty = serving prefill/decode bursts, smooth = VM-like); "
                        "oracles know the future load level, see README")
    for h, row in result["horizons"].items():
        for regime in ("bursty", "smooth"):
            if f"gpu_temp_mae_c_{regime}" in row:
                reg_t.add_row(f"{h} s", regime, str(row[f"num_origins_{regime}"]),
                              f"{row[f'gpu_temp_mae_c_{regime}']:.3f}",
                              f"{row[f'gpu_temp_mae_persistence_c_{regime}']:.3f}",
                              f"{row[f'gpu_temp_mae_known_level_c_{regime}']:.3f}",
                              f"{row[f'gpu_temp_mae_known_5min_level_c_{regime}']:.3f}",
                              f"{100 * row[f'power_mae_frac_{regime}']:.2f}",
                              f"{100 * row[f'power_mae_persistence_frac_{regime}']:.2f}",
                              f"{100 * row[f'power_mae_future_minute_mean_frac_{regime}']:.2f}")
    console.print(reg_t)
    if result.get("seasonal"):
        seas_t = Table("aggregate", "horizon", "ETS MAE", "persistence MAE", "origins",
                       title="statsmodels exponential smoothing (inlet per zone, load per service)")
        for name, per_h in result["seasonal"].items():
            for h, row in per_h.items():
                seas_t.add_row(name, f"{h} s", f"{row['mae']:.3f}", f"{row['mae_persistence']:.3f}",
                               str(row["num_origins"]))
        console.print(seas_t)
    result["targets"] = target_check(result)
    console.print(f"coverage of the nominal 90 % interval: {result['coverage_90']:.3f}")
    for name, ok in result["targets"].items():
        console.print(f"  {'met' if ok else 'MISSED'}: {name}")
    console.print(f"plot: {plot_backtest(result, plot)}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2, sort_keys=True))
        console.print(f"wrote {json_out}")


def train(
    history: Path = _HISTORY, simulate: bool = _SIMULATE, from_store: bool = _FROM_STORE,
    last_hours: float = _LAST_HOURS, servers: int = _SERVERS, hours: float = _HOURS, seed: int = _SEED,
    scenario: str = _SCENARIO, config_sweep_s: float = _SWEEP,
    version: str = typer.Option(None, "--version", help="Version name (default: v<UTC timestamp>)."),
    promote_it: bool = typer.Option(False, "--promote", help="Promote and announce the new version."),
    registry_dir: Path = typer.Option(None, "--registry-dir", help="Registry (default: TAPAS_REGISTRY_DIR)."),
    no_evaluate: bool = typer.Option(False, "--no-evaluate", help="Skip the rolling-origin figures in the metadata."),
) -> None:
    """Train a forecaster version on history and write it to the registry with its metadata."""
    from forecasting.workflow import train_version
    from foundation.settings import load_settings

    settings = load_settings()
    reg = registry_dir or settings.registry_dir
    df, source = _history(history, simulate, from_store, last_hours, servers, hours, seed, scenario,
                          config_sweep_s)
    with _progress(len(df), "folding history through the online model") as advance:
        mv = train_version(df, reg, version=version, source=source, evaluate=not no_evaluate, progress=advance)
    console.print(f"trained {mv.version} → {mv.path} (sha256 {mv.sha256[:12]}…)")
    for k, v in sorted(mv.metrics.items()):
        console.print(f"  {k}: {v:.4g}")
    if promote_it:
        _promote(reg, mv.version, announce_it=True)


def _promote(registry_dir: Path, version: str, *, announce_it: bool) -> dict[str, Any]:
    from forecasting.announce import announce, announcement_from_record
    from forecasting.registry import promote
    from foundation.settings import load_settings
    from tapas.bootstrap import kafka_clients

    record = promote(registry_dir, version)
    console.print(f"promoted {version}")
    if announce_it:
        settings = load_settings()
        announce(kafka_clients(settings), announcement_from_record(record))
        console.print(f"announced {version} on tapas.models ({settings.kafka.bootstrap_servers})")
    return record


@models_app.command("list")
def models_list(registry_dir: Path = typer.Option(None, "--registry-dir", help="Registry (default: TAPAS_REGISTRY_DIR).")) -> None:
    """List registered versions (the promoted one marked)."""
    from forecasting.registry import list_versions
    from foundation.settings import load_settings

    reg = registry_dir or load_settings().registry_dir
    table = Table("version", "promoted", "created", "temp MAE@60s", "power MAE@60s %peak", "coverage_90",
                  "sha256")
    for mv in list_versions(reg):
        m = mv.metrics
        table.add_row(mv.version, "*" if mv.promoted else "", mv.created_at[:19],
                      f"{m['gpu_temp_mae_c@60s']:.3f}" if "gpu_temp_mae_c@60s" in m else "-",
                      f"{100 * m['power_mae_frac@60s']:.2f}" if "power_mae_frac@60s" in m else "-",
                      f"{m['coverage_90']:.3f}" if "coverage_90" in m else "-", mv.sha256[:12])
    console.print(table)


@models_app.command("show")
def models_show(
    version: str = typer.Argument(None, help="Version (default: the promoted one)."),
    registry_dir: Path = typer.Option(None, "--registry-dir", help="Registry (default: TAPAS_REGISTRY_DIR)."),
) -> None:
    """Print a version's metadata: features, training range, metrics, library versions."""
    from contracts.errors import ConfigError
    from forecasting.registry import promoted, read_metadata
    from foundation.settings import load_settings

    reg = registry_dir or load_settings().registry_dir
    if version is None:
        record = promoted(reg)
        if record is None:
            raise ConfigError(f"no promoted version in {reg}; name one (tapas models list)")
        version = record["version"]
    console.print_json(json.dumps(read_metadata(reg, version), default=str))


@models_app.command("promote")
def models_promote(
    version: str = typer.Argument(..., help="Version to promote."),
    no_announce: bool = typer.Option(False, "--no-announce", help="Only mark it promoted; do not announce."),
    registry_dir: Path = typer.Option(None, "--registry-dir", help="Registry (default: TAPAS_REGISTRY_DIR)."),
) -> None:
    """Promote a version and announce it on tapas.models so running workers load it."""
    from foundation.settings import load_settings

    _promote(registry_dir or load_settings().registry_dir, version, announce_it=not no_announce)
