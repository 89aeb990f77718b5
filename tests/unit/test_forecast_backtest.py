"""Backtesting and training: no train/serve skew, honest baselines, calibrated intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecasting.backtest import fold_history, predict, rolling_origin, score
from forecasting.online import OnlineForecaster
from forecasting.state import ForecasterParams
from forecasting.train import fit_corrections


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    """45 minutes of a 6-server cluster from the simulator (serving and VM load, inlet drift)."""
    from forecasting.history import simulated_history

    return simulated_history(6, 0.75, seed=5)


@pytest.fixture(scope="module")
def folded(history: pd.DataFrame):  # type: ignore[no-untyped-def]
    return fold_history(history, ForecasterParams(), (10.0, 60.0, 300.0))


def test_offline_predictions_equal_the_online_forecaster(history: pd.DataFrame, folded) -> None:  # type: ignore[no-untyped-def]
    """The vectorised backtest path and the worker's per-sample path give the same numbers."""
    trained = fit_corrections(folded.subset(folded.server < 3), ForecasterParams(), version="t1")
    assert trained.temp_coef and trained.power_coef
    temp, t_lo, t_hi, power, p_lo, p_hi = predict(folded, trained)
    f = OnlineForecaster(trained)
    from forecasting.backtest import _observations

    g = history[history.server_id == folded.server_ids[1]].sort_values("at_s")
    st = f.new_state()
    rows = np.flatnonzero(folded.server == 1)
    for i, o in enumerate(_observations(g)[:400]):
        st = f.update(st, o)
        if i % 97 == 0:
            online = f.forecast_values(st, o, folded.horizons_s)
            r = rows[i]
            np.testing.assert_allclose([v[0] for v in online], temp[r], rtol=1e-9)
            np.testing.assert_allclose([v[3] for v in online], power[r], rtol=1e-9)
            np.testing.assert_allclose([v[2] for v in online], t_hi[r], rtol=1e-9)
            np.testing.assert_allclose([v[4] for v in online], p_lo[r], rtol=1e-9)


def test_persistence_baseline_and_targets_are_aligned() -> None:
    """On a hand-made ramp the persistence error at horizon h is exactly the ramp over h."""
    n = 400
    df = pd.DataFrame({
        "server_id": "s1", "at_s": np.arange(n, dtype=float), "hottest_gpu_temp_c": 40 + 0.01 * np.arange(n),
        "gpu_power_w": 2000.0 + np.arange(n), "server_power_w": 3000.0 + np.arange(n), "inlet_temp_c": 24.0,
        "mean_gpu_util_pct": 50.0, "prefill_tokens_per_s": 1000.0, "decode_tokens_per_s": 500.0,
        "batch_size": 8.0, "frequency_cap_mhz": np.nan, "config_id": "c", "num_gpus": 8,
        "slowdown_temp_c": 87.0, "server_peak_w": 5000.0})
    fh = fold_history(df, ForecasterParams(), (10.0, 60.0))
    s = score(fh, ForecasterParams())["horizons"]
    assert s["10"]["gpu_temp_mae_persistence_c"] == pytest.approx(0.1)
    assert s["60"]["power_mae_persistence_frac"] == pytest.approx(60.0 / 5000.0)
    assert s["10"]["num_origins"] == n - 10


def test_future_minute_mean_reference_is_the_fluctuation_a_known_load_level_leaves() -> None:
    """Power alternating ±400 W each second around a level: knowing each minute's mean leaves exactly 400 W."""
    n = 600
    power = 3000.0 + 400.0 * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    df = pd.DataFrame({
        "server_id": "s1", "at_s": np.arange(n, dtype=float), "hottest_gpu_temp_c": 60.0,
        "gpu_power_w": power - 1000.0, "server_power_w": power, "inlet_temp_c": 24.0,
        "mean_gpu_util_pct": 50.0, "prefill_tokens_per_s": 1000.0, "decode_tokens_per_s": 500.0,
        "batch_size": 8.0, "frequency_cap_mhz": np.nan, "config_id": "c", "num_gpus": 8,
        "slowdown_temp_c": 87.0, "server_peak_w": 5000.0})
    fh = fold_history(df, ForecasterParams(), (60.0,))
    row = score(fh, ForecasterParams())["horizons"]["60"]
    # the centred 61-sample window holds 31 of one sign and 30 of the other: its mean is within 400/61 W of 3000
    assert row["power_mae_future_minute_mean_frac"] == pytest.approx(400.0 / 5000.0, abs=400.0 / 61 / 5000.0 + 1e-9)
    assert row["power_mae_persistence_frac"] == pytest.approx(0.0)  # even horizon: same phase


def test_rolling_origin_reports_baselines_and_calibrated_coverage(folded) -> None:  # type: ignore[no-untyped-def]
    out = rolling_origin(folded, ForecasterParams(), num_folds=2, warmup_s=120.0)
    for name in ("model", "physics"):
        for h in ("10", "60", "300"):
            row = out[name]["horizons"][h]
            for key in ("gpu_temp_mae_c", "gpu_temp_mae_persistence_c", "power_mae_frac",
                        "power_mae_persistence_frac", "gpu_temp_mae_moving_average_c"):
                assert np.isfinite(row[key]) and row[key] >= 0
    # residual-quantile intervals fitted out of sample land near their nominal 90 %
    assert 0.75 <= out["model"]["coverage_90"] <= 0.98
    # fed the power that actually followed, the learned lag model tracks the simulator's GPUs closely
    assert out["model"]["horizons"]["60"]["gpu_temp_mae_known_power_c"] < 0.5
    # knowing only the future power's minute-smoothed level leaves more error than knowing every second of it
    h60 = out["model"]["horizons"]["60"]
    assert h60["gpu_temp_mae_known_power_c"] < h60["gpu_temp_mae_known_level_c"] < h60["gpu_temp_mae_persistence_c"]


def test_seasonal_ets_beats_persistence_on_a_drifting_inlet() -> None:
    """A zone whose inlet drifts with the time of day is forecast better than by its last value."""
    from forecasting.seasonal import backtest_aggregates

    t = np.arange(240) * 30.0
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"z1": 22 + 2 * np.sin(2 * np.pi * t / 7200) + 0.05 * rng.standard_normal(240)})
    out = backtest_aggregates(table, step_s=30.0, num_origins=6)
    assert out["300"]["mae"] < 0.7 * out["300"]["mae_persistence"]


def test_forecast_aggregates_per_zone_and_service(history: pd.DataFrame) -> None:
    """Every cooling zone and service gets a finite forecast at each horizon."""
    from forecasting.seasonal import forecast_aggregates

    out = forecast_aggregates(history, horizons_s=(300.0, 900.0))
    zones = set(history["zone_id"])
    inlet = out[out.kind == "inlet_per_zone_c"]
    assert set(inlet.group) == zones and len(inlet) == 2 * len(zones)
    assert np.isfinite(out.forecast).all()
    assert (inlet.forecast - inlet["last"]).abs().max() < 5.0  # minutes ahead, inlet does not jump
