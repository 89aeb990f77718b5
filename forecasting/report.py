"""Backtest presentation: the plot file and the key figures (pure data → figure/dict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: (label, key suffix) of the series drawn beside the model.
_SERIES = (("model", ""), ("persistence", "_persistence"), ("moving average", "_moving_average"))


def plot_backtest(result: dict[str, Any], path: Path) -> Path:
    """MAE per horizon (model, physics-only, persistence, moving average) and interval coverage, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizons = result["horizons"]
    hs = sorted(horizons, key=float)
    x = [float(h) for h in hs]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (metric, unit, scale) in zip(axes[:2], (("gpu_temp_mae", "_c", 1.0), ("power_mae", "_frac", 100.0)),
                                         strict=True):
        for label, suffix in _SERIES:
            ax.plot(x, [horizons[h][f"{metric}{suffix}{unit}"] * scale for h in hs], marker="o", label=label)
        phys = result.get("physics", {}).get("horizons", {})
        if phys:
            ax.plot(x, [phys[h][f"{metric}{unit}"] * scale for h in hs], marker="x", ls="--", label="physics only")
        ax.set_xscale("log")
        ax.set_xlabel("horizon (s)")
        ax.set_ylabel("hottest-GPU MAE (°C)" if metric == "gpu_temp_mae" else "server power MAE (% of peak)")
        ax.grid(alpha=0.3)
        ax.legend()
    ax = axes[2]
    width = 0.35
    idx = list(range(len(hs)))
    ax.bar([i - width / 2 for i in idx], [horizons[h]["gpu_temp_coverage_90"] for h in hs], width, label="temperature")
    ax.bar([i + width / 2 for i in idx], [horizons[h]["power_coverage_90"] for h in hs], width, label="power")
    ax.axhspan(0.85, 0.95, color="green", alpha=0.15, label="85-95 % target")
    ax.set_xticks(idx, [f"{h} s" for h in hs])
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("coverage of the nominal 90 % interval")
    ax.legend(loc="lower right")
    fig.suptitle(f"rolling-origin backtest: {result.get('source', '')}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def target_check(result: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets evaluated on a backtest result (True = met)."""
    h = result["horizons"]
    out: dict[str, bool] = {}
    if "60" in h:
        out["gpu_temp_mae_60s_le_1c"] = h["60"]["gpu_temp_mae_c"] <= 1.0
        out["power_mae_60s_le_3pct_peak"] = h["60"]["power_mae_frac"] <= 0.03
    if "300" in h:
        out["gpu_temp_300s_30pct_below_persistence"] = (
            h["300"]["gpu_temp_mae_c"] <= 0.7 * h["300"]["gpu_temp_mae_persistence_c"])
        out["power_300s_30pct_below_persistence"] = (
            h["300"]["power_mae_frac"] <= 0.7 * h["300"]["power_mae_persistence_frac"])
    out["coverage_90_within_85_95"] = 0.85 <= result["coverage_90"] <= 0.95
    return out
