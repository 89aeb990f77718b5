"""Forecasting: features, thermal/power/seasonal models, online corrections, backtesting and the registry.

Holds:
    state.py      Observation, ForecasterParams, ServerModelState (plain floats, bytes round trip)
    features.py   the one feature pipeline (filters + per-server RLS), shared offline and online
    online.py     OnlineForecaster: ``update`` per sample, ``forecast`` per tick (the stream worker's model)
    registry.py   versioned artifacts, promotion, verified loading (``load_forecaster``)
    announce.py   the model topic: announce a promoted version, ``ModelFollower`` for workers
    history.py    history as DataFrames: ``load_history(store, start, end)``, files, the simulator
    folded.py     FoldedHistory: history folded through the pipeline (what train fits, backtest scores)
    backtest.py   rolling-origin evaluation against persistence and moving average, interval coverage
    train.py      the global model: per-horizon residual corrections and residual-quantile intervals
    seasonal.py   statsmodels exponential smoothing for inlet per zone and load per service
    workflow.py   ``run_backtest`` / ``train_version``: what the CLI and the benchmark call
    report.py     the backtest plot and the issue's target check

Does not hold: Kafka I/O beyond announcing on / listening to the model topic (through
an injected ``KafkaClients``), or any decision logic. Imports ``simulator`` (simulated
history), ``foundation`` and ``contracts``; never streams, controller or the shell.

Physics default (used when the registry has no promoted version): hottest-GPU
temperature follows a first-order lag, ``T(t+h) = T_ss + (T(t) - T_ss) * exp(-h/tau)``
with ``T_ss = inlet + b + R * p_gpu`` (``tau`` 30 s, ``R`` 10 °C per 100 W per GPU,
``b`` 5 °C), where ``R`` and ``b`` are corrected per server by recursive least
squares on the lag-filtered power. Per-GPU power follows ``p(t) = L + D*exp(-t/60 s)``:
smooth (VM-like) load stays at its last value, bursty (serving) load reverts from its
5-second level to its 2-minute mean, blended by the server's measured power jitter;
server power adds the learned non-GPU power. Training (``tapas train``) replaces these
constants' corrections: per-horizon linear residual corrections over the shared
features and residual quantiles per horizon and burstiness regime.

Trust boundary: the registry directory is operator-controlled and trusted for
*location* only. Artifacts are JSON (and LightGBM text models, if any): nothing is
unpickled, so an artifact can at worst carry wrong numbers, never run code. Every
load recomputes the artifact's sha256 and refuses a mismatch with its metadata, the
promotion record or the announcement; an announced ``artifact_path`` must resolve
inside the worker's own ``registry_dir`` (URLs and ``..`` escapes are refused).
"""
