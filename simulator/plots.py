"""Plot files of a comparison: GPU temperature, row power against budget, throttling over time (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simulator.engine import RunResult


def write_plots(results: Mapping[str, RunResult], out_dir: Path, stem: str) -> list[Path]:
    """Write ``{stem}_temperatures.png``, ``{stem}_row_power.png`` and ``{stem}_throttling.png``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    any_r = next(iter(results.values()))
    slowdown = any_r.info.get("slowdown_temp_c")
    window = any_r.info.get("event_window_s")

    def finish(ax: Any, fig: Any, name: str, title: str) -> None:
        axes = list(ax) if isinstance(ax, np.ndarray) else [ax]
        for a in axes:
            if window:
                a.axvspan(window[0] / 60.0, window[1] / 60.0, color="grey", alpha=0.15, label="event")
            a.set_xlabel("simulated time (min)")
            a.legend(fontsize=7)
        fig.suptitle(f"{title} — {any_r.scenario}, {any_r.num_servers} servers, oversubscription {any_r.oversubscription}")
        fig.tight_layout()
        path = out_dir / f"{stem}_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        t = np.asarray(r.timeseries["t_s"]) / 60.0
        ax[0].plot(t, r.timeseries["max_gpu_temp_c"], label=name)
        ax[1].plot(t, r.timeseries["mean_hottest_gpu_temp_c"], label=name)
    if slowdown:
        ax[0].axhline(slowdown, color="red", ls="--", lw=1, label="slowdown")
    ax[0].set_ylabel("max GPU temperature (°C)")
    ax[1].set_ylabel("mean hottest-GPU temperature (°C)")
    finish(ax, fig, "temperatures", "GPU temperature")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        t = np.asarray(r.timeseries["t_s"]) / 60.0
        frac = np.asarray(r.timeseries["row_power_frac"], dtype=float)
        ax.plot(t, frac.max(axis=1), label=f"{name} (max row)")
    t_any = np.asarray(any_r.timeseries["t_s"]) / 60.0
    ax.plot(t_any, any_r.timeseries.get("available_budget_frac", np.ones(len(t_any))), color="red", ls="--", lw=1,
            label="available budget")
    ax.set_ylabel("row power / budget")
    finish(ax, fig, "row_power", "Row power against budget")

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        t = np.asarray(r.timeseries["t_s"]) / 60.0
        ax[0].plot(t, r.timeseries["thermal_throttled_gpus"], label=name)
        ax[1].plot(t, r.timeseries["power_throttled_gpus"], label=name)
    ax[0].set_ylabel("GPUs in thermal slowdown")
    ax[1].set_ylabel("GPUs under a row power cap")
    finish(ax, fig, "throttling", "Throttling")
    return paths
