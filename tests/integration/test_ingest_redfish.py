"""The Redfish collector against the DMTF public-rackmount1 mockup served over HTTP on loopback.

Expected values are read from the mockup's own JSON files, so the test checks the
collector reads what the BMC says, in both the newer and the legacy schema.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from contracts import SourceError
from ingest.sources.redfish import RedfishLibraryClient, RedfishSource

pytestmark = pytest.mark.integration

CHASSIS = "Chassis/1U"


class MockupServer:
    """Serve a DMTF mockup folder (each resource ``<path>/index.json``) at ``/redfish/v1/...``.

    ``hidden`` path prefixes answer 404 (a BMC without the newer resources);
    ``overrides`` replace a resource's JSON (a BMC reporting a sentinel).
    """

    def __init__(self, root: Path, *, hidden: tuple[str, ...] = (),
                 overrides: Mapping[str, dict[str, Any]] | None = None, basic_auth: str | None = None) -> None:
        self.root = root
        outer = self
        expected_auth = None if basic_auth is None else "Basic " + base64.b64encode(basic_auth.encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                public = self.path.split("?", 1)[0].rstrip("/") in ("/redfish", "/redfish/v1")  # spec: root is open
                if expected_auth is not None and not public and self.headers.get("Authorization") != expected_auth:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = self.path.split("?", 1)[0].rstrip("/")
                rel = path.removeprefix("/redfish/v1").strip("/")
                body: bytes | None = None
                if not any(rel.startswith(h) for h in hidden):
                    if overrides and rel in overrides:
                        body = json.dumps(overrides[rel]).encode()
                    else:
                        f = outer.root / rel / "index.json"
                        body = f.read_bytes() if f.is_file() else None
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence access logs
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="redfish-mockup")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> MockupServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def mockup(data_dir: Path) -> Path:
    root = data_dir / "redfish-mockup" / "public-rackmount1"
    if not (root / "index.json").exists():
        pytest.skip(f"DMTF mockup not found under {root}")
    return root


def load(root: Path, rel: str) -> dict[str, Any]:
    return json.loads((root / rel / "index.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def served(mockup: Path) -> Iterator[MockupServer]:
    with MockupServer(mockup) as srv:
        yield srv


def read_once(url: str, **client: Any) -> Any:
    src = RedfishSource(RedfishLibraryClient(url, **client), server_id="srv-7")
    try:
        (sample,) = src.read()
    finally:
        src.close()
    return sample, src.plan


def test_newer_schema_values_equal_the_mockup(served: MockupServer, mockup: Path) -> None:
    intake = load(mockup, f"{CHASSIS}/Sensors/IntakeTemp")
    env = load(mockup, f"{CHASSIS}/EnvironmentMetrics")
    assert intake["PhysicalContext"] == "Intake"

    sample, plan = read_once(served.url)

    assert plan.intake_sensor_uri == intake["@odata.id"]
    assert sample.inlet_temp_c == intake["Reading"]
    assert sample.chassis_power_w == env["PowerWatts"]["Reading"]
    assert sample.sensor_id == intake["@odata.id"]
    assert sample.server_id == "srv-7" and sample.source == "redfish" and sample.invalid_fields == []


def test_legacy_thermal_and_power_when_newer_resources_are_absent(mockup: Path) -> None:
    thermal = load(mockup, f"{CHASSIS}/Thermal")
    power = load(mockup, f"{CHASSIS}/Power")
    intake_entries = [t for t in thermal["Temperatures"] if t.get("PhysicalContext") == "Intake"]
    assert len(intake_entries) == 1

    hidden = (f"{CHASSIS}/Sensors", f"{CHASSIS}/EnvironmentMetrics")
    with MockupServer(mockup, hidden=hidden) as srv:
        sample, plan = read_once(srv.url)

    assert plan.intake_sensor_uri is None and plan.thermal_uri is not None
    assert sample.inlet_temp_c == intake_entries[0]["ReadingCelsius"]
    assert sample.chassis_power_w == power["PowerControl"][0]["PowerConsumedWatts"]
    assert sample.sensor_id == intake_entries[0]["@odata.id"]


def test_intake_found_by_physical_context_not_name(mockup: Path) -> None:
    intake = load(mockup, f"{CHASSIS}/Sensors/IntakeTemp")
    renamed = {**intake, "Name": "Sensor 17", "Id": "Sensor17"}
    with MockupServer(mockup, overrides={f"{CHASSIS}/Sensors/IntakeTemp": renamed}) as srv:
        sample, _ = read_once(srv.url)
    assert sample.inlet_temp_c == intake["Reading"]


def test_sentinel_reading_is_published_flagged_not_dropped(mockup: Path) -> None:
    intake = load(mockup, f"{CHASSIS}/Sensors/IntakeTemp")
    broken = {**intake, "Reading": -127}
    with MockupServer(mockup, overrides={f"{CHASSIS}/Sensors/IntakeTemp": broken}) as srv:
        sample, _ = read_once(srv.url)
    assert sample.inlet_temp_c is None
    assert sample.invalid_fields == ["inlet_temp_c"]
    assert sample.chassis_power_w == load(mockup, f"{CHASSIS}/EnvironmentMetrics")["PowerWatts"]["Reading"]


def test_basic_auth_credentials(mockup: Path) -> None:
    intake = load(mockup, f"{CHASSIS}/Sensors/IntakeTemp")
    with MockupServer(mockup, basic_auth="operator:s3cret") as srv:
        sample, _ = read_once(srv.url, username="operator", password="s3cret", auth="basic")
        assert sample.inlet_temp_c == intake["Reading"]
        with pytest.raises(SourceError, match="cannot connect.*credentials"):
            read_once(srv.url, username="operator", password="wrong", auth="basic")


def test_cli_once_stdout_prints_the_contract_message(served: MockupServer, mockup: Path) -> None:
    intake = load(mockup, f"{CHASSIS}/Sensors/IntakeTemp")
    proc = subprocess.run(
        [sys.executable, "-m", "tapas.cli", "ingest", "redfish", "--url", served.url, "--server-id", "srv-9",
         "--once", "--stdout"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0]["kind"] == "inlet_sample" and lines[0]["server_id"] == "srv-9"
    assert lines[0]["inlet_temp_c"] == intake["Reading"]
