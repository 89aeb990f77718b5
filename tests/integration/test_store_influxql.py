"""The InfluxQL store against a real ``influxd``: escaping, precision, batching, retries, refusals, bounds.

The shared contract suite (test_store_contract.py) covers the round trip; these
tests cover what only this store does. The server is the one ``.ci/run`` starts
(``TAPAS_INFLUXQL_URL``) or one the ``influxql_url`` fixture starts.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from pydantic import SecretStr

from contracts.errors import StoreError
from foundation.broker import free_port
from foundation.settings import StoreSettings
from streams.store.base import Point
from streams.store.influxql import InfluxQLStore
from tapas.bootstrap import open_store
from tests.influxd_env import URL_VARIABLE, influxd_binary, start_influxd, stop_influxd
from tests.netfault import TcpProxy

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def _db() -> str:
    return f"t_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(influxql_url: str) -> Iterator[InfluxQLStore]:
    s = InfluxQLStore(requests.Session(), url=influxql_url, database=_db(), batch_size=7)
    try:
        yield s
    finally:
        s.close()


def _count_requests(store: InfluxQLStore) -> list[str]:
    """Record the path of every request the store's session sends (the real server still answers)."""
    seen: list[str] = []
    session = store._session  # noqa: SLF001 - the injected seam
    send = session.request

    def request(method: str, url: str, **kw: object) -> requests.Response:
        seen.append(urllib.parse.urlparse(url).path)
        return send(method, url, **kw)  # type: ignore[arg-type]

    session.request = request  # type: ignore[method-assign]
    return seen


def test_special_characters_round_trip(store: InfluxQLStore) -> None:
    """Spaces, commas, '=', quotes, backslashes and non-ASCII in every name and value read back unchanged."""
    m = 'gpu, "m"=1'
    tags = {"server id": 'row 1,rack=2 "a" \\b', "zone,=": "é ü 热"}
    fields = {"temp c": 61.5, "power,w=": 1e-5, "big": 1.5e300, "neg": -0.0}
    store.write([Point(m, tags, fields, T0)])
    df = store.query(m, T0, T0 + timedelta(seconds=1), tags={"server id": tags["server id"]})
    assert len(df) == 1
    row = df.iloc[0]
    for k, v in tags.items():
        assert row[k] == v
    for k, v in fields.items():
        assert row[k] == v
    assert list(df.columns) == ["at", *sorted(tags), *sorted(fields)]


def test_line_protocol_that_cannot_round_trip_is_refused_before_sending(store: InfluxQLStore) -> None:
    seen = _count_requests(store)
    for bad in ({"server_id": "a\nb"}, {"server_id": "ends with \\"}, {"server_id": "a\\ b"}):
        with pytest.raises(StoreError, match="line protocol cannot carry"):
            store.write([Point("gpu", bad, {"x": 1.0}, T0)])
    with pytest.raises(StoreError, match="no finite field"):
        store.write([Point("gpu", {"server_id": "s"}, {"x": float("nan")}, T0)])
    assert seen == []


def test_microsecond_precision_is_kept(store: InfluxQLStore) -> None:
    at = [T0 + timedelta(microseconds=us) for us in (1, 2, 999_999)]
    store.write([Point("p", {"server_id": "s"}, {"x": float(i)}, t) for i, t in enumerate(at)])
    df = store.query("p", T0, T0 + timedelta(seconds=1))
    assert [t.to_pydatetime() for t in df["at"]] == at
    # half-open at microsecond resolution
    assert store.query("p", at[1], at[2])["x"].tolist() == [1.0]


def test_write_batches_by_batch_size(store: InfluxQLStore) -> None:
    store.write([Point("b", {"server_id": "s0"}, {"x": -1.0}, T0 - timedelta(seconds=1))])  # creates the db
    seen = _count_requests(store)
    store.write([Point("b", {"server_id": f"s{i % 4}"}, {"x": float(i)}, T0 + timedelta(seconds=i))
                 for i in range(50)])
    writes = [p for p in seen if p == "/write"]
    assert len(writes) == 8  # ceil(50 / 7), plus nothing else once the database exists
    assert store.query("b", T0, T0 + timedelta(minutes=1))["x"].tolist() == [float(i) for i in range(50)]


