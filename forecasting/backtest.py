"""Rolling-origin backtesting: fold history through the online pipeline, score forecasts against baselines.

The history (one row per server per tick, columns = :class:`forecasting.state.Observation`
fields, optionally ``server_peak_w``) is folded server by server through the same
:func:`forecasting.features.advance_state` the worker runs, so every origin sees only
its past. :func:`fold_history` records, per origin, the feature vector and the
physics forecast at each horizon; :func:`rolling_origin` then splits time into
blocks, fits the residual corrections (:mod:`forecasting.train`) on the blocks
before each test block (targets ending before it: no look-ahead), and scores the
test block against persistence (last value) and a moving average.

Power errors are reported as a fraction of each server's peak power (``server_peak_w``
column when present, else the server's largest observed power, which overstates
the fraction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from forecasting.features import (
    NUM_FEATURES,
    advance_state,
    burstiness,
    feature_vector,
    physics_forecast,
)
from forecasting.folded import ROW_ARRAYS, F, FoldedHistory
from forecasting.state import OBSERVATION_COLUMNS, ForecasterParams, Observation, ServerModelState

#: Horizons reported by default, seconds.
DEFAULT_HORIZONS_S: tuple[float, ...] = (10.0, 60.0, 300.0)
#: Window of the moving-average baseline, seconds.
MOVING_AVERAGE_S = 60.0
#: Width of the centred window of ``minute_mean_power_w`` (the error a known load level leaves).
FUTURE_MINUTE_S = 60.0
#: Width of the centred window behind ``known_5min_level_temp_c`` (a known 5-minute load level).
FUTURE_5MIN_S = 300.0


def _at_seconds(df: pd.DataFrame) -> pd.Series:
    if "at_s" in df.columns:
        return df["at_s"].astype(float)
    at = pd.to_datetime(df["at"], utc=True)
    return (at - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def _observations(g: pd.DataFrame) -> list[Observation]:
    """Rows of one server's history as observations (NaN → None for the optional fields)."""
    cols = {c: g[c].to_numpy() for c in OBSERVATION_COLUMNS if c in g.columns}
    n = len(g)
    missing = [c for c in ("server_id", "at_s", "hottest_gpu_temp_c", "gpu_power_w") if c not in cols]
    if missing:
        raise ValueError(f"history lacks columns {missing} (need the Observation fields)")

    def opt(name: str, i: int) -> float | None:
        arr = cols.get(name)
        if arr is None:
            return None
        v = arr[i]
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    def num(name: str, i: int, default: float) -> float:
        v = opt(name, i)
        return default if v is None else v

    out = []
    for i in range(n):
        cfg = cols["config_id"][i] if "config_id" in cols else None
        out.append(Observation(
            server_id=str(cols["server_id"][i]), at_s=float(cols["at_s"][i]),
            hottest_gpu_temp_c=float(cols["hottest_gpu_temp_c"][i]), gpu_power_w=float(cols["gpu_power_w"][i]),
            server_power_w=opt("server_power_w", i), inlet_temp_c=opt("inlet_temp_c", i),
            mean_gpu_util_pct=num("mean_gpu_util_pct", i, 0.0),
            prefill_tokens_per_s=num("prefill_tokens_per_s", i, 0.0),
            decode_tokens_per_s=num("decode_tokens_per_s", i, 0.0), batch_size=num("batch_size", i, 0.0),
            frequency_cap_mhz=opt("frequency_cap_mhz", i),
            config_id=None if cfg is None or (isinstance(cfg, float) and math.isnan(cfg)) else str(cfg),
            num_gpus=int(num("num_gpus", i, 8.0)), slowdown_temp_c=num("slowdown_temp_c", i, 87.0),
            hottest_gpu_power_w=opt("hottest_gpu_power_w", i),
        ))
    return out


def _aligned_targets(at_s: F, values: F, horizons_s: Sequence[float], tol_s: float) -> F:
    """``values`` at ``at_s + h`` for each horizon (NaN when no sample lies within ``tol_s``)."""
    out = np.full((len(at_s), len(horizons_s)), np.nan)
    for k, h in enumerate(horizons_s):
        want = at_s + h
        j = np.clip(np.searchsorted(at_s, want), 0, len(at_s) - 1)
        jm = np.clip(j - 1, 0, len(at_s) - 1)
        pick = np.where(np.abs(at_s[jm] - want) < np.abs(at_s[j] - want), jm, j)
        ok = np.abs(at_s[pick] - want) <= tol_s
        out[ok, k] = values[pick[ok]]
    return out


