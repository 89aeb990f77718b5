"""The folded history: per-origin arrays from running history through the online pipeline.

:func:`forecasting.backtest.fold_history` fills a :class:`FoldedHistory`; :mod:`forecasting.train`
fits corrections on one and :mod:`forecasting.backtest` scores one. It lives in its own module so
that training and backtesting both import it and neither imports the other upward (backtest calls
train; train needs only this record).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

F = npt.NDArray[np.float64]


@dataclass
class FoldedHistory:
    """Per-origin arrays from folding history through the online pipeline (rows sorted by server, time).

    Attributes:
        horizons_s: the horizons, seconds.
        server: server index per row.
        at_s: origin time per row.
        temp_c: observed hottest-GPU temperature at the origin.
        power_w: observed server power at the origin (GPU power when the server's is unknown).
        peak_w: the server's peak power.
        num_gpus: GPUs per server.
        base_w: learned non-GPU power at the origin.
        burst: the server's burstiness (0 smooth .. 1 bursty) at the origin.
        known_power_temp_c: ``(rows, H)`` the thermal model's temperature at origin + h when fed the
            power and inlet that actually followed (judges the thermal model apart from the load forecast).
        features: ``(rows, NUM_FEATURES)`` feature vectors.
        phys_temp_c: ``(rows, H)`` physics temperature forecast.
        phys_pgpu_w: ``(rows, H)`` physics per-GPU power forecast.
        target_temp_c: ``(rows, H)`` observed temperature at origin + h (NaN when not observed).
        target_power_w: ``(rows, H)`` observed server power at origin + h.
        ma_temp_c: moving average of temperature over ``backtest.MOVING_AVERAGE_S`` before the origin.
        ma_power_w: same for power.
        known_level_temp_c: ``(rows, H)`` the same lag model fed the power that followed smoothed over
            ``backtest.FUTURE_MINUTE_S`` (centred): its level and slow changes known, its second-to-second
            fluctuation not — how close a perfect forecast of the load level could get.
        known_5min_level_temp_c: ``(rows, H)`` the same with the power smoothed over ``backtest.FUTURE_5MIN_S``
            (centred): an oracle that knows the load's 5-minute level ahead (beyond any causal forecast of
            Poisson-like serving load) but not its minute-to-minute swings.
        minute_mean_power_w: ``(rows, H)`` the actual power's mean over the minute centred on origin + h
            (``backtest.FUTURE_MINUTE_S``): what is left to forecast once that minute's mean is known exactly is the
            second-to-second fluctuation inside it, so its MAE shows how much of the error no forecast of the
            load's level can remove (a reference, not a strict bound).
        server_ids: server id per server index.
    """

    horizons_s: tuple[float, ...]
    server: npt.NDArray[np.int64]
    at_s: F
    temp_c: F
    power_w: F
    peak_w: F
    num_gpus: F
    base_w: F
    burst: F
    known_power_temp_c: F
    features: F
    phys_temp_c: F
    phys_pgpu_w: F
    target_temp_c: F
    target_power_w: F
    ma_temp_c: F
    ma_power_w: F
    known_level_temp_c: F
    known_5min_level_temp_c: F
    minute_mean_power_w: F
    server_ids: list[str] = field(default_factory=list)

    def subset(self, mask: npt.NDArray[np.bool_]) -> FoldedHistory:
        """The rows where ``mask`` holds."""
        kw: dict[str, Any] = {name: getattr(self, name)[mask] for name in ROW_ARRAYS}
        return FoldedHistory(horizons_s=self.horizons_s, server_ids=self.server_ids, **kw)

    def with_horizons(self, horizons_s: Sequence[float]) -> FoldedHistory:
        """The same rows restricted to some of the folded horizons."""
        idx = [self.horizons_s.index(float(h)) for h in horizons_s]
        kw: dict[str, Any] = {name: getattr(self, name)[:, idx] if name in PER_HORIZON_ARRAYS
                              else getattr(self, name) for name in ROW_ARRAYS}
        return FoldedHistory(horizons_s=tuple(float(h) for h in horizons_s), server_ids=self.server_ids, **kw)

    def __len__(self) -> int:
        return len(self.at_s)


#: The per-row array fields of :class:`FoldedHistory` (everything but ``horizons_s`` and ``server_ids``).
ROW_ARRAYS: tuple[str, ...] = tuple(f.name for f in fields(FoldedHistory) if f.name not in ("horizons_s", "server_ids"))
#: Those with one column per horizon, ``(rows, H)``.
PER_HORIZON_ARRAYS = frozenset({"known_power_temp_c", "phys_temp_c", "phys_pgpu_w", "target_temp_c", "target_power_w",
                                "known_level_temp_c", "known_5min_level_temp_c", "minute_mean_power_w"})
