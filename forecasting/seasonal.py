"""Minutes-ahead forecasts of seasonal aggregates with statsmodels: inlet per cooling zone, load per service.

Inlet temperature follows the time of day and the zone's heat; request load
follows the diurnal cycle. Both are smooth at the zone/service level, so an
exponential-smoothing model (level only or Holt's damped trend, picked by AIC; a
seasonal component once the history spans two seasons) on a regular grid forecasts them up to 15 minutes
ahead. These run offline or on a slow timer (one fit per aggregate), never per
sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Horizons the seasonal backtest reports, seconds (issue: up to 15 minutes).
SEASONAL_HORIZONS_S: tuple[float, ...] = (300.0, 900.0)


def regular_series(df: pd.DataFrame, value: str, group: str, *, step_s: float, how: str = "mean") -> pd.DataFrame:
    """Aggregate ``value`` per ``group`` on a regular ``step_s`` grid (rows: time, columns: groups).

    Per server the value is first averaged within each step; the group then takes
    the ``how`` (``mean`` for inlet, ``sum`` for load) over its servers. Missing
    steps are filled forward.
    """
    d = df[["at_s", "server_id", group, value]].dropna(subset=[value])
    d = d.assign(step=(d["at_s"] // step_s).astype("int64"))
    per_server = d.groupby(["step", group, "server_id"], observed=True)[value].mean().reset_index()
    agg = per_server.groupby(["step", group], observed=True)[value].agg(how).unstack(group)
    full = pd.RangeIndex(int(agg.index.min()), int(agg.index.max()) + 1)
    return agg.reindex(full).ffill()


def forecast_ets(history: np.ndarray, steps: int, *, season_steps: int | None = None,
                 max_history_steps: int = 480) -> np.ndarray:
    """Forecast ``steps`` ahead with exponential smoothing, picking level-only or damped trend by AIC.

    A seasonal component is added once the history spans two seasons. Only the last
    ``max_history_steps`` points are fitted (the fit is the costly part).

    Examples:
        >>> y = np.linspace(20.0, 22.0, 120)
        >>> bool(abs(forecast_ets(y, 10)[-1] - 22.1) < 0.3)
        True
    """
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    y = np.asarray(history, dtype=float)[-max_history_steps:]
    seasonal = season_steps is not None and len(y) >= 2 * season_steps
    best: Any = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for trend in (None, "add"):
            model = ExponentialSmoothing(
                y, trend=trend, damped_trend=trend is not None, seasonal="add" if seasonal else None,
                seasonal_periods=season_steps if seasonal else None,
                initialization_method="heuristic" if (trend or seasonal) and len(y) >= 10 else "estimated")
            fit = model.fit(optimized=True)
            if best is None or fit.aic < best.aic:
                best = fit
    return np.asarray(best.forecast(steps), dtype=np.float64)


def backtest_aggregates(table: pd.DataFrame, *, step_s: float, horizons_s: Sequence[float] = SEASONAL_HORIZONS_S,
                        min_history_steps: int = 40, num_origins: int = 12,
                        season_steps: int | None = None) -> dict[str, dict[str, float]]:
    """Rolling-origin MAE of ETS vs persistence per horizon, pooled over the table's columns.

    Origins are spread evenly over the part of the series that leaves room for the
    longest horizon; each fit uses everything before its origin.
    """
    steps = [max(1, round(h / step_s)) for h in horizons_s]
    n = len(table)
    last = n - max(steps) - 1
    if last <= min_history_steps:
        return {}
    origins = np.unique(np.linspace(min_history_steps, last, num_origins).astype(int))
    err: dict[int, list[float]] = {s: [] for s in steps}
    err_p: dict[int, list[float]] = {s: [] for s in steps}
    for col in table.columns:
        y = table[col].to_numpy(dtype=float)
        if np.isnan(y).any():
            y = pd.Series(y).bfill().to_numpy(dtype=float)
        for o in origins:
            pred = forecast_ets(y[: o + 1], max(steps), season_steps=season_steps)
            for s in steps:
                err[s].append(abs(pred[s - 1] - y[o + s]))
                err_p[s].append(abs(y[o] - y[o + s]))
    return {f"{h:g}": {"mae": float(np.mean(err[s])), "mae_persistence": float(np.mean(err_p[s])),
                       "num_origins": len(err[s])} for h, s in zip(horizons_s, steps, strict=True)}


def forecast_aggregates(df: pd.DataFrame, *, step_s: float = 30.0,
                        horizons_s: Sequence[float] = (300.0, 600.0, 900.0),
                        season_steps: int | None = None) -> pd.DataFrame:
    """Forecast inlet per cooling zone and load per service from the end of a history.

    Returns one row per aggregate and horizon: ``kind`` (``inlet_per_zone_c`` or
    ``load_per_service_tokens_per_s``), ``group``, ``horizon_s``, ``last`` (the
    latest value) and ``forecast``.
    """
    rows: list[dict[str, Any]] = []
    steps = [max(1, round(h / step_s)) for h in horizons_s]
    tables: list[tuple[str, pd.DataFrame]] = []
    if "zone_id" in df.columns and "inlet_temp_c" in df.columns:
        tables.append(("inlet_per_zone_c", regular_series(df, "inlet_temp_c", "zone_id", step_s=step_s)))
    service = "service_id" if "service_id" in df.columns else "config_id" if "config_id" in df.columns else None
    if service is not None:
        d = df.assign(tokens_per_s=df["prefill_tokens_per_s"].fillna(0) + df["decode_tokens_per_s"].fillna(0))
        tables.append(("load_per_service_tokens_per_s",
                       regular_series(d, "tokens_per_s", service, step_s=step_s, how="sum")))
    for kind, table in tables:
        for col in table.columns:
            y = table[col].bfill().to_numpy(dtype=float)
            pred = forecast_ets(y, max(steps), season_steps=season_steps)
            for h, k in zip(horizons_s, steps, strict=True):
                rows.append({"kind": kind, "group": str(col), "horizon_s": float(h), "last": float(y[-1]),
                             "forecast": float(pred[k - 1])})
    return pd.DataFrame(rows, columns=["kind", "group", "horizon_s", "last", "forecast"])


def seasonal_backtest(df: pd.DataFrame, *, step_s: float = 30.0, num_origins: int = 8) -> dict[str, Any]:
    """Inlet per cooling zone (mean) and load per service (sum of tokens/s) backtests, when columns allow.

    The service is ``service_id`` when the history has it, else ``config_id``.
    """
    out: dict[str, Any] = {}
    if "zone_id" in df.columns and "inlet_temp_c" in df.columns:
        inlet = regular_series(df, "inlet_temp_c", "zone_id", step_s=step_s)
        out["inlet_per_zone_c"] = backtest_aggregates(inlet, step_s=step_s, num_origins=num_origins)
    service = "service_id" if "service_id" in df.columns else "config_id" if "config_id" in df.columns else None
    if service is not None:
        d = df.assign(tokens_per_s=df["prefill_tokens_per_s"].fillna(0) + df["decode_tokens_per_s"].fillna(0))
        load = regular_series(d, "tokens_per_s", service, step_s=step_s, how="sum")
        out["load_per_service_tokens_per_s"] = backtest_aggregates(load, step_s=step_s, num_origins=num_origins)
    return out
