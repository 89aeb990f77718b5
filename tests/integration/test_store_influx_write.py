"""The InfluxDB write path for real: influxdb-client → /api/v2/write on Debian's victoria-metrics → /api/v1/export."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from contracts.errors import StoreError
from foundation.broker import free_port
from foundation.settings import StoreSettings
from streams.store.base import Point
from tapas.bootstrap import open_store

pytestmark = pytest.mark.integration

VM = shutil.which("victoria-metrics") or ("/usr/bin/victoria-metrics" if Path("/usr/bin/victoria-metrics").exists()
                                          else None)


@pytest.fixture(scope="module")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if VM is None:
        pytest.skip("victoria-metrics not installed (apt-get install victoria-metrics; .ci/run does it)")
    port = free_port()
    data = tmp_path_factory.mktemp("vm")
    proc = subprocess.Popen([VM, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={data}",
                             "-retentionPeriod=100y"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("victoria-metrics did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _export(url: str, name: str) -> list[dict[str, Any]]:
    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=5).read()
    q = urllib.parse.quote(f'{{__name__="{name}"}}')
    with urllib.request.urlopen(f"{url}/api/v1/export?match[]={q}", timeout=10) as resp:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]


def test_influx_store_writes_line_protocol_that_reads_back(victoria: str) -> None:
    store = open_store(StoreSettings(kind="influx", influx_url=victoria, influx_org="tapas", influx_bucket="tapas",
                                     batch_size=7))
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    pts = [Point("gpu", {"server_id": f"srv {i % 2}"}, {"hottest_gpu_temp_c": 60.5 + i, "gpu_power_w": 2400.0},
                 t0 + timedelta(seconds=i)) for i in range(20)]
    try:
        store.write(pts)
    finally:
        store.close()
    series = _export(victoria, "gpu_hottest_gpu_temp_c")
    by_server = {s["metric"]["server_id"]: s for s in series}
    assert set(by_server) == {"srv 0", "srv 1"}
    got = sorted(zip(by_server["srv 1"]["timestamps"], by_server["srv 1"]["values"], strict=True))
    want = [(int((t0 + timedelta(seconds=i)).timestamp() * 1000), 60.5 + i) for i in range(1, 20, 2)]
    assert got == want
    power = _export(victoria, "gpu_gpu_power_w")
    assert sum(len(s["values"]) for s in power) == 20


def test_influx_store_unreachable_raises_store_error() -> None:
    store = open_store(StoreSettings(kind="influx", influx_url=f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(StoreError, match="write failed"):
            store.write([Point("gpu", {"server_id": "s"}, {"x": 1.0}, datetime.now(UTC))])
    finally:
        store.close()
