"""``tapas ingest dcgm`` against a dcgm-exporter-format scrape served over loopback HTTP.

The fixture (``data/dcgm-exporter-h100x4.txt``) follows dcgm-exporter's output layout:
HELP/TYPE lines of its default counters file, labels ``gpu``, ``UUID``,
``pci_bus_id``, ``device``, ``modelName``, ``Hostname``, the violation counters
enabled, and a blank code (2^63 - 14, NOT_SUPPORTED) for one GPU's HBM temperature.
Its values were written for this test; no GPU was available to record one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from contracts import GpuSample, SourceError
from ingest.sources.dcgm import DcgmSource, RequestsTextGetter, parse_dcgm_text

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parent / "data" / "dcgm-exporter-h100x4.txt"
T0 = datetime(2026, 12, 8, tzinfo=UTC)


class ExporterServer:
    """Serve one body at ``/metrics`` as dcgm-exporter does (text/plain; version=0.0.4)."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                code = status if self.path == "/metrics" else 404
                payload = body if code == 200 else b""
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="dcgm-exporter")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"

    def __enter__(self) -> ExporterServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def exporter() -> Iterator[ExporterServer]:
    with ExporterServer(FIXTURE.read_bytes()) as srv:
        yield srv


def test_scrape_becomes_one_gpu_sample_per_host(exporter: ExporterServer) -> None:
    src = DcgmSource(exporter.url, getter=RequestsTextGetter(timeout_s=2.0), now=lambda: T0)
    try:
        (sample,) = src.read()
    finally:
        src.close()
    assert sample.server_id == "gpu-node-07" and sample.source == "dcgm" and sample.sampled_at == T0
    assert [g.gpu_index for g in sample.gpus] == [0, 1, 2, 3]
    g2 = sample.gpus[2]
    assert g2.uuid == "GPU-5f0e7a2c-41d3-9b8e-0c6a-000000000002"
    assert g2.gpu_temp_c == 71 and g2.power_usage_w == pytest.approx(655.02) and g2.power_kind == "average"
    assert g2.sm_clock_mhz == 1755 and g2.mem_clock_mhz == 2619 and g2.gpu_util_pct == 100
    assert g2.power_violation_us == 38_000_000 and g2.thermal_violation_us == 4_200_000
    assert g2.memory_temp_c is None and g2.invalid_fields == []  # NOT_SUPPORTED blank code: absent, not flagged
    assert sample.gpus[1].memory_temp_c == 74 and sample.gpus[1].power_violation_us == 1_250_000
    assert sample.hottest_gpu_temp_c == 71
    assert sample.gpu_power_w == pytest.approx(512.31 + 598.764 + 655.02 + 480.5)
    assert GpuSample.model_validate_json(sample.model_dump_json()) == sample


def test_instant_power_is_preferred_when_the_exporter_has_it() -> None:
    text = FIXTURE.read_text() + (
        'DCGM_FI_DEV_POWER_USAGE_INSTANT{gpu="0",UUID="GPU-5f0e7a2c-41d3-9b8e-0c6a-000000000000",'
        'Hostname="gpu-node-07"} 688.0\n')
    (sample,) = parse_dcgm_text(text, sampled_at=T0)
    assert sample.gpus[0].power_usage_w == 688.0 and sample.gpus[0].power_kind == "instant"
    assert sample.gpus[1].power_kind == "average"


def test_impossible_values_are_flagged_and_server_id_overrides_hostname() -> None:
    text = FIXTURE.read_text().replace("} 62\n", "} 400\n", 1)  # GPU 0 at 400 °C: Kelvin-ish nonsense
    (sample,) = parse_dcgm_text(text, sampled_at=T0, server_id="row01-rack02-srv03")
    assert sample.server_id == "row01-rack02-srv03"
    assert sample.gpus[0].gpu_temp_c is None and sample.gpus[0].invalid_fields == ["gpu_temp_c"]


@pytest.mark.parametrize(("text", "match"), [
    ("<html>not metrics</html>\n", "not Prometheus text|no DCGM"),
    ("node_load1 0.5\n", "no DCGM"),
    ('DCGM_FI_DEV_GPU_TEMP{gpu="all",Hostname="n"} 60\n', "gpu label 'all'"),
    ('DCGM_FI_DEV_GPU_TEMP{gpu="0"} 60\n', "no Hostname label"),
])
def test_bad_scrapes_are_source_errors(text: str, match: str) -> None:
    with pytest.raises(SourceError, match=match):
        parse_dcgm_text(text, sampled_at=T0)


def test_unreachable_exporter_is_a_source_error() -> None:
    with ExporterServer(b"", status=503) as srv:
        src = DcgmSource(srv.url, getter=RequestsTextGetter(timeout_s=2.0))
        with pytest.raises(SourceError, match="HTTP 503"):
            src.read()
        src.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPAS_")}
    return subprocess.run([sys.executable, "-m", "tapas.cli", "ingest", "dcgm", *args], capture_output=True,
                          text=True, timeout=60, check=False, env=env)


def test_cli_once_stdout_prints_the_gpu_sample(exporter: ExporterServer) -> None:
    proc = _cli("--url", exporter.url, "--once", "--stdout")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    msg = json.loads(line)
    assert msg["kind"] == "gpu_sample" and msg["server_id"] == "gpu-node-07" and len(msg["gpus"]) == 4
    assert msg["gpus"][2]["thermal_violation_us"] == 4_200_000


def test_cli_refuses_a_dead_url_with_one_line() -> None:
    with ExporterServer(b"") as srv:
        url = srv.url
    proc = _cli("--url", url, "--once", "--stdout")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()][-1].startswith("error: dcgm ")
