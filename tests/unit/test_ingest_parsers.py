"""Pure parsing of PDU (SNMP) and BMC (Redfish) documents, and profile selection."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from contracts import SourceError
from ingest.sources import redfish, snmp

T0 = datetime(2026, 11, 25, tzinfo=UTC)


def test_rpdu2_hundredths_of_kw_and_tenths() -> None:
    values = {
        f"{snmp.RPDU2_DEVICE_POWER}.1": 402, f"{snmp.RPDU2_DEVICE_ENERGY}.1": 12345,
        f"{snmp.RPDU2_PHASE_CURRENT}.1": 61, f"{snmp.RPDU2_PHASE_CURRENT}.2": 70, f"{snmp.RPDU2_PHASE_CURRENT}.3": 9,
        f"{snmp.RPDU2_PHASE_POWER}.1": 140, f"{snmp.RPDU2_BANK_CURRENT}.1": 33,
        f"{snmp.RPDU2_OUTLET_CURRENT}.1": 12, f"{snmp.RPDU2_OUTLET_POWER}.1": 250,
    }
    s = snmp.parse_rpdu2(values, pdu_id="p", sampled_at=T0)
    assert s.power_w == 4020.0 and s.energy_kwh == 1234.5 and s.current_a == 14.0
    by = {p.name: p for p in s.phases}
    assert by["phase1"].power_w == 1400.0 and by["phase2"].power_w is None
    assert by["bank1"].current_a == 3.3 and by["outlet1"].current_a == 1.2 and by["outlet1"].power_w == 250
    assert s.invalid_fields == []


def test_rpdu2_bad_phase_current_flags_the_total() -> None:
    values = {f"{snmp.RPDU2_DEVICE_POWER}.1": 100, f"{snmp.RPDU2_PHASE_CURRENT}.1": 61,
              f"{snmp.RPDU2_PHASE_CURRENT}.2": -1}
    s = snmp.parse_rpdu2(values, pdu_id="p", sampled_at=T0)
    assert s.current_a is None
    assert s.invalid_fields == ["phases.phase2.current_a", "current_a"]


def test_rpdu_first_generation_sums_phase_rows_only() -> None:
    values = {snmp.RPDU_DEVICE_POWER_W: 1230,
              f"{snmp.RPDU_LOAD}.1": 66, f"{snmp.RPDU_LOAD}.2": 40, f"{snmp.RPDU_LOAD}.3": 25,
              f"{snmp.RPDU_LOAD_PHASE}.1": 1, f"{snmp.RPDU_LOAD_PHASE}.2": 0, f"{snmp.RPDU_LOAD_PHASE}.3": 0,
              f"{snmp.RPDU_LOAD_BANK}.1": 0, f"{snmp.RPDU_LOAD_BANK}.2": 1, f"{snmp.RPDU_LOAD_BANK}.3": 2}
    s = snmp.parse_rpdu(values, pdu_id="p", sampled_at=T0)
    assert s.power_w == 1230 and s.current_a == 6.6
    assert [p.name for p in s.phases] == ["phase1", "bank1", "bank2"]


@pytest.mark.parametrize(("oid", "descr", "name"), [
    ("1.3.6.1.4.1.318.1.3.4.6", "", "apc-rpdu2"),
    (".1.3.6.1.4.1.318.1.3.4.8", "", "apc-rpdu2"),
    ("1.3.6.1.4.1.318.1.3.4.99", "APC ... AN1:apc_hw05_rpdu2g_672.bin", "apc-rpdu2"),
    ("1.3.6.1.4.1.318.1.3.4.5", "", "apc-rpdu"),
])
def test_profile_selection(oid: str, descr: str, name: str) -> None:
    assert snmp.select_profile(oid, descr).name == name


def test_unknown_device_names_the_oid_and_the_fix() -> None:
    with pytest.raises(SourceError, match=r"1\.3\.6\.1\.4\.1\.534.*--profile"):
        snmp.select_profile("1.3.6.1.4.1.534.6.6.7", "Eaton ePDU")


class DictClient:
    """A Redfish service as a dict of documents (pure discovery logic test)."""

    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs
        self.calls: list[str] = []

    def get(self, path: str) -> dict[str, Any] | None:
        self.calls.append(path)
        return self.docs.get(path.rstrip("/") or path)


def service(sensor_reading: Any, *, context: str = "Intake") -> dict[str, dict[str, Any]]:
    return {
        "/redfish/v1": {"Chassis": {"@odata.id": "/redfish/v1/Chassis"}},
        "/redfish/v1/Chassis": {"Members": [{"@odata.id": "/redfish/v1/Chassis/A"}]},
        "/redfish/v1/Chassis/A": {"Sensors": {"@odata.id": "/redfish/v1/Chassis/A/Sensors"},
                                  "EnvironmentMetrics": {"@odata.id": "/redfish/v1/Chassis/A/EnvironmentMetrics"}},
        "/redfish/v1/Chassis/A/Sensors": {"Members": [{"@odata.id": "/redfish/v1/Chassis/A/Sensors/T1"},
                                                      {"@odata.id": "/redfish/v1/Chassis/A/Sensors/T2"}]},
        "/redfish/v1/Chassis/A/Sensors/T1": {"PhysicalContext": "Exhaust", "ReadingUnits": "Cel", "Reading": 41},
        "/redfish/v1/Chassis/A/Sensors/T2": {"PhysicalContext": context, "ReadingUnits": "Cel",
                                             "Reading": sensor_reading},
        "/redfish/v1/Chassis/A/EnvironmentMetrics": {"PowerWatts": {"Reading": 3120.5}},
    }


def test_discovery_then_two_gets_per_poll() -> None:
    client = DictClient(service(22.5))
    src = redfish.RedfishSource(client, server_id="s1", now=lambda: T0)
    first = src.read()[0]
    client.calls.clear()
    second = src.read()[0]
    assert first.inlet_temp_c == second.inlet_temp_c == 22.5 and second.chassis_power_w == 3120.5
    assert client.calls == ["/redfish/v1/Chassis/A/Sensors/T2", "/redfish/v1/Chassis/A/EnvironmentMetrics"]


@pytest.mark.parametrize("reading", [None, -127, float("nan"), 0xFFFF])
def test_broken_intake_sensor_is_flagged(reading: Any) -> None:
    (s,) = redfish.RedfishSource(DictClient(service(reading)), server_id="s1", now=lambda: T0).read()
    assert s.inlet_temp_c is None and s.invalid_fields == ["inlet_temp_c"]
    assert s.chassis_power_w == 3120.5


def test_no_intake_anywhere_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="PhysicalContext 'Intake'"):
        redfish.RedfishSource(DictClient(service(20, context="CPU")), server_id="s1").read()


# --------------------------------------------------------------------------- former fuzz crashes (regressions)


def test_check_flags_an_integer_beyond_float_range_instead_of_overflowing() -> None:
    from ingest.validate import Checked, check

    assert check(10**400, "chassis_power_w") == Checked(None, True)
    assert check(-(10**400), "inlet_temp_c") == Checked(None, True)


def test_rpdu2_huge_counter_is_flagged() -> None:
    values = {f"{snmp.RPDU2_DEVICE_POWER}.1": 10**400, f"{snmp.RPDU2_PHASE_CURRENT}.1": 65}
    s = snmp.parse_rpdu2(values, pdu_id="p", sampled_at=T0)
    assert s.power_w is None and s.invalid_fields == ["power_w"] and s.current_a == 6.5


@pytest.mark.parametrize("bank", ["text", 1.5, -1, 10**400, float("nan")])
def test_rpdu_non_numeric_bank_number_is_a_source_error_naming_pdu_and_oid(bank: Any) -> None:
    values = {snmp.RPDU_DEVICE_POWER_W: 1230, f"{snmp.RPDU_LOAD}.1": 66, f"{snmp.RPDU_LOAD_BANK}.1": bank}
    with pytest.raises(SourceError, match=rf"snmp PDU p: rPDULoadStatusBankNumber \({snmp.RPDU_LOAD_BANK}\.1\)"):
        snmp.parse_rpdu(values, pdu_id="p", sampled_at=T0)


def test_rpdu_numeric_text_and_whole_float_bank_numbers_still_parse() -> None:
    values = {snmp.RPDU_DEVICE_POWER_W: 1230, f"{snmp.RPDU_LOAD}.1": 66, f"{snmp.RPDU_LOAD_BANK}.1": "2",
              f"{snmp.RPDU_LOAD}.2": 40, f"{snmp.RPDU_LOAD_BANK}.2": 0.0, f"{snmp.RPDU_LOAD_PHASE}.2": 3.0}
    s = snmp.parse_rpdu(values, pdu_id="p", sampled_at=T0)
    assert [p.name for p in s.phases] == ["bank2", "phase3"] and s.current_a == 4.0


class ListClient:
    """A BMC whose every resource is a JSON list."""

    def get(self, path: str) -> Any:
        return []


def test_redfish_discovery_refuses_a_list_document_naming_the_uri() -> None:
    with pytest.raises(SourceError, match=r"redfish: /redfish/v1/ answered a JSON array instead of an object"):
        redfish.RedfishSource(ListClient(), server_id="s1").read()


@pytest.mark.parametrize("answer", [[], "oops", 3])
def test_redfish_poll_flags_readings_whose_documents_are_not_objects(answer: Any) -> None:
    docs: dict[str, Any] = service(22.5)
    client = DictClient(docs)
    src = redfish.RedfishSource(client, server_id="s1", now=lambda: T0)
    src.read()  # discovery on good documents
    docs["/redfish/v1/Chassis/A/Sensors/T2"] = answer
    docs["/redfish/v1/Chassis/A/EnvironmentMetrics"] = answer
    (s,) = src.read()
    assert s.inlet_temp_c is None and s.chassis_power_w is None
    assert s.invalid_fields == ["inlet_temp_c", "chassis_power_w"]


def test_redfish_malformed_members_are_skipped() -> None:
    docs: dict[str, Any] = service(22.5)
    docs["/redfish/v1/Chassis/A/Sensors"] = {"Members": [{"@odata.id": 7}, "x", {"@odata.id": "/redfish/v1/Chassis/A/Sensors/T2"}]}
    docs["/redfish/v1/Chassis/A/EnvironmentMetrics"] = {"PowerWatts": {"Reading": 3120.5}, "PowerControl": 5}
    (s,) = redfish.RedfishSource(DictClient(docs), server_id="s1", now=lambda: T0).read()
    assert s.inlet_temp_c == 22.5 and s.invalid_fields == []
    assert redfish.intake_from_thermal({"Temperatures": 5}) == (redfish.Checked(None, False), None)
    assert redfish.power_from_power({"PowerControl": 5}) == redfish.Checked(None, False)


def _replay_row(**cells: Any) -> dict[str, Any]:
    return {"server_id": "s1", "at_s": 10.0, "hottest_gpu_temp_c": 66.0, "gpu_power_w": 2400.0,
            "server_power_w": 4100.0, "inlet_temp_c": 24.0, "mean_gpu_util_pct": 70.0,
            "prefill_tokens_per_s": 1500.0, "decode_tokens_per_s": 600.0, "batch_size": 12.0,
            "frequency_cap_mhz": 1410.0, "config_id": "cfg", "num_gpus": 8, "slowdown_temp_c": 87.0,
            "pdu_id": "pdu-1", **cells}


@pytest.mark.parametrize("num_gpus", [0.5, 0, 65, "text", 2.5, float("inf"), 10**400])
def test_replay_unusable_num_gpus_is_a_source_error_naming_the_column(num_gpus: Any) -> None:
    from ingest.sources.replay import BadCell, row_messages

    with pytest.raises(BadCell, match=r"replay: column 'num_gpus': .* is not a whole number of GPUs 1-64") as err:
        row_messages(_replay_row(num_gpus=num_gpus), T0)
    assert isinstance(err.value, SourceError) and err.value.column == "num_gpus"


@pytest.mark.parametrize(("column", "value"), [("prefill_tokens_per_s", "text"), ("batch_size", -1),
                                               ("decode_tokens_per_s", [1, 2]), ("batch_size", 10**400)])
def test_replay_bad_workload_cell_drops_the_workload_with_a_note_and_keeps_the_readings(column: str,
                                                                                       value: Any) -> None:
    from ingest.sources.replay import row_messages

    notes: list[str] = []
    gpu, inlet = row_messages(_replay_row(**{column: value}), T0, notes)
    assert gpu.workload is None and gpu.hottest_gpu_temp_c == 66.0 and gpu.gpu_power_w == pytest.approx(2400.0)
    assert len(notes) == 1 and notes[0].startswith(f"column {column!r}:") and "workload context dropped" in notes[0]
    assert inlet is not None and inlet.inlet_temp_c == 24.0


@pytest.mark.parametrize("value", ["text", [1], 10**400, "1e999"])
def test_replay_text_list_or_huge_readings_are_flagged(value: Any) -> None:
    from ingest.sources.replay import pdu_messages, row_messages

    row = _replay_row(gpu_power_w=value, inlet_temp_c=value, server_power_w=value)
    gpu, inlet = row_messages(row, T0)
    assert gpu.gpu_power_w is None and gpu.gpus[0].invalid_fields == ["power_usage_w"]
    assert inlet is not None and inlet.invalid_fields == ["inlet_temp_c", "chassis_power_w"]
    (pdu,) = pdu_messages([row], T0)
    assert pdu.power_w is None and pdu.invalid_fields == ["power_w"]


def test_replay_file_reports_and_counts_bad_rows_never_dropping_them_silently(tmp_path: Any) -> None:
    import pandas as pd

    from contracts import GpuSample
    from ingest.sources.replay import ReplaySource

    rows = [_replay_row(server_id="a"), _replay_row(server_id="b", num_gpus=0.5),
            _replay_row(server_id="c", batch_size=-1), _replay_row(server_id="d", at_s=None)]
    path = tmp_path / "rec.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    src = ReplaySource(path, speed=0, start_at=T0)
    out = [m for r in src.rounds() for m in r]
    gpus = [m for m in out if isinstance(m, GpuSample)]
    assert [g.server_id for g in gpus] == ["a", "c"] and gpus[1].workload is None
    assert src.rejected_rows == 2
    assert len(src.notes) == 3
    assert any(f"replay {path} row 2: column 'num_gpus': 0.5" in n and "row skipped" in n for n in src.notes)
    assert any(f"replay {path} row 3: column 'batch_size'" in n for n in src.notes)
    assert any(f"replay {path} row 4: column 'at_s'" in n and "row skipped" in n for n in src.notes)
