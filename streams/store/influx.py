"""The production history store: InfluxDB 2.x through ``influxdb-client``.

Writes go out as line protocol over ``/api/v2/write`` (so any server speaking
that endpoint, e.g. VictoriaMetrics, accepts them); queries use Flux and pivot
fields into columns so the DataFrame has the same shape as the embedded store's.
The client is injected (a seam for tests); :meth:`InfluxStore.from_settings`
builds it from settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contracts.errors import StoreError
from streams.store.base import Point

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from foundation.settings import StoreSettings

_FLUX_STRING = re.compile(r'["\\]')


def _flux_str(value: str) -> str:
    """A Flux string literal for ``value`` (quotes and backslashes escaped)."""
    return '"' + _FLUX_STRING.sub(lambda m: "\\" + m.group(0), value) + '"'


def _to_us(at: datetime) -> int:
    delta = at.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _rfc3339(at: datetime) -> str:
    if at.tzinfo is None:
        raise StoreError(f"naive datetime {at.isoformat()} in a store query; pass a timezone-aware instant")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _escape(text: str, specials: str) -> str:
    for ch in "\\" + specials:
        text = text.replace(ch, "\\" + ch)
    return text


def to_line_protocol(p: Point) -> str:
    """One point as InfluxDB line protocol, time in microseconds (skips non-finite fields).

    Examples:
        >>> from datetime import UTC, datetime
        >>> to_line_protocol(Point("inlet", {"server_id": "s 1"}, {"inlet_temp_c": 22.5},
        ...                        datetime(2026, 1, 1, tzinfo=UTC)))
        'inlet,server_id=s\\\\ 1 inlet_temp_c=22.5 1767225600000000'
    """
    head = _escape(p.measurement, ", ")
    for k in sorted(p.tags):
        v = p.tags[k]
        if v != "":
            head += f",{_escape(k, ',= ')}={_escape(v, ',= ')}"
    fields = ",".join(f"{_escape(k, ',= ')}={float(v)!r}" for k, v in p.fields.items() if math.isfinite(v))
    if not fields:
        raise StoreError(f"point {p.measurement!r} at {p.at.isoformat()} has no finite field to write")
    return f"{head} {fields} {_to_us(p.at)}"


class InfluxStore:
    """InfluxDB 2.x store writing synchronously in batches.

    Args:
        client: an ``influxdb_client.InfluxDBClient`` (injected).
        org: organisation name.
        bucket: bucket for every measurement.
        batch_size: points per write request.
    """

    def __init__(self, client: Any, *, org: str, bucket: str, batch_size: int = 5000) -> None:
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._client = client
        self.org = org
        self.bucket = bucket
        self.batch_size = batch_size
        self._write = client.write_api(write_options=SYNCHRONOUS)

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> InfluxStore:
        """Build the client from ``settings.influx_*``."""
        from influxdb_client.client.influxdb_client import InfluxDBClient

        token = settings.influx_token.get_secret_value() if settings.influx_token else ""
        client = InfluxDBClient(url=str(settings.influx_url), token=token, org=settings.influx_org, timeout=30_000)
        return cls(client, org=settings.influx_org, bucket=settings.influx_bucket, batch_size=settings.batch_size)

    def write(self, points: Sequence[Point]) -> None:
        """Write ``points`` as line protocol in batches of ``batch_size``."""
        from influxdb_client.domain.write_precision import WritePrecision

        lines = [to_line_protocol(p) for p in points]
        for i in range(0, len(lines), self.batch_size):
            try:
                self._write.write(bucket=self.bucket, org=self.org, record=lines[i:i + self.batch_size],
                                  write_precision=WritePrecision.US)
            except Exception as exc:  # influxdb-client raises ApiException, urllib3 errors, OSError
                raise StoreError(f"influx store {self.bucket}: write failed: {exc}") from exc

    def query(self, measurement: str, start: datetime, end: datetime,
              tags: Mapping[str, str] | None = None) -> pd.DataFrame:
        """Flux query of one measurement, fields pivoted into columns, in time order."""
        import pandas as pd

        flux = (f"from(bucket: {_flux_str(self.bucket)})"
                f" |> range(start: {_rfc3339(start)}, stop: {_rfc3339(end)})"
                f" |> filter(fn: (r) => r._measurement == {_flux_str(measurement)})")
        for k, v in (tags or {}).items():
            flux += f" |> filter(fn: (r) => r[{_flux_str(k)}] == {_flux_str(v)})"
        flux += ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value") |> group()'
        flux += ' |> sort(columns: ["_time"])'
        try:
            result = self._client.query_api().query_data_frame(flux, org=self.org)
        except Exception as exc:  # ApiException, connection errors
            raise StoreError(f"influx store {self.bucket}: query failed: {exc}") from exc
        frames = result if isinstance(result, list) else [result]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if frame.empty:
            return pd.DataFrame({"at": pd.to_datetime([], utc=True)})
        frame = frame.drop(columns=[c for c in ("result", "table", "_start", "_stop", "_measurement")
                                    if c in frame.columns])
        frame = frame.rename(columns={"_time": "at"})
        frame["at"] = pd.to_datetime(frame["at"], utc=True)
        tag_keys = sorted(c for c in frame.columns if c != "at" and frame[c].dtype == object)
        field_keys = sorted(c for c in frame.columns if c != "at" and c not in tag_keys)
        return frame.sort_values("at", kind="stable")[["at", *tag_keys, *field_keys]].reset_index(drop=True)

    def close(self) -> None:
        """Close the write API and the client."""
        self._write.close()
        self._client.close()
