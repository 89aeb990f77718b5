"""The online forecaster the stream worker runs per server: ``update`` per sample, ``forecast`` per tick.

The worker keeps one :class:`ServerModelState` per server (bytes in a Faust table
through ``to_bytes``/``from_bytes``), folds each joined :class:`Observation` in with
:meth:`OnlineForecaster.update`, and publishes :meth:`OnlineForecaster.forecast`.
Both are pure and cost tens of microseconds (plain floats).

Examples:
    >>> f = OnlineForecaster()
    >>> obs = Observation("s1", 0.0, 60.0, 8 * 400.0, 6000.0, 24.0, 80.0, 5000.0, 1500.0, 16.0,
    ...                   None, "llama2-70b-tp8", 8, 87.0)
    >>> st = f.update(f.new_state(), obs)
    >>> [round(h.horizon_s) for h in f.forecast(st, obs, [10, 60])]
    [10, 60]
    >>> ServerModelState.from_bytes(st.to_bytes()) == st
    True
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from contracts.messages import HorizonForecast
from forecasting.features import (
    NUM_FEATURES,
    advance_state,
    burstiness,
    feature_vector,
    initial_state,
    physics_forecast,
)
from forecasting.state import ForecasterParams, Observation, ServerModelState

__all__ = ["ForecastValues", "OnlineForecaster", "Observation", "ServerModelState", "ForecasterParams"]

#: (gpu_temp_c, gpu_temp_lo_c, gpu_temp_hi_c, power_w, power_lo_w, power_hi_w) at one horizon.
ForecastValues = tuple[float, float, float, float, float, float]


def _interp(horizons: Sequence[float], table: dict[str, list[float]], h: float, width: int) -> list[float]:
    """Piecewise-linear interpolation of a per-horizon table over ``h`` (clamped at the ends)."""
    keyed = [(hz, table.get(_hkey(hz))) for hz in horizons]
    pts = [(hz, v) for hz, v in keyed if v is not None]
    if not pts:
        return [0.0] * width
    xs = [p[0] for p in pts]
    if h <= xs[0]:
        return list(pts[0][1])
    if h >= xs[-1]:
        return list(pts[-1][1])
    i = bisect.bisect_right(xs, h)
    (h0, v0), (h1, v1) = pts[i - 1], pts[i]
    w = (h - h0) / (h1 - h0)
    return [a + w * (b - a) for a, b in zip(v0, v1, strict=True)]


def _quantile_bins(table: dict[str, list[float]]) -> int:
    """Burstiness bins of a quantile table (rows are ``[lo_0, hi_0, lo_1, hi_1, ...]``)."""
    widths = {len(v) for v in table.values()}
    if len(widths) > 1 or any(w % 2 for w in widths):
        raise ValueError(f"quantile table rows must all hold 2*K values, got lengths {sorted(widths)}")
    return max(widths, default=2) // 2


def quantile_bin(g: float, num_bins: int) -> int:
    """Index of the burstiness bin ``g`` (0..1) falls into."""
    return min(int(g * num_bins), num_bins - 1)


def _hkey(h: float) -> str:
    """Table key of a horizon: '60' for 60.0, '2.5' for 2.5."""
    return f"{h:g}"


class OnlineForecaster:
    """Thermal and power forecaster for one model version (parameters in :class:`ForecasterParams`).

    Args:
        params: the version's parameters; the default is the documented physics model.
    """

    def __init__(self, params: ForecasterParams | None = None) -> None:
        self.params = params or ForecasterParams()
        self.version: str = self.params.version
        self._by_horizon: dict[float, tuple[list[float], list[float], list[float], list[float]]] = {}

    def __repr__(self) -> str:
        return f"OnlineForecaster(version={self.version!r})"

    def new_state(self) -> ServerModelState:
        """State of a server never seen: the version's priors."""
        return initial_state(self.params)

    def update(self, state: ServerModelState, obs: Observation) -> ServerModelState:
        """Fold ``obs`` into ``state``; returns the new state (the argument is not changed)."""
        return advance_state(self.params, state, obs)

    def _tables(self, h: float) -> tuple[list[float], list[float], list[float], list[float]]:
        cached = self._by_horizon.get(h)
        if cached is None:
            p = self.params
            cached = (
                _interp(p.horizons_s, p.temp_coef, h, NUM_FEATURES),
                _interp(p.horizons_s, p.power_coef, h, NUM_FEATURES),
                _interp(p.horizons_s, p.temp_q, h, 2 * _quantile_bins(p.temp_q)),
                _interp(p.horizons_s, p.power_q, h, 2 * _quantile_bins(p.power_q)),
            )
            self._by_horizon[h] = cached
        return cached

    def forecast_values(self, state: ServerModelState, obs: Observation,
                        horizons_s: Sequence[float]) -> list[ForecastValues]:
        """Point forecasts and interval bounds as plain tuples (the fast path used by backtests)."""
        if not state.started:
            state = self.update(state, obs)
        p = self.params
        n = max(obs.num_gpus, 1)
        x: list[float] | None = None
        g = burstiness(p, state)
        out: list[ForecastValues] = []
        for h, (temp, pgpu) in zip(horizons_s, physics_forecast(p, state, tuple(horizons_s)), strict=True):
            tc, pc, tq, pq = self._tables(float(h))
            if p.temp_coef or p.power_coef:
                if x is None:
                    x = feature_vector(p, state, obs)
                temp += sum(a * b for a, b in zip(tc, x, strict=True))
                pgpu += sum(a * b for a, b in zip(pc, x, strict=True))
            pgpu = max(pgpu, 0.0)
            power = n * pgpu + state.base_w
            kt, kp = 2 * quantile_bin(g, len(tq) // 2), 2 * quantile_bin(g, len(pq) // 2)
            tq_lo, tq_hi = tq[kt], tq[kt + 1]
            pq_lo, pq_hi = pq[kp], pq[kp + 1]
            t_lo, t_hi = min(temp, temp + tq_lo), max(temp, temp + tq_hi)
            p_lo = max(min(power, power + n * pq_lo), 0.0)
            p_hi = max(power, power + n * pq_hi)
            out.append((temp, t_lo, t_hi, power, p_lo, p_hi))
        return out

    def forecast(self, state: ServerModelState, obs: Observation,
                 horizons_s: Sequence[float]) -> list[HorizonForecast]:
        """Forecast the hottest GPU and server power at each horizon, with the version's interval."""
        return [
            HorizonForecast(horizon_s=float(h), gpu_temp_c=v[0], gpu_temp_lo_c=v[1], gpu_temp_hi_c=v[2],
                            power_w=v[3], power_lo_w=v[4], power_hi_w=v[5])
            for h, v in zip(horizons_s, self.forecast_values(state, obs, horizons_s), strict=True)
        ]
