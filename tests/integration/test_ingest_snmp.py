"""The SNMP collector against snmpsim serving the real APC rack-PDU recordings of ``snmpsim-data``.

Expected values come from the ``.snmprec`` files themselves, scaled by the units
the PowerNet MIB documents (hundredths of kW, tenths of A, tenths of kWh).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from contracts import SourceError
from ingest.sources import snmp
from ingest.sources.snmp import SnmpClient, SnmpSource, SnmpTarget
from tests.integration.snmpsim_env import SnmpSimAgent, SnmpSimUnavailable, recordings_dir

pytestmark = pytest.mark.integration

V3_USER, V3_AUTH, V3_PRIV = "tapas-ro", "auth-secret-123", "priv-secret-456"


@pytest.fixture(scope="module")
def agent() -> Iterator[SnmpSimAgent]:
    try:
        a = SnmpSimAgent(extra_args=(f"--v3-user={V3_USER}", f"--v3-auth-key={V3_AUTH}", "--v3-auth-proto=SHA",
                                     f"--v3-priv-key={V3_PRIV}", "--v3-priv-proto=AES")).start()
    except SnmpSimUnavailable as exc:
        pytest.skip(f"snmpsim could not be set up here: {exc}")
    try:
        yield a
    finally:
        a.stop()


def recording(name: str) -> dict[str, str]:
    """OID → raw value string of one .snmprec file (``oid|type|value`` lines)."""
    out = {}
    for line in (recordings_dir() / "UPS" / f"{name}.snmprec").read_text().splitlines():
        oid, _type, value = line.split("|", 2)
        out[oid] = value
    return out


def read(agent: SnmpSimAgent, community: str, profile: str | None = None) -> tuple[SnmpSource, object]:
    src = SnmpSource(SnmpClient(SnmpTarget("127.0.0.1", agent.port, community, timeout_s=2.0)),
                     pdu_id="pdu-r1-a", profile=profile)
    try:
        (sample,) = src.read()
    finally:
        src.close()
    return src, sample


def test_rpdu2_values_equal_the_recording(agent: SnmpSimAgent) -> None:
    rec = recording("apc-8641")
    src, s = read(agent, "UPS/apc-8641")
    assert src.profile.name == "apc-rpdu2"  # chosen from sysObjectID .318.1.3.4.6
    assert rec[snmp.SYS_OBJECT_ID] == "1.3.6.1.4.1.318.1.3.4.6"
    assert s.power_w == int(rec[f"{snmp.RPDU2_DEVICE_POWER}.1"]) * 10  # hundredths of kW -> W
    assert s.energy_kwh == pytest.approx(int(rec[f"{snmp.RPDU2_DEVICE_ENERGY}.1"]) / 10)
    assert s.current_a == pytest.approx(int(rec[f"{snmp.RPDU2_PHASE_CURRENT}.1"]) / 10)
    by_name = {p.name: p for p in s.phases}
    assert by_name["phase1"].power_w == int(rec[f"{snmp.RPDU2_PHASE_POWER}.1"]) * 10
    for bank in (1, 2):
        assert by_name[f"bank{bank}"].current_a == pytest.approx(int(rec[f"{snmp.RPDU2_BANK_CURRENT}.{bank}"]) / 10)
    outlets = sorted(k for k in rec if k.startswith(snmp.RPDU2_OUTLET_POWER + "."))
    assert len(outlets) == 24
    for oid in outlets:
        idx = oid.rsplit(".", 1)[1]
        assert by_name[f"outlet{idx}"].power_w == int(rec[oid])
        assert by_name[f"outlet{idx}"].current_a == pytest.approx(int(rec[f"{snmp.RPDU2_OUTLET_CURRENT}.{idx}"]) / 10)
    assert s.invalid_fields == []


def test_unsupported_power_reading_is_flagged_not_dropped(agent: SnmpSimAgent) -> None:
    rec = recording("apc-7902b")
    assert rec[f"{snmp.RPDU2_DEVICE_POWER}.1"] == "-1"  # this AP7902B does not meter device power
    _, s = read(agent, "UPS/apc-7902b")
    assert s.power_w is None and "power_w" in s.invalid_fields
    assert s.current_a == pytest.approx(int(rec[f"{snmp.RPDU2_PHASE_CURRENT}.1"]) / 10)


def test_first_generation_rpdu_profile(agent: SnmpSimAgent) -> None:
    rec = recording("apc-7902b")
    _, s = read(agent, "UPS/apc-7902b", profile="apc-rpdu")
    assert s.power_w == int(rec[snmp.RPDU_DEVICE_POWER_W])  # rPDUIdentDevicePowerWatts, W
    phase_rows = [k.rsplit(".", 1)[1] for k in rec
                  if k.startswith(snmp.RPDU_LOAD_BANK + ".") and rec[k] == "0"]
    assert s.current_a == pytest.approx(sum(int(rec[f"{snmp.RPDU_LOAD}.{i}"]) for i in phase_rows) / 10)
    assert s.invalid_fields == []


def test_cli_once_stdout(agent: SnmpSimAgent) -> None:
    rec = recording("apc-8932")
    proc = subprocess.run(
        [sys.executable, "-m", "tapas.cli", "ingest", "snmp", "--host", "127.0.0.1", "--port", str(agent.port),
         "--community", "UPS/apc-8932", "--pdu-id", "pdu-9", "--once", "--stdout"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    assert line["pdu_id"] == "pdu-9" and line["kind"] == "pdu_power_sample"
    assert line["power_w"] == int(rec[f"{snmp.RPDU2_DEVICE_POWER}.1"]) * 10


def test_snmp_v3_with_auth_and_privacy(agent: SnmpSimAgent) -> None:
    rec = recording("apc-8641")
    target = SnmpTarget("127.0.0.1", agent.port, v3_user=V3_USER, v3_auth_key=V3_AUTH, v3_priv_key=V3_PRIV,
                        v3_auth_protocol="sha", v3_priv_protocol="aes", v3_context="UPS/apc-8641")
    src = SnmpSource(SnmpClient(target), pdu_id="pdu-v3")
    try:
        (s,) = src.read()
    finally:
        src.close()
    assert s.power_w == int(rec[f"{snmp.RPDU2_DEVICE_POWER}.1"]) * 10


def test_wrong_v3_key_is_a_one_line_source_error(agent: SnmpSimAgent) -> None:
    target = SnmpTarget("127.0.0.1", agent.port, v3_user=V3_USER, v3_auth_key="not-the-key-000",
                        v3_priv_key=V3_PRIV, v3_context="UPS/apc-8641", timeout_s=0.5, retries=0)
    src = SnmpSource(SnmpClient(target), pdu_id="pdu-v3")
    try:
        with pytest.raises(SourceError, match="snmp PDU 127.0.0.1"):
            src.read()
    finally:
        src.close()
