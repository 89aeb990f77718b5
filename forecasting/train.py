"""Offline training of the global model: per-horizon residual corrections and calibrated intervals.

The global model is linear in the shared features (scikit-learn ``Ridge``, or a
least-absolute-deviation fit by reweighted ridge, whichever validates better; one
per horizon, target and load type: smooth VM load and bursty serving load are
fitted apart) on top of the physics forecast, so the stream worker evaluates
it with a dot product per horizon. The per-server online part (RLS on the thermal
offset/resistance and the load→power map) runs inside the features. Interval
bounds, per bin of burstiness (smooth VM load ... serving bursts), are the 5th/95th
percentiles of the corrected residuals on the latest
``calibration_frac`` of the training range, fitted after the corrections were fitted
on the earlier part (so they are out-of-sample), then the corrections are refit on
everything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import Ridge

from forecasting.features import FEATURE_NAMES
from forecasting.folded import FoldedHistory
from forecasting.state import ForecasterParams

F = npt.NDArray[np.float64]
log = logging.getLogger(__name__)

#: Horizons ``tapas train`` fits, seconds (the worker interpolates between them).
TRAIN_HORIZONS_S: tuple[float, ...] = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0)


def _ridge(x: F, y: F, shrinkage: float) -> F:
    """Ridge coefficients with a penalty proportional to the rows (shrinkage toward the physics model)."""
    model = Ridge(alpha=max(shrinkage * len(y), 1e-6), fit_intercept=False)
    model.fit(x, y)
    return np.asarray(model.coef_, dtype=np.float64)


#: Burstiness bins the interval quantiles are fitted in (smooth VM load ... serving bursts).
NUM_QUANTILE_BINS = 4


def _regime_quantiles(resid: F, burst: F, level: tuple[float, float]) -> list[float]:
    """``[lo_0, hi_0, ..., lo_K-1, hi_K-1]`` residual quantiles per burstiness bin (pooled where a bin is thin)."""
    pooled = [float(np.quantile(resid, level[0])), float(np.quantile(resid, level[1]))]
    bins = np.minimum((burst * NUM_QUANTILE_BINS).astype(int), NUM_QUANTILE_BINS - 1)
    out: list[float] = []
    for k in range(NUM_QUANTILE_BINS):
        mask = bins == k
        if mask.sum() >= 50:
            out += [float(np.quantile(resid[mask], level[0])), float(np.quantile(resid[mask], level[1]))]
        else:
            out += pooled
    return out


def _least_absolute(x: F, y: F, shrinkage: float, iterations: int = 6) -> F:
    """Median (L1) regression by iteratively reweighted ridge: MAE-optimal for skewed, bimodal errors.

    Bursty serving power is bimodal (idle or near TDP within a second); the point
    that minimises absolute error is its conditional median, not its mean.
    """
    w = np.ones(len(y))
    coef = np.zeros(x.shape[1])
    for _ in range(iterations):
        model = Ridge(alpha=max(shrinkage * len(y), 1e-6), fit_intercept=False)
        model.fit(x, y, sample_weight=w)
        coef = np.asarray(model.coef_, dtype=np.float64)
        r = np.abs(y - x @ coef)
        w = 1.0 / np.maximum(r, float(np.quantile(r, 0.05)) + 1e-6)
        w = w / w.mean()
    return coef


#: Candidate fitters for a correction; the one with the lowest calibration MAE is kept.
FITTERS: dict[str, Callable[[F, F, float], F]] = {"ridge": _ridge, "least_absolute": _least_absolute}


def _validated(x: F, r: F, early: npt.NDArray[np.bool_], burst: F, shrinkage: float,
                      level: tuple[float, float]) -> tuple[list[float], list[float], str]:
    """Coefficients (all rows), interval quantiles (late rows) and the chosen fitters, for one target/horizon.

    The smooth and the bursty halves of the features are fitted apart, each only on
    the rows of its own load type, so the large errors of serving bursts do not
    steer the corrections of smooth VM load. For each half every fitter in
    ``FITTERS`` is fitted on the early rows and scored by mean absolute error on the
    late rows, beside no correction (the physics forecast); the best is refit on all
    rows of its type. Quantiles come from the late-row residuals of the early fits,
    so they are out of sample.
    """
    m = x.shape[1] // 2
    late = ~early
    coef_early = np.zeros(x.shape[1])
    coef_final = np.zeros(x.shape[1])
    names = []
    for block, rows in ((slice(0, m), burst < 0.5), (slice(m, 2 * m), burst >= 0.5)):
        fit_rows, val_rows = early & rows, late & rows
        if fit_rows.sum() < 2 * m or val_rows.sum() < 20:
            names.append("none")
            continue
        xb = x[:, block]
        best_name, best_mae = "none", float(np.mean(np.abs(r[val_rows])))
        for name, fit in FITTERS.items():
            c = fit(xb[fit_rows], r[fit_rows], shrinkage)
            mae = float(np.mean(np.abs(r[val_rows] - xb[val_rows] @ c)))
            if mae < best_mae:
                best_name, best_mae = name, mae
                coef_early[block] = c
        if best_name != "none":
            coef_final[block] = FITTERS[best_name](xb[rows], r[rows], shrinkage)
        names.append(best_name)
    resid = r[late] - x[late] @ coef_early
    return coef_final.tolist(), _regime_quantiles(resid, burst[late], level), "/".join(names)


def fit_corrections(folded: FoldedHistory, base: ForecasterParams, *, version: str,
                    calibration_frac: float = 0.3, shrinkage: float = 0.1, interval_level: float = 0.9,
                    metadata: dict[str, Any] | None = None) -> ForecasterParams:
    """Fit per-horizon residual corrections and residual quantiles on folded history.

    Args:
        folded: the output of :func:`forecasting.backtest.fold_history` for the training range.
        base: the parameters the history was folded with (physics constants kept as they are,
            since the features depend on them).
        version: the new version's name.
        calibration_frac: latest share of the range whose residuals set the interval bounds.
        shrinkage: ridge penalty per training row (features are O(1); larger = closer to physics).
        interval_level: nominal central coverage of the interval.
        metadata: provenance stored with the parameters.
    """
    lo_q, hi_q = (1.0 - interval_level) / 2.0, 1.0 - (1.0 - interval_level) / 2.0
    temp_coef: dict[str, list[float]] = {}
    power_coef: dict[str, list[float]] = {}
    temp_q: dict[str, list[float]] = {}
    power_q: dict[str, list[float]] = {}
    n = folded.num_gpus
    chosen: dict[str, str] = {}
    for k, h in enumerate(folded.horizons_s):
        yt, yp = folded.target_temp_c[:, k], folded.target_power_w[:, k]
        ok = ~np.isnan(yt) & ~np.isnan(yp)
        if ok.sum() < 4 * len(FEATURE_NAMES):
            log.warning("event=horizon_skipped horizon_s=%g reason=too_little_history rows=%d", h, int(ok.sum()))
            continue
        x = folded.features[ok]
        rt = yt[ok] - folded.phys_temp_c[ok, k]
        rp = (yp[ok] - folded.base_w[ok]) / n[ok] - folded.phys_pgpu_w[ok, k]
        cut = float(np.quantile(folded.at_s[ok], 1.0 - calibration_frac))
        early = folded.at_s[ok] < cut
        if early.sum() < 2 * len(FEATURE_NAMES) or (~early).sum() < 20:
            log.warning("event=horizon_skipped horizon_s=%g reason=too_little_history rows=%d", h, int(ok.sum()))
            continue
        key = f"{h:g}"
        burst = folded.burst[ok]
        temp_coef[key], temp_q[key], chosen[f"temp@{key}s"] = _validated(x, rt, early, burst, shrinkage,
                                                                         (lo_q, hi_q))
        power_coef[key], power_q[key], chosen[f"power@{key}s"] = _validated(x, rp, early, burst, shrinkage,
                                                                            (lo_q, hi_q))
    if not temp_coef:
        raise ValueError(f"too little history to train any horizon of {list(folded.horizons_s)} "
                         f"({len(folded)} rows); give a longer history")
    return replace(base, version=version, horizons_s=tuple(folded.horizons_s), temp_coef=temp_coef,
                   power_coef=power_coef, temp_q=temp_q, power_q=power_q,
                   interval_level=interval_level,
                   metadata={**(metadata or {}), "corrections": chosen})
