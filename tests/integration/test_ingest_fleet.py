"""``tapas ingest fleet``: one process polling several BMCs (DMTF mockup over HTTP) and PDUs (snmpsim).

A dead BMC among them fails only its own poll: the others' samples are printed and
the exit code (2, with ``--once``) and message name the failed source.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.snmpsim_env import SnmpSimAgent, SnmpSimUnavailable
from tests.integration.test_ingest_redfish import MockupServer, load

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agent() -> Iterator[SnmpSimAgent]:
    try:
        a = SnmpSimAgent(recordings=("UPS/apc-8641", "UPS/apc-7902b")).start()
    except SnmpSimUnavailable as exc:
        pytest.skip(f"snmpsim could not be set up here: {exc}")
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def bmcs(data_dir: Path) -> Iterator[tuple[Path, list[MockupServer]]]:
    root = data_dir / "redfish-mockup" / "public-rackmount1"
    if not (root / "index.json").exists():
        pytest.skip(f"DMTF mockup not found under {root}")
    with MockupServer(root) as a, MockupServer(root, hidden=("Chassis/1U/Sensors",)) as b:
        yield root, [a, b]


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _config(tmp_path: Path, bmc_urls: list[str], agent: SnmpSimAgent) -> Path:
    lines = ["[defaults]", "timeout_s = 2", "max_in_flight = 4", ""]
    for i, url in enumerate(bmc_urls):
        lines += ["[[redfish]]", f'server_id = "srv-{i}"', f'url = "{url}"', ""]
    for community, pdu in (("UPS/apc-8641", "pdu-a"), ("UPS/apc-7902b", "pdu-b")):
        lines += ["[[snmp]]", f'pdu_id = "{pdu}"', 'host = "127.0.0.1"', f"port = {agent.port}",
                  f'community = "{community}"', 'server_ids = ["srv-0", "srv-1"]', ""]
    path = tmp_path / "fleet.toml"
    path.write_text("\n".join(lines))
    return path


def _fleet(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPAS_")}
    return subprocess.run([sys.executable, "-m", "tapas.cli", "ingest", "fleet", *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env)


def test_one_process_reads_every_bmc_and_pdu(tmp_path: Path, bmcs: tuple[Path, list[MockupServer]],
                                             agent: SnmpSimAgent) -> None:
    root, servers = bmcs
    proc = _fleet("--config", str(_config(tmp_path, [s.url for s in servers], agent)), "--once", "--stdout")
    assert proc.returncode == 0, proc.stderr
    msgs = [json.loads(line) for line in proc.stdout.splitlines()]
    inlets = {m["server_id"]: m for m in msgs if m["kind"] == "inlet_sample"}
    pdus = {m["pdu_id"]: m for m in msgs if m["kind"] == "pdu_power_sample"}
    assert set(inlets) == {"srv-0", "srv-1"} and set(pdus) == {"pdu-a", "pdu-b"}
    assert inlets["srv-0"]["inlet_temp_c"] == load(root, "Chassis/1U/Sensors/IntakeTemp")["Reading"]
    thermal = load(root, "Chassis/1U/Thermal")["Temperatures"]
    legacy = next(t for t in thermal if t.get("PhysicalContext") == "Intake")
    assert inlets["srv-1"]["inlet_temp_c"] == legacy["ReadingCelsius"]  # Sensors hidden: legacy Thermal
    assert pdus["pdu-a"]["power_w"] is not None and pdus["pdu-a"]["invalid_fields"] == []
    assert "power_w" in pdus["pdu-b"]["invalid_fields"]  # this AP7902B does not meter device power
    assert all(p["server_ids"] == ["srv-0", "srv-1"] for p in pdus.values())


def test_a_dead_bmc_fails_alone_and_is_named(tmp_path: Path, bmcs: tuple[Path, list[MockupServer]],
                                             agent: SnmpSimAgent) -> None:
    _, servers = bmcs
    proc = _fleet("--config", str(_config(tmp_path, [servers[0].url, _dead_url()], agent)), "--once", "--stdout")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    kinds = sorted(json.loads(line)["kind"] for line in proc.stdout.splitlines())
    assert kinds == ["inlet_sample", "pdu_power_sample", "pdu_power_sample"]
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("error: fleet: 1 of 4 sources failed; redfish:srv-1: ")
