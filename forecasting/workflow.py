"""The data scientist's workflow as functions: backtest a history, train a version, record its metadata.

``tapas backtest``/``tapas train`` and ``bench/forecast.py`` are thin shells over
these, so a notebook gets exactly what the CLI does.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pandas as pd

from forecasting.backtest import DEFAULT_HORIZONS_S, fold_history, rolling_origin
from forecasting.features import FEATURE_NAMES
from forecasting.history import history_range
from forecasting.registry import ModelVersion, save_version
from forecasting.seasonal import seasonal_backtest
from forecasting.state import ForecasterParams
from forecasting.train import TRAIN_HORIZONS_S, fit_corrections

Progress = Callable[[int], None]


def library_versions() -> dict[str, str]:
    """Versions of the libraries a model depends on (stored with every artifact)."""
    out = {"python": platform.python_version()}
    for name in ("numpy", "pandas", "scikit-learn", "statsmodels", "lightgbm", "tapas"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def run_backtest(df: pd.DataFrame, *, horizons_s: Sequence[float] = DEFAULT_HORIZONS_S, num_folds: int = 3,
                 warmup_s: float = 300.0, base: ForecasterParams | None = None, source: str = "",
                 seasonal: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Rolling-origin backtest of the trained model (and the physics model) against baselines.

    Returns the JSON the CLI writes: ``{"horizons": {"60": {...}}, "coverage_90", "physics", ...}``;
    with ``seasonal`` also the statsmodels backtest of inlet per zone and load per service.
    """
    base = base or ForecasterParams()
    folded = fold_history(df, base, horizons_s, progress=progress)
    ro = rolling_origin(folded, base, num_folds=num_folds, warmup_s=warmup_s)
    start, end = history_range(df)
    return {
        "horizons": ro["model"]["horizons"],
        "coverage_90": ro["model"]["coverage_90"],
        "physics": ro["physics"],
        "folds": num_folds,
        "num_servers": int(df["server_id"].nunique()),
        "num_rows": len(df),
        "hours": (float(df["at_s"].max()) - float(df["at_s"].min())) / 3600.0,
        "history_start": start,
        "history_end": end,
        "source": source,
        "seasonal": seasonal_backtest(df) if seasonal else {},
    }


def train_version(df: pd.DataFrame, registry_dir: Path, *, version: str | None = None,
                  base: ForecasterParams | None = None, source: str = "", evaluate: bool = True,
                  progress: Progress | None = None) -> ModelVersion:
    """Train a version on ``df`` and write it to the registry (not promoted).

    With ``evaluate`` the metadata carries a rolling-origin backtest of the same
    recipe on the same history (figures at 10/60/300 s), so ``tapas models show``
    can compare versions.
    """
    base = base or ForecasterParams()
    version = version or "v" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folded = fold_history(df, base, TRAIN_HORIZONS_S, progress=progress)
    start, end = history_range(df)
    metrics: dict[str, float] = {}
    if evaluate:
        ro = rolling_origin(folded.with_horizons(DEFAULT_HORIZONS_S), base, num_folds=2)
        for h in ("10", "60", "300"):
            row = ro["model"]["horizons"].get(h)
            if row:
                for key in ("gpu_temp_mae_c", "gpu_temp_mae_persistence_c", "power_mae_frac",
                            "power_mae_persistence_frac", "gpu_temp_coverage_90", "power_coverage_90"):
                    metrics[f"{key}@{h}s"] = float(row[key])
        metrics["coverage_90"] = float(ro["model"]["coverage_90"])
    meta = {
        "features": list(FEATURE_NAMES),
        "training_start": start,
        "training_end": end,
        "num_servers": int(df["server_id"].nunique()),
        "num_rows": len(df),
        "source": source,
        "horizons_s": list(TRAIN_HORIZONS_S),
        "metrics": metrics,
        "library_versions": library_versions(),
        "recipe": "physics first-order lag + per-server RLS + per-horizon ridge residual corrections "
                  "+ residual-quantile intervals",
    }
    params = fit_corrections(folded, base, version=version, metadata={"training_start": start,
                                                                       "training_end": end})
    return save_version(Path(registry_dir), params, meta)
