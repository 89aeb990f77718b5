"""The history-store interface every store implements (``tapas.bootstrap.open_store`` picks one from settings).

A store keeps time series of raw telemetry (down-sampled) and forecasts. The
interface is deliberately small (write a batch of points, query one measurement
over a time range into a DataFrame, close) so the embedded SQLite store and the
InfluxDB 2.x store pass the same contract suite (``tests/integration/test_store_contract.py``).

Measurements written by the stream worker (tags / fields):

* ``gpu``: tags ``server_id``; fields ``hottest_gpu_temp_c``, ``gpu_power_w``,
  ``mean_gpu_util_pct``, ``prefill_tokens_per_s``, ``decode_tokens_per_s``, ``batch_size``,
  ``frequency_cap_mhz`` (when known), ``num_gpus``, ``slowdown_temp_c``, ``hottest_gpu_power_w`` (when known).
* ``inlet``: tags ``server_id``; fields ``inlet_temp_c``, ``chassis_power_w`` (when known).
* ``pdu``: tags ``pdu_id``; fields ``power_w``, ``current_a`` (when known).
* ``forecast``: tags ``server_id``, ``horizon_s``; fields ``gpu_temp_c``, ``gpu_temp_lo_c``,
  ``gpu_temp_hi_c``, ``power_w``, ``power_lo_w``, ``power_hi_w``, ``thermal_headroom_c``,
  ``power_headroom_w``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


#: Measurement names the worker writes (see the module docstring for their tags and fields).
MEASUREMENTS: tuple[str, ...] = ("gpu", "inlet", "pdu", "forecast")


@dataclass(frozen=True)
class Point:
    """One timestamped row of a measurement.

    Attributes:
        measurement: series name (``gpu``, ``inlet``, ``pdu``, ``forecast``, ...).
        tags: indexed string labels (``server_id``...); their keys must not collide with field keys.
        fields: numeric values, units in their names.
        at: when the values hold; must be timezone-aware (UTC is written).
    """

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, float]
    at: datetime = field()

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError(f"Point.at must be timezone-aware (measurement {self.measurement!r})")
        clash = set(self.tags) & set(self.fields)
        if clash:
            raise ValueError(f"Point {self.measurement!r}: keys {sorted(clash)} are both tags and fields")


@runtime_checkable
class HistoryStore(Protocol):
    """What every history store does.

    ``query`` returns one row per written point in time order, with columns ``at``
    (tz-aware UTC ``datetime64``), then every tag key, then every field key seen in
    the range; a field missing on a row is NaN. ``tags`` filters by equality.
    """

    def write(self, points: Sequence[Point]) -> None:
        """Persist ``points``; raises :class:`contracts.StoreError` when the store refuses."""
        ...

    def query(self, measurement: str, start: datetime, end: datetime,
              tags: Mapping[str, str] | None = None) -> pd.DataFrame:
        """Points of ``measurement`` with ``start <= at < end`` (and matching ``tags``)."""
        ...

    def close(self) -> None:
        """Flush and release connections."""
        ...
