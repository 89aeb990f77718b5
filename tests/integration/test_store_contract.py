"""One contract suite that every history store passes.

The embedded SQLite WAL store and the InfluxQL store (against a real ``influxd``: the
one ``.ci/run`` starts, named by ``TAPAS_INFLUXQL_URL``, or one the ``influxql_url``
fixture starts) always run it; the Flux store when ``TAPAS_INFLUX_URL`` names an InfluxDB 2.x.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from contracts.errors import StoreError
from foundation.settings import StoreSettings
from streams.store.base import HistoryStore, Point
from tapas.bootstrap import open_store

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def _store_params() -> list[object]:
    influx_url = os.environ.get("TAPAS_INFLUX_URL")
    reason = ("InfluxDB contract run skipped: set TAPAS_INFLUX_URL (and TAPAS_INFLUX_TOKEN, TAPAS_INFLUX_ORG, "
              "TAPAS_INFLUX_BUCKET) to an InfluxDB >= 2.0 server to run it")
    return [
        pytest.param("embedded", id="embedded"),
        pytest.param("influxql", id="influxql"),
        pytest.param("influx", id="influx", marks=pytest.mark.skipif(not influx_url, reason=reason)),
    ]


@pytest.fixture(params=_store_params())
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    if request.param == "embedded":
        settings = StoreSettings(kind="embedded", path=tmp_path / "history.sqlite")
    elif request.param == "influxql":
        settings = StoreSettings(kind="influxql", influx_url=request.getfixturevalue("influxql_url"),
                                 influx_database="tapas_contract")
    else:
        settings = StoreSettings(kind="influx", influx_url=os.environ["TAPAS_INFLUX_URL"],
                                 influx_token=SecretStr(os.environ.get("TAPAS_INFLUX_TOKEN", "")),
                                 influx_org=os.environ.get("TAPAS_INFLUX_ORG", "tapas"),
                                 influx_bucket=os.environ.get("TAPAS_INFLUX_BUCKET", "tapas"))
    s = open_store(settings)
    try:
        yield s
    finally:
        s.close()


def _unique(prefix: str) -> str:
    """Series names unique to one test, so a shared InfluxDB bucket cannot leak rows between tests."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_store_is_a_history_store(store: HistoryStore) -> None:
    assert isinstance(store, HistoryStore)


def test_round_trip_keeps_values_tags_and_order(store: HistoryStore) -> None:
    m = _unique("gpu")
    pts = [Point(m, {"server_id": f"s{i % 3}"}, {"hottest_gpu_temp_c": 60.0 + i, "gpu_power_w": 300.25 * i},
                 T0 + timedelta(seconds=i)) for i in range(30)]
    store.write(list(reversed(pts)))
    df = store.query(m, T0, T0 + timedelta(minutes=1))
    assert list(df.columns) == ["at", "server_id", "gpu_power_w", "hottest_gpu_temp_c"]
    assert len(df) == 30
    assert df["at"].is_monotonic_increasing
    assert str(df["at"].dt.tz) == "UTC"
    assert df["hottest_gpu_temp_c"].tolist() == [60.0 + i for i in range(30)]
    assert df["gpu_power_w"].tolist() == [300.25 * i for i in range(30)]
    assert df["server_id"].tolist() == [f"s{i % 3}" for i in range(30)]
    assert df["at"].iloc[7].to_pydatetime() == T0 + timedelta(seconds=7)


def test_range_is_half_open_and_tags_filter(store: HistoryStore) -> None:
    m = _unique("inlet")
    store.write([Point(m, {"server_id": s}, {"inlet_temp_c": 20.0 + i}, T0 + timedelta(seconds=i))
                 for i in range(10) for s in ("a", "b")])
    df = store.query(m, T0 + timedelta(seconds=2), T0 + timedelta(seconds=5), tags={"server_id": "b"})
    assert df["inlet_temp_c"].tolist() == [22.0, 23.0, 24.0]
    assert set(df["server_id"]) == {"b"}


def test_missing_field_reads_as_nan_and_empty_range_is_empty(store: HistoryStore) -> None:
    m = _unique("pdu")
    store.write([Point(m, {"pdu_id": "p1"}, {"power_w": 1000.0, "current_a": 4.0}, T0),
                 Point(m, {"pdu_id": "p1"}, {"power_w": 1100.0}, T0 + timedelta(seconds=1))])
    df = store.query(m, T0, T0 + timedelta(seconds=10))
    assert df["power_w"].tolist() == [1000.0, 1100.0]
    assert df["current_a"].iloc[0] == 4.0 and math.isnan(df["current_a"].iloc[1])
    empty = store.query(m, T0 - timedelta(days=1), T0 - timedelta(hours=1))
    assert len(empty) == 0 and "at" in empty.columns


def test_naive_datetime_in_query_is_refused(store: HistoryStore) -> None:
    with pytest.raises(StoreError, match="timezone-aware"):
        store.query("gpu", datetime(2026, 1, 1), datetime(2026, 1, 2))  # noqa: DTZ001 - the point of the test


def test_point_rejects_naive_time_and_tag_field_clash() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Point("gpu", {}, {"x": 1.0}, datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="both tags and fields"):
        Point("gpu", {"x": "a"}, {"x": 1.0}, T0)


_READER = """
import sys, time
from datetime import datetime, timedelta, UTC
from pathlib import Path
from streams.store.embedded import EmbeddedStore
s = EmbeddedStore(Path(sys.argv[1]))
t0 = datetime.fromisoformat(sys.argv[2])
print(len(s.query("gpu", t0, t0 + timedelta(hours=2))))
s.close()
"""


def test_embedded_store_is_readable_by_another_process_while_open(tmp_path: Path) -> None:
    """WAL mode: a second process reads committed rows while the writer keeps its connection open."""
    writer = open_store(StoreSettings(kind="embedded", path=tmp_path / "h.sqlite"))
    try:
        writer.write([Point("gpu", {"server_id": "s1"}, {"hottest_gpu_temp_c": 70.0}, T0 + timedelta(seconds=i))
                      for i in range(25)])
        out = subprocess.run([sys.executable, "-c", _READER, str(tmp_path / "h.sqlite"), T0.isoformat()],
                             capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout.strip() == "25"
        mode = (tmp_path / "h.sqlite-wal").exists()
        assert mode, "the embedded store should run in WAL mode"
    finally:
        writer.close()
