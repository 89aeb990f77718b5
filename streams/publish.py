"""Forecast messages as the worker publishes them: what each figure means, and fast serialisation.

Meaning (the contract docstrings in ``contracts/messages.py`` say the same; this is
what downstream schedulers rely on):

* ``ServerForecast.horizons[h]``: the hottest GPU of the server and the whole
  server's power ``horizon_s`` seconds after ``based_on_sample_at``, with the central
  ``interval_level`` (90 %) interval ``[*_lo, *_hi]`` of the model version
  ``model_version``.
* ``thermal_headroom_c`` = ``slowdown_temp_c`` − ``gpu_temp_hi_c`` at the shortest
  horizon: how many °C remain before the GPUs' own thermal slowdown, pessimistically.
* ``power_headroom_w`` = the smallest of (server nameplate − ``power_hi_w`` at the
  shortest horizon), the server's share of its PDU's remaining budget and its share
  of its row's remaining budget (shares by nameplate; remaining = limit − latest
  measured PDU/row power). Negative means a crossing is predicted.
* ``DomainForecast`` (rack, row, pdu, zone): ``power_w`` is the measured PDU power
  (sum over the row's PDUs) when fresh, else the sum of its servers' latest power;
  ``power_forecast_w``/``power_forecast_hi_w`` per horizon are the sums of its
  servers' point forecasts and upper bounds, shifted by (measured − server sum) so
  unmetered loads are carried forward. Summing upper bounds is conservative (it
  assumes the servers' errors move together). Zones report ``max_inlet_temp_c``
  against ``inlet_limit_c`` and use cooling capacity as ``power_limit_w``.

The server forecast is serialised by hand (about five times faster than building
the pydantic model); a unit test decodes it with the contract to keep it honest.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from contracts.messages import SCHEMA_VERSION

#: (horizon_s, gpu_temp_c, lo, hi, power_w, lo, hi) — one horizon of a server forecast.
HorizonValues = tuple[float, float, float, float, float, float, float]


def iso_utc(at_s: float) -> str:
    """Epoch seconds as the ISO-8601 UTC string used on the wire.

    Examples:
        >>> iso_utc(1767225600.25)
        '2026-01-01T00:00:00.250000Z'
    """
    whole = math.floor(at_s)
    micros = int(round((at_s - whole) * 1e6))
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    prefix = _ISO_CACHE.get(whole)
    if prefix is None:
        if len(_ISO_CACHE) > 4096:
            _ISO_CACHE.clear()
        prefix = _ISO_CACHE[whole] = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{prefix}{micros:06d}Z"


_ISO_CACHE: dict[int, str] = {}


@dataclass(frozen=True, slots=True)
class ServerPlace:
    """Where a server sits and what limits apply to it (from the topology; ``None`` ids when unknown)."""

    rack_id: str | None
    row_id: str | None
    pdu_id: str | None
    zone_id: str | None
    nameplate_w: float
    pdu_weight: float
    row_weight: float


@functools.lru_cache(maxsize=65536)
def _opt_str(x: str | None) -> str:
    """JSON for an optional id; cached because ids repeat every tick (``json.dumps`` is ~2 us a call)."""
    return "null" if x is None else json.dumps(x)


#: Numbers go out with three decimals (m°C, mW): finer than any sensor, and one ``%`` format of
#: a whole message costs a quarter of ``repr`` per float, which was a tenth of the worker's time.
_HORIZON = ('{"horizon_s":%.3f,"gpu_temp_c":%.3f,"gpu_temp_lo_c":%.3f,"gpu_temp_hi_c":%.3f,'
            '"power_w":%.3f,"power_lo_w":%.3f,"power_hi_w":%.3f}')
_FORECAST = (
    '{"schema_version":"' + SCHEMA_VERSION + '","kind":"server_forecast","server_id":%s,'
    '"issued_at":"%s","based_on_sample_at":"%s","model_version":%s,"interval_level":%.3f,'
    '"gpu_temp_c":%.3f,"power_w":%.3f,"inlet_temp_c":%s,"slowdown_temp_c":%.3f,"thermal_headroom_c":%.3f,'
    '"power_headroom_w":%.3f,"horizons":[%s],"rack_id":%s,"row_id":%s,"pdu_id":%s,"zone_id":%s}')


def server_forecast_json(*, server_id: str, issued_at_s: float, based_on_at_s: float, model_version: str,
                         interval_level: float, gpu_temp_c: float, power_w: float, inlet_temp_c: float | None,
                         slowdown_temp_c: float, thermal_headroom_c: float, power_headroom_w: float,
                         horizons: Sequence[HorizonValues], place: ServerPlace) -> bytes:
    """A ``ServerForecast`` message as UTF-8 JSON (values must be finite; the caller guarantees it).

    Examples:
        >>> p = ServerPlace("k1", "r1", "p1", "z1", 6500.0, 0.25, 0.025)
        >>> raw = server_forecast_json(server_id="s1", issued_at_s=0.0, based_on_at_s=0.0, model_version="v1",
        ...     interval_level=0.9, gpu_temp_c=70.12345, power_w=5000.0, inlet_temp_c=None, slowdown_temp_c=87.0,
        ...     thermal_headroom_c=10.0, power_headroom_w=-5.0, horizons=[(10.0, 71.0, 70.0, 77.0, 5e3, 4.9e3, 5.1e3)],
        ...     place=p)
        >>> json.loads(raw)["gpu_temp_c"], json.loads(raw)["horizons"][0]["power_hi_w"]
        (70.123, 5100.0)
    """
    hz = ",".join([_HORIZON % h for h in horizons])
    inlet = "null" if inlet_temp_c is None else f"{inlet_temp_c:.3f}"
    return (_FORECAST % (
        _opt_str(server_id), iso_utc(issued_at_s), iso_utc(based_on_at_s), _opt_str(model_version), interval_level,
        gpu_temp_c, power_w, inlet, slowdown_temp_c, thermal_headroom_c, power_headroom_w, hz,
        _opt_str(place.rack_id), _opt_str(place.row_id), _opt_str(place.pdu_id), _opt_str(place.zone_id))).encode()


def power_headroom_w(*, nameplate_w: float, power_hi_w: float, place: ServerPlace,
                     pdu_remaining_w: float | None, row_remaining_w: float | None) -> float:
    """Smallest of the server's, its PDU share's and its row share's remaining power, W.

    Examples:
        >>> p = ServerPlace("k1", "r1", "p1", "z1", 6500.0, 0.25, 0.025)
        >>> power_headroom_w(nameplate_w=6500.0, power_hi_w=5000.0, place=p, pdu_remaining_w=2000.0,
        ...                  row_remaining_w=None)
        500.0
    """
    head = nameplate_w - power_hi_w
    if pdu_remaining_w is not None:
        head = min(head, pdu_remaining_w * place.pdu_weight)
    if row_remaining_w is not None:
        head = min(head, row_remaining_w * place.row_weight)
    return head
