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


def _num(x: float) -> str:
    return repr(float(x))


@functools.lru_cache(maxsize=65536)
def _opt_str(x: str | None) -> str:
    """JSON for an optional id; cached because ids repeat every tick (``json.dumps`` is ~2 us a call)."""
    return "null" if x is None else json.dumps(x)


def server_forecast_json(*, server_id: str, issued_at_s: float, based_on_at_s: float, model_version: str,
                         interval_level: float, gpu_temp_c: float, power_w: float, inlet_temp_c: float | None,
                         slowdown_temp_c: float, thermal_headroom_c: float, power_headroom_w: float,
                         horizons: Sequence[HorizonValues], place: ServerPlace) -> bytes:
    """A ``ServerForecast`` message as UTF-8 JSON (values must be finite; the caller guarantees it)."""
    hz = ",".join(
        f'{{"horizon_s":{_num(h[0])},"gpu_temp_c":{_num(h[1])},"gpu_temp_lo_c":{_num(h[2])},'
        f'"gpu_temp_hi_c":{_num(h[3])},"power_w":{_num(h[4])},"power_lo_w":{_num(h[5])},"power_hi_w":{_num(h[6])}}}'
        for h in horizons
    )
    inlet = "null" if inlet_temp_c is None else _num(inlet_temp_c)
    return (
        f'{{"schema_version":"{SCHEMA_VERSION}","kind":"server_forecast","server_id":{_opt_str(server_id)},'
        f'"issued_at":"{iso_utc(issued_at_s)}","based_on_sample_at":"{iso_utc(based_on_at_s)}",'
        f'"model_version":{_opt_str(model_version)},"interval_level":{_num(interval_level)},'
        f'"gpu_temp_c":{_num(gpu_temp_c)},"power_w":{_num(power_w)},"inlet_temp_c":{inlet},'
        f'"slowdown_temp_c":{_num(slowdown_temp_c)},"thermal_headroom_c":{_num(thermal_headroom_c)},'
        f'"power_headroom_w":{_num(power_headroom_w)},"horizons":[{hz}],'
        f'"rack_id":{_opt_str(place.rack_id)},"row_id":{_opt_str(place.row_id)},'
        f'"pdu_id":{_opt_str(place.pdu_id)},"zone_id":{_opt_str(place.zone_id)}}}'
    ).encode()


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
