"""The history store unreachable: writes are buffered and retried, nothing accepted is lost or duplicated.

A real InfluxDB-protocol server (Debian's victoria-metrics) is started only after the
writes began, on the port the store was pointed at; the buffered store must deliver
every point once it answers, oldest first, without raising while it was down.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from foundation.broker import free_port
from foundation.settings import StoreSettings
from streams.store.base import Point
from streams.store.buffered import BufferedStore
from tapas.bootstrap import open_store
from tests.influxd_env import influxd_binary, start_influxd, stop_influxd
from tests.integration.test_store_influx_write import VM, _export

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def _start_victoria(port: int, data: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(VM), f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={data}",
                             "-retentionPeriod=100y"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("victoria-metrics did not start") from None
            time.sleep(0.1)


def test_store_outage_buffers_and_delivers_everything_once(tmp_path: Path) -> None:
    if VM is None:
        pytest.skip("victoria-metrics not installed (apt-get install victoria-metrics; .ci/run does it)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    inner = open_store(StoreSettings(kind="influx", influx_url=url, influx_org="tapas", influx_bucket="tapas"))
    store = BufferedStore(inner, max_buffered_points=10_000, batch_size=50, min_backoff_s=0.05, max_backoff_s=0.2)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    sent = 0
    proc = None
    try:
        # the store is down: 300 points written in 6 rounds, none raises, all are kept
        for r in range(6):
            store.write([Point("outage", {"server_id": f"s{i % 3}"}, {"temp_c": float(r * 50 + i)},
                               t0 + timedelta(seconds=r * 50 + i)) for i in range(50)])
            sent += 50
            time.sleep(0.06)
        assert store.pending == sent and store.failed_attempts >= 1 and not store.healthy
        outage_ended = time.monotonic()
        proc = _start_victoria(port, tmp_path / "vm")
        while store.pending and time.monotonic() - outage_ended < 20:
            store.write([])  # the worker's next write attempt
            time.sleep(0.05)
        recovery_s = time.monotonic() - outage_ended
        series = _export(url, "outage_temp_c")
    finally:
        store.close()
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    values = sorted(v for s in series for v in s["values"])
    delivered = len(values)
    duplicated = delivered - len(set(values))
    lost = sent - len(set(values))
    print(f"store outage: sent={sent} delivered={delivered} duplicated={duplicated} lost={lost} "
          f"failed_attempts={store.failed_attempts} recovery_s={recovery_s:.1f}")
    assert (delivered, duplicated, lost, store.dropped_points) == (sent, 0, 0, 0)
    assert values == [float(v) for v in range(sent)]


def test_influxql_store_outage_buffers_and_delivers_everything_once(tmp_path: Path) -> None:
    """The same outage against a real influxd (InfluxQL store): it starts only after the writes began.

    InfluxDB keeps one point per series and timestamp, so a duplicate write would not show
    here; the test checks that nothing is lost and the order is kept.
    """
    if influxd_binary() is None:
        pytest.skip("influxd not installed (apt-get install influxdb; .ci/run does it)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    inner = open_store(StoreSettings(kind="influxql", influx_url=url, influx_database="outage",
                                     influx_max_retries=0))
    store = BufferedStore(inner, max_buffered_points=10_000, batch_size=50, min_backoff_s=0.05, max_backoff_s=0.2)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    sent, proc = 0, None
    try:
        for r in range(6):
            store.write([Point("outage", {"server_id": f"s{i % 3}"}, {"temp_c": float(r * 50 + i)},
                               t0 + timedelta(seconds=r * 50 + i)) for i in range(50)])
            sent += 50
            time.sleep(0.06)
        assert store.pending == sent and store.failed_attempts >= 1 and not store.healthy
        outage_ended = time.monotonic()
        proc, _ = start_influxd(tmp_path, http_port=port)
        while store.pending and time.monotonic() - outage_ended < 20:
            store.write([])
            time.sleep(0.05)
        recovery_s = time.monotonic() - outage_ended
        frame = store.query("outage", t0, t0 + timedelta(hours=1))
    finally:
        store.close()
        if proc is not None:
            stop_influxd(proc)
    values = frame["temp_c"].tolist()
    lost = sent - len(set(values))
    print(f"influxql store outage: sent={sent} delivered={len(values)} lost={lost} "
          f"failed_attempts={store.failed_attempts} recovery_s={recovery_s:.1f}")
    assert values == [float(v) for v in range(sent)] and store.dropped_points == 0