def _mean_between(values: F, start: npt.NDArray[np.intp], end: npt.NDArray[np.intp]) -> F:
    """Mean of ``values[start[i]:end[i]]`` per row (prefix sums; every window non-empty)."""
    csum = np.concatenate([[0.0], np.cumsum(values)])
    return np.asarray((csum[end] - csum[start]) / (end - start), dtype=np.float64)


def _trailing_mean(at_s: F, values: F, window_s: float) -> F:
    """Mean of ``values`` over ``(at - window, at]`` per row (time sorted)."""
    return _mean_between(values, np.searchsorted(at_s, at_s - window_s, side="right"), np.arange(1, len(at_s) + 1))


def _centred_mean(at_s: F, values: F, window_s: float) -> F:
    """Mean of ``values`` over ``[at - window/2, at + window/2]`` per row (time sorted).

    Examples:
        >>> _centred_mean(np.arange(5.0), np.array([0.0, 0.0, 3.0, 0.0, 0.0]), 2.0).tolist()
        [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    return _mean_between(values, np.searchsorted(at_s, at_s - window_s / 2.0, side="left"),
                         np.searchsorted(at_s, at_s + window_s / 2.0, side="right"))


def _known_power_forecast(params: ForecasterParams, horizons: Sequence[float], temp: F, pgpu: F,
                          inlet: F | None, th: F, dt_s: float) -> F:
    """Lag model run forward from each origin on the power and inlet that actually followed.

    ``T(i+h) = a^h T(i) + sum_k a^(h-k) (1-a) (inlet + b_i + R_i p / 100)(i+k)`` with the
    origin's learned ``R_i``/``b_i``; the sums are causal exponential filters (one
    convolution per horizon). Assumes a regular tick ``dt_s``.
    """
    n = len(temp)
    out = np.full((n, len(horizons)), np.nan)
    a = float(np.exp(-dt_s / params.tau_thermal_s))
    inl = inlet if inlet is not None else np.full(n, 24.0)
    for k, h in enumerate(horizons):
        steps = int(round(h / dt_s))
        if steps < 1 or steps >= n:
            continue
        kern = np.asarray((1 - a) * a ** np.arange(steps), dtype=np.float64)  # weight of x(i+steps-j)
        def window_sum(x: F, kern: F = kern, steps: int = steps) -> F:
            full = np.convolve(x, kern)[: n]  # full[m] = sum_j kern[j] x[m-j]
            return np.asarray(full[steps:], dtype=np.float64)  # value for origin i = m - steps
        sp, si = window_sum(pgpu), window_sum(inl)
        ah = a ** steps
        origins = np.arange(n - steps)
        out[origins, k] = (ah * temp[origins] + (1 - ah) * th[origins, 1] + th[origins, 0] / 100.0 * sp[origins]
                           + si[origins])
    return out


def fold_history(df: pd.DataFrame, params: ForecasterParams, horizons_s: Sequence[float] = DEFAULT_HORIZONS_S,
                 *, progress: Callable[[int], None] | None = None) -> FoldedHistory:
    """Fold each server's history through the online pipeline and record features and physics forecasts.

    Args:
        df: history, one row per server per sample (Observation columns; ``at`` or ``at_s``).
        params: the physics constants and priors to fold with (corrections are not applied here).
        horizons_s: forecast horizons, seconds.
        progress: called with the number of rows done after each server (progress bars).
    """
    df = df.assign(at_s=_at_seconds(df)).sort_values(["server_id", "at_s"], kind="stable")
    horizons = tuple(float(h) for h in horizons_s)
    parts: dict[str, list[Any]] = {k: [] for k in ROW_ARRAYS}
    server_ids: list[str] = []
    for idx, (sid, g) in enumerate(df.groupby("server_id", sort=True)):
        server_ids.append(str(sid))
        obs_list = _observations(g)
        n = len(obs_list)
        feats = np.empty((n, NUM_FEATURES))
        pt = np.empty((n, len(horizons)))
        pp = np.empty((n, len(horizons)))
        base = np.empty(n)
        burst = np.empty(n)
        th = np.empty((n, 2))
        st = ServerModelState()
        for i, o in enumerate(obs_list):
            st = advance_state(params, st, o)
            feats[i] = feature_vector(params, st, o)
            base[i] = st.base_w
            burst[i] = burstiness(params, st)
            th[i] = st.th_r, st.th_b
            for k, (t_h, p_h) in enumerate(physics_forecast(params, st, horizons)):
                pt[i, k] = t_h
                pp[i, k] = p_h
        at = g["at_s"].to_numpy(dtype=float)
        temp = g["hottest_gpu_temp_c"].to_numpy(dtype=float)
        gpu_p = g["gpu_power_w"].to_numpy(dtype=float)
        if "server_power_w" in g.columns:
            sp = g["server_power_w"].to_numpy(dtype=float)
            power = np.where(np.isnan(sp), gpu_p + base, sp)
        else:
            power = gpu_p + base
        if "server_peak_w" in g.columns and g["server_peak_w"].notna().any():
            peak = np.full(n, float(g["server_peak_w"].max()))
        else:
            peak = np.full(n, float(np.nanmax(power)))
        dts = np.diff(at)
        tol = 0.5 * float(np.median(dts)) if len(dts) else 0.5
        parts["server"].append(np.full(n, idx, dtype=np.int64))
        parts["at_s"].append(at)
        parts["temp_c"].append(temp)
        parts["power_w"].append(power)
        parts["peak_w"].append(peak)
        parts["num_gpus"].append(g["num_gpus"].to_numpy(dtype=float) if "num_gpus" in g.columns else np.full(n, 8.0))
        parts["base_w"].append(base)
        parts["burst"].append(burst)
        inlet = g["inlet_temp_c"].ffill().bfill().to_numpy(dtype=float) if "inlet_temp_c" in g.columns else None
        num_gpus = g["num_gpus"].to_numpy(dtype=float) if "num_gpus" in g.columns else np.full(n, 8.0)
        pgpu = gpu_p / np.maximum(num_gpus, 1.0)
        if "hottest_gpu_power_w" in g.columns:  # the thermal model's input: the hottest GPU's own power
            pgpu = np.where(np.isnan(hot := g["hottest_gpu_power_w"].to_numpy(dtype=float)), pgpu, hot)
        parts["known_power_temp_c"].append(_known_power_forecast(params, horizons, temp, pgpu, inlet, th, 2.0 * tol))
        parts["known_level_temp_c"].append(_known_power_forecast(
            params, horizons, temp, _centred_mean(at, pgpu, FUTURE_MINUTE_S), inlet, th, 2.0 * tol))
        parts["known_5min_level_temp_c"].append(_known_power_forecast(
            params, horizons, temp, _centred_mean(at, pgpu, FUTURE_5MIN_S), inlet, th, 2.0 * tol))
        parts["features"].append(feats)
        parts["phys_temp_c"].append(pt)
        parts["phys_pgpu_w"].append(pp)
        parts["target_temp_c"].append(_aligned_targets(at, temp, horizons, tol))
        parts["target_power_w"].append(_aligned_targets(at, power, horizons, tol))
        parts["ma_temp_c"].append(_trailing_mean(at, temp, MOVING_AVERAGE_S))
        parts["ma_power_w"].append(_trailing_mean(at, power, MOVING_AVERAGE_S))
        parts["minute_mean_power_w"].append(
            _aligned_targets(at, _centred_mean(at, power, FUTURE_MINUTE_S), horizons, tol))
        if progress is not None:
            progress(n)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return FoldedHistory(horizons_s=horizons, server_ids=server_ids, **arrays)


def predict(folded: FoldedHistory, params: ForecasterParams) -> tuple[F, F, F, F, F, F]:
    """What :meth:`OnlineForecaster.forecast_values` gives on each folded row, vectorised.

    Returns ``(temp, temp_lo, temp_hi, power, power_lo, power_hi)``, each ``(rows, H)``.
    """
    from forecasting.online import OnlineForecaster

    f = OnlineForecaster(params)
    temp, pgpu = folded.phys_temp_c.copy(), folded.phys_pgpu_w.copy()
    tq: list[list[float]] = []
    pq: list[list[float]] = []
    for k, h in enumerate(folded.horizons_s):
        tc, pc, tqk, pqk = f._tables(h)
        if params.temp_coef or params.power_coef:
            temp[:, k] += folded.features @ np.asarray(tc)
            pgpu[:, k] += folded.features @ np.asarray(pc)
        tq.append(tqk)
        pq.append(pqk)
    pgpu = np.maximum(pgpu, 0.0)
    n = folded.num_gpus[:, None]
    power = n * pgpu + folded.base_w[:, None]
    tqa, pqa = np.asarray(tq), np.asarray(pq)  # (H, 2K)
    kt = np.minimum((folded.burst * (tqa.shape[1] // 2)).astype(int), tqa.shape[1] // 2 - 1)
    kp = np.minimum((folded.burst * (pqa.shape[1] // 2)).astype(int), pqa.shape[1] // 2 - 1)
    cols = np.arange(len(folded.horizons_s))[None, :]
    t_lo = np.minimum(temp, temp + tqa[cols, 2 * kt[:, None]])
    t_hi = np.maximum(temp, temp + tqa[cols, 2 * kt[:, None] + 1])
    p_lo = np.maximum(np.minimum(power, power + n * pqa[cols, 2 * kp[:, None]]), 0.0)
    p_hi = np.maximum(power, power + n * pqa[cols, 2 * kp[:, None] + 1])
    return temp, t_lo, t_hi, power, p_lo, p_hi


def score(folded: FoldedHistory, params: ForecasterParams) -> dict[str, Any]:
    """MAE/RMSE per horizon for the model, persistence and the moving average, and interval coverage."""
    temp, t_lo, t_hi, power, p_lo, p_hi = predict(folded, params)
    out: dict[str, Any] = {}
    covs = []
    for k, h in enumerate(folded.horizons_s):
        yt, yp = folded.target_temp_c[:, k], folded.target_power_w[:, k]
        ok = ~np.isnan(yt) & ~np.isnan(yp)
        if not ok.any():
            continue
        peak = folded.peak_w[ok]

        def mae(pred: F, y: F, scale: F | None = None, *, ok: npt.NDArray[np.bool_] = ok) -> float:
            err = np.abs(pred[ok] - y[ok])
            return float(np.mean(err / scale) if scale is not None else np.mean(err))

        def rmse(pred: F, y: F, scale: F | None = None, *, ok: npt.NDArray[np.bool_] = ok) -> float:
            err = pred[ok] - y[ok]
            if scale is not None:
                err = err / scale
            return float(np.sqrt(np.mean(err * err)))

        cov_t = float(np.mean((yt[ok] >= t_lo[ok, k]) & (yt[ok] <= t_hi[ok, k])))
        cov_p = float(np.mean((yp[ok] >= p_lo[ok, k]) & (yp[ok] <= p_hi[ok, k])))
        covs += [cov_t, cov_p]
        out[f"{h:g}"] = {
            "num_origins": int(ok.sum()),
            "gpu_temp_mae_c": mae(temp[:, k], yt),
            "gpu_temp_rmse_c": rmse(temp[:, k], yt),
            "gpu_temp_mae_persistence_c": mae(folded.temp_c, yt),
            "gpu_temp_rmse_persistence_c": rmse(folded.temp_c, yt),
            "gpu_temp_mae_moving_average_c": mae(folded.ma_temp_c, yt),
            "gpu_temp_rmse_moving_average_c": rmse(folded.ma_temp_c, yt),
            "power_mae_frac": mae(power[:, k], yp, peak),
            "power_rmse_frac": rmse(power[:, k], yp, peak),
            "power_mae_persistence_frac": mae(folded.power_w, yp, peak),
            "power_rmse_persistence_frac": rmse(folded.power_w, yp, peak),
            "power_mae_moving_average_frac": mae(folded.ma_power_w, yp, peak),
            "power_rmse_moving_average_frac": rmse(folded.ma_power_w, yp, peak),
            "power_mae_w": mae(power[:, k], yp),
            "power_mae_future_minute_mean_frac": mae(folded.minute_mean_power_w[:, k], yp, peak),
            "gpu_temp_mae_known_power_c": float(np.nanmean(np.abs(folded.known_power_temp_c[ok, k] - yt[ok]))),
            "gpu_temp_mae_known_level_c": float(np.nanmean(np.abs(folded.known_level_temp_c[ok, k] - yt[ok]))),
            "gpu_temp_mae_known_5min_level_c": float(np.nanmean(np.abs(folded.known_5min_level_temp_c[ok, k] - yt[ok]))),
            "gpu_temp_coverage_90": cov_t,
            "power_coverage_90": cov_p,
        }
        for regime, mask in (("bursty", folded.burst >= 0.5), ("smooth", folded.burst < 0.5)):
            sel = ok & mask
            row = out[f"{h:g}"]
            row[f"num_origins_{regime}"] = int(sel.sum())
            if sel.any():
                row[f"gpu_temp_mae_c_{regime}"] = mae(temp[:, k], yt, ok=sel)
                row[f"gpu_temp_mae_persistence_c_{regime}"] = mae(folded.temp_c, yt, ok=sel)
                row[f"power_mae_frac_{regime}"] = mae(power[:, k], yp, folded.peak_w[sel], ok=sel)
                row[f"power_mae_persistence_frac_{regime}"] = mae(folded.power_w, yp, folded.peak_w[sel], ok=sel)
                row[f"power_mae_future_minute_mean_frac_{regime}"] = mae(folded.minute_mean_power_w[:, k], yp,
                                                                         folded.peak_w[sel], ok=sel)
                for name, arr in (("known_level", folded.known_level_temp_c),
                                  ("known_5min_level", folded.known_5min_level_temp_c)):
                    row[f"gpu_temp_mae_{name}_c_{regime}"] = float(np.nanmean(np.abs(arr[sel, k] - yt[sel])))
    return {"horizons": out, "coverage_90": float(np.mean(covs)) if covs else float("nan")}


def rolling_origin(folded: FoldedHistory, base: ForecasterParams, *, num_folds: int = 3,
                   warmup_s: float = 300.0) -> dict[str, Any]:
    """Rolling-origin evaluation: train on all blocks before each test block, score the test blocks.

    Time (after ``warmup_s`` of filter warm-up) is cut into ``num_folds + 1`` equal
    blocks; fold ``k`` trains on blocks ``0..k-1`` (only origins whose targets end
    before block ``k`` starts) and tests on block ``k``. Scores are pooled over test
    blocks (the per-horizon figures are origin-weighted means). The physics model
    without corrections is scored on the same test rows as ``physics``.
    """
    from forecasting.train import fit_corrections

    t0 = float(folded.at_s.min()) + warmup_s
    t1 = float(folded.at_s.max())
    edges = np.linspace(t0, t1, num_folds + 2)
    horizon_max = max(folded.horizons_s)
    test_parts: list[tuple[FoldedHistory, ForecasterParams]] = []
    for k in range(1, num_folds + 1):
        train_mask = (folded.at_s >= t0) & (folded.at_s + horizon_max < edges[k])
        test_mask = (folded.at_s >= edges[k]) & (folded.at_s < edges[k + 1])
        trained = fit_corrections(folded.subset(train_mask), base, version=f"fold{k}")
        test_parts.append((folded.subset(test_mask), trained))
    return {
        "model": _pooled([score(f, p) for f, p in test_parts], [len(f) for f, _ in test_parts]),
        "physics": _pooled([score(f, base) for f, _ in test_parts], [len(f) for f, _ in test_parts]),
        "folds": num_folds,
    }


def _pooled(scores: list[dict[str, Any]], weights: list[int]) -> dict[str, Any]:
    """Origin-weighted mean of per-fold scores (RMSE pooled as the root of the weighted mean square)."""
    horizons: dict[str, Any] = {}
    keys = {h for s in scores for h in s["horizons"]}
    for h in sorted(keys, key=float):
        rows = [(s["horizons"][h], w) for s, w in zip(scores, weights, strict=True) if h in s["horizons"]]
        total = sum(r["num_origins"] for r, _ in rows)
        merged: dict[str, Any] = {"num_origins": total}
        names = {name for r, _ in rows for name in r}
        for name in sorted(names):
            if name.startswith("num_origins"):
                merged[name] = sum(r.get(name, 0) for r, _ in rows)
                continue
            weight = next((f"num_origins_{g}" for g in ("bursty", "smooth") if name.endswith(f"_{g}")), "num_origins")
            vals = [(r[name], r[weight]) for r, _ in rows if name in r]
            wsum = sum(n for _, n in vals)
            if "rmse" in name:
                merged[name] = math.sqrt(sum(v * v * n for v, n in vals) / wsum)
            else:
                merged[name] = sum(v * n for v, n in vals) / wsum
        horizons[h] = merged
    covs = [v for hz in horizons.values() for k, v in hz.items() if k.endswith("coverage_90")]
    return {"horizons": horizons, "coverage_90": float(np.mean(covs)) if covs else float("nan")}