def test_add_buffers_flushes_and_signals_backpressure(influxql_url: str) -> None:
    s = InfluxQLStore(requests.Session(), url=influxql_url, database=_db(), batch_size=1000, max_pending=3)
    try:
        results = [s.add(Point("a", {"server_id": "s"}, {"x": float(i)}, T0 + timedelta(seconds=i)))
                   for i in range(4)]
        assert results == [True, True, False, False]
        assert s.pending == 4
        assert len(s.query("a", T0, T0 + timedelta(minutes=1))) == 0  # nothing sent yet
        s.flush()
        assert s.pending == 0
        assert s.query("a", T0, T0 + timedelta(minutes=1))["x"].tolist() == [0.0, 1.0, 2.0, 3.0]
        s.add(Point("a", {"server_id": "s"}, {"x": 9.0}, T0 + timedelta(seconds=9)))
    finally:
        s.close()  # writes the last buffered point
    again = InfluxQLStore(requests.Session(), url=influxql_url, database=s.database)
    try:
        assert again.query("a", T0, T0 + timedelta(minutes=1))["x"].tolist()[-1] == 9.0
    finally:
        again.close()


def test_transient_outage_is_retried_then_succeeds(influxql_url: str) -> None:
    target = int(urllib.parse.urlparse(influxql_url).port or 0)
    proxy = TcpProxy(free_port(), target).start()
    waits: list[float] = []

    def sleep(s: float) -> None:  # the outage ends during the second back-off
        waits.append(s)
        if len(waits) == 2:
            proxy.restore()

    try:
        proxy.cut()
        s = InfluxQLStore(requests.Session(), url=f"http://127.0.0.1:{proxy.listen_port}", database=_db(),
                          max_retries=3, sleep=sleep, timeout_s=5)
        s.write([Point("r", {"server_id": "s"}, {"x": 1.0}, T0)])
        assert s.num_retries == 2 and waits == [0.2, 0.4]
        assert s.query("r", T0, T0 + timedelta(seconds=1))["x"].tolist() == [1.0]
        s.close()
    finally:
        proxy.close()


def test_unreachable_server_raises_store_error_after_retries_and_add_keeps_points() -> None:
    waits: list[float] = []
    s = InfluxQLStore(requests.Session(), url=f"http://127.0.0.1:{free_port()}", database="tapas",
                      max_retries=2, sleep=waits.append, batch_size=2)
    with pytest.raises(StoreError, match="write failed after 3 attempts: ConnectionError"):
        s.write([Point("gpu", {"server_id": "s"}, {"x": 1.0}, T0)])
    assert len(waits) == 2
    s.add(Point("gpu", {"server_id": "s"}, {"x": 1.0}, T0))
    with pytest.raises(StoreError, match="2 points stay buffered"):
        s.add(Point("gpu", {"server_id": "s"}, {"x": 2.0}, T0 + timedelta(seconds=1)))
    assert s.pending == 2
    with pytest.raises(StoreError):
        s.close()


def test_refused_write_names_the_server_reason_and_is_not_retried(store: InfluxQLStore) -> None:
    waits: list[float] = []
    store._sleep = waits.append  # noqa: SLF001
    store.write([Point("c", {"server_id": "s"}, {"x": 1.0}, T0)])
    at_us = int(T0.timestamp() * 1e6) + 1  # same shard as the float written above
    store._pending = [f'c,server_id=s x="text" {at_us}']  # noqa: SLF001 - a string where a float lives
    with pytest.raises(StoreError, match=r"write refused: HTTP 400: partial write: field type conflict.*"
                                         r"1 refused points dropped"):
        store.flush()
    assert waits == [] and store.pending == 0


def test_missing_database_without_create_is_a_clear_error(influxql_url: str) -> None:
    s = InfluxQLStore(requests.Session(), url=influxql_url, database=_db(), create_database=False)
    try:
        with pytest.raises(StoreError, match=r"HTTP 404: database not found.*influx v1 dbrp create"):
            s.write([Point("gpu", {"server_id": "s"}, {"x": 1.0}, T0)])
        with pytest.raises(StoreError, match="query of 'gpu' failed: database not found"):
            s.query("gpu", T0, T0 + timedelta(seconds=1))
    finally:
        s.close()
    creating = InfluxQLStore(requests.Session(), url=influxql_url, database=s.database)
    try:  # a store that creates its database on the first write reads an uncreated one as empty
        assert len(creating.query("gpu", T0, T0 + timedelta(seconds=1))) == 0
    finally:
        creating.close()


