"""clients/python (tapas-client): one source of truth for the contracts, no platform imports, placement client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "python"
PLATFORM = {"dash", "faust", "statsmodels", "aiokafka", "influxdb_client", "lightgbm", "foundation", "controller",
            "streams", "ingest", "dashboard", "simulator", "forecasting", "router", "tapas"}


def test_client_contracts_are_the_repository_contracts() -> None:
    link = CLIENT / "contracts"
    assert link.is_symlink(), "clients/python/contracts must be a link to contracts/, not a copy"
    assert link.resolve() == (REPO / "contracts").resolve()


def test_client_imports_nothing_of_the_platform() -> None:
    code = ("import sys, tapas_client; print(','.join(sorted(m.split('.')[0] for m in sys.modules)))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(CLIENT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                          cwd=CLIENT)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.strip().split(","))
    assert not PLATFORM & loaded, f"tapas_client imports {sorted(PLATFORM & loaded)}"
    assert "contracts" in loaded and "pydantic" in loaded


@pytest.fixture
def placement_api() -> Iterator[tuple[str, list[dict[str, object]]]]:
    from contracts import PlacementCandidate, PlacementHint

    seen: list[dict[str, object]] = []

    class Api(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            if self.path != "/v1/placement" or body["num_gpus"] > 8:
                data, code = json.dumps({"detail": "num_gpus: at most 8 per server"}).encode(), 422
            else:
                hint = PlacementHint(request_id=body["request_id"], issued_at=datetime.now(UTC), feasible=True,
                                     reason="coolest row", candidates=[PlacementCandidate(
                                         server_id="gpu-node-07", rank=1, score=0.8, predicted_peak_gpu_temp_c=71.0,
                                         thermal_headroom_c=14.0, row_power_headroom_w=2500.0,
                                         zone_heat_headroom_w=9000.0, free_gpus=8)])
                data, code = hint.to_bytes(), 200
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            return

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_placement_client_round_trip_and_refusal(placement_api: tuple[str, list[dict[str, object]]]) -> None:
    sys.path.insert(0, str(CLIENT))
    try:
        from tapas_client import PlacementClient, PlacementError, PlacementRequest
    finally:
        sys.path.remove(str(CLIENT))
    url, seen = placement_api
    client = PlacementClient(url)
    req = PlacementRequest(request_id="vm-1", requested_at=datetime.now(UTC), vm_kind="iaas", num_gpus=4)
    hint = client.place(req)
    assert hint.feasible and hint.candidates[0].server_id == "gpu-node-07" and hint.request_id == "vm-1"
    assert seen[0]["kind"] == "placement_request" and seen[0]["num_gpus"] == 4
    with pytest.raises(PlacementError, match="HTTP 422: num_gpus: at most 8 per server"):
        client.place(req.model_copy(update={"num_gpus": 16}))