def test_query_is_bounded(influxql_url: str) -> None:
    s = InfluxQLStore(requests.Session(), url=influxql_url, database=_db(), max_rows=5)
    try:
        s.write([Point("q", {"server_id": "s"}, {"x": float(i)}, T0 + timedelta(seconds=i)) for i in range(6)])
        assert len(s.query("q", T0, T0 + timedelta(seconds=5))) == 5
        with pytest.raises(StoreError, match="more than 5 rows"):
            s.query("q", T0, T0 + timedelta(seconds=6))
    finally:
        s.close()


def test_settings_select_the_store_and_retention_policy(influxql_url: str) -> None:
    db = _db()
    create = f'CREATE DATABASE "{db}" WITH DURATION 30d NAME "month"; CREATE RETENTION POLICY "week" ON "{db}" DURATION 7d REPLICATION 1'
    urllib.request.urlopen(urllib.request.Request(f"{influxql_url}/query?" + urllib.parse.urlencode({"q": create}),
                                                  method="POST"), timeout=10).read()
    s = open_store(StoreSettings(kind="influxql", influx_url=influxql_url, influx_database=db,
                                 influx_retention_policy="week"))
    assert isinstance(s, InfluxQLStore)
    try:
        s.write([Point("w", {"server_id": "s"}, {"x": 3.0}, T0)])
        df = s.query("w", T0, T0 + timedelta(seconds=1))
        assert df["x"].tolist() == [3.0] and list(df.columns) == ["at", "server_id", "x"]
    finally:
        s.close()
    q = urllib.parse.urlencode({"db": db, "q": 'SELECT count(*) FROM "week"."w"'})
    body = json.loads(urllib.request.urlopen(f"{influxql_url}/query?{q}", timeout=10).read())
    assert body["results"][0]["series"][0]["values"][0][1] == 1
    q = urllib.parse.urlencode({"db": db, "q": 'SELECT count(*) FROM "month"."w"'})
    body = json.loads(urllib.request.urlopen(f"{influxql_url}/query?{q}", timeout=10).read())
    assert "series" not in body["results"][0]


def test_credentials_from_settings_authenticate_against_an_auth_enabled_server(tmp_path: Path) -> None:
    if influxd_binary() is None:
        pytest.skip(f"needs influxd (apt-get install influxdb); {URL_VARIABLE} alone does not cover auth")
    proc, url = start_influxd(tmp_path, auth=True)
    try:
        q = urllib.parse.urlencode({"q": "CREATE USER tapas WITH PASSWORD 's3cret' WITH ALL PRIVILEGES"})
        urllib.request.urlopen(urllib.request.Request(f"{url}/query?{q}", method="POST"), timeout=10).read()
        wrong = open_store(StoreSettings(kind="influxql", influx_url=url, influx_username="tapas",
                                         influx_password=SecretStr("wrong")))
        with pytest.raises(StoreError, match=r"HTTP 401: authorization failed.*TAPAS_STORE__INFLUX_USERNAME"):
            wrong.write([Point("gpu", {"server_id": "s"}, {"x": 1.0}, T0)])
        wrong.close()
        right = open_store(StoreSettings(kind="influxql", influx_url=url, influx_username="tapas",
                                         influx_password=SecretStr("s3cret")))
        right.write([Point("gpu", {"server_id": "s"}, {"x": 1.0}, T0)])
        assert right.query("gpu", T0, T0 + timedelta(seconds=1))["x"].tolist() == [1.0]
        right.close()
    finally:
        stop_influxd(proc)


def test_a_token_is_sent_as_the_authorization_header(influxql_url: str) -> None:
    """InfluxDB 2.x's v1 API and 3.x take ``Authorization: Token ...`` (1.6 here ignores it with auth off)."""
    store = open_store(StoreSettings(kind="influxql", influx_url=influxql_url, influx_database=_db(),
                                     influx_token=SecretStr("tok")))
    try:
        assert store._session.headers["Authorization"] == "Token tok"  # type: ignore[attr-defined]  # noqa: SLF001
        store.write([Point("gpu", {"server_id": "s"}, {"x": 1.0}, T0)])
    finally:
        store.close()
