"""Edge rules: sentinels and impossible readings become null + flagged, never dropped, never passed as good."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import ContractError, GpuReading, GpuSample, InletSample, PduPowerSample, validate_obj
from ingest.validate import RANGES, SENTINELS, Checked, FieldChecker, check, count_invalid

T0 = datetime(2026, 11, 25, tzinfo=UTC)

# Which contract model and field each edge-rule range guards.
GUARDED = {
    "gpu_temp_c": (GpuReading, "gpu_temp_c"), "memory_temp_c": (GpuReading, "memory_temp_c"),
    "slowdown_temp_c": (GpuReading, "slowdown_temp_c"), "power_usage_w": (GpuReading, "power_usage_w"),
    "power_limit_w": (GpuReading, "power_limit_w"), "sm_clock_mhz": (GpuReading, "sm_clock_mhz"),
    "mem_clock_mhz": (GpuReading, "mem_clock_mhz"), "gpu_util_pct": (GpuReading, "gpu_util_pct"),
    "fb_used_mib": (GpuReading, "fb_used_mib"), "total_energy_mj": (GpuReading, "total_energy_mj"),
    "inlet_temp_c": (InletSample, "inlet_temp_c"), "chassis_power_w": (InletSample, "chassis_power_w"),
    "pdu_power_w": (PduPowerSample, "power_w"), "pdu_current_a": (PduPowerSample, "current_a"),
}
BASE = {
    GpuReading: {"gpu_index": 0, "gpu_temp_c": None, "power_usage_w": None},
    InletSample: {"server_id": "s", "sampled_at": T0, "inlet_temp_c": None},
    PduPowerSample: {"pdu_id": "p", "sampled_at": T0, "power_w": None},
}


@pytest.mark.parametrize("name", sorted(GUARDED))
def test_edge_ranges_never_exceed_the_contract(name: str) -> None:
    model, field = GUARDED[name]
    for bound in (RANGES[name].lo, RANGES[name].hi):
        validate_obj(model, {**BASE[model], field: bound})  # must not raise


@pytest.mark.parametrize("raw", [-127, 0xFFFF, 0xFFFFFFFF, float("nan"), float("inf"), -float("inf")])
def test_sentinels_are_flagged(raw: float) -> None:
    assert check(raw, "inlet_temp_c") == Checked(None, True)


@pytest.mark.parametrize(("raw", "field", "scale", "expected"), [
    (24.8, "inlet_temp_c", 1.0, 24.8),
    (121, "pdu_power_w", 10.0, 1210.0),       # APC hundredths of kW
    (38, "phase_current_a", 0.1, 3.8),        # tenths of A, no float noise
    (345_000, "power_usage_w", 0.001, 345.0),  # NVML milliwatts
])
def test_unit_conversion(raw: float, field: str, scale: float, expected: float) -> None:
    assert check(raw, field, scale=scale) == Checked(expected, False)


@pytest.mark.parametrize(("raw", "field"), [(-5.0, "power_usage_w"), (295.6, "inlet_temp_c"), (101, "gpu_util_pct"),
                                             ("n/a", "gpu_temp_c")])
def test_impossible_readings_are_flagged(raw: object, field: str) -> None:
    assert check(raw, field) == Checked(None, True)  # type: ignore[arg-type]


def test_absent_is_neither_value_nor_invalid() -> None:
    assert check(None, "gpu_temp_c") == Checked(None, False)


@given(raw=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**40), 2**40),
                     st.sampled_from(sorted(SENTINELS))),
       field=st.sampled_from(sorted(GUARDED)))
def test_any_raw_reading_gives_a_message_that_validates(raw: float, field: str) -> None:
    """Whatever a device sends, the edge rules yield a value the contract accepts or a flagged null."""
    result = check(raw, field)
    if result.invalid:
        assert result.value is None
    else:
        assert result.value is not None and math.isfinite(result.value)
        assert RANGES[field].lo <= result.value <= RANGES[field].hi
    model, name = GUARDED[field]
    try:
        validate_obj(model, {**BASE[model], name: result.value})
    except ContractError as exc:  # pragma: no cover - the property under test
        pytest.fail(f"{field}={raw!r} passed the edge rules but the contract refused it: {exc}")


def test_field_checker_and_count_invalid() -> None:
    fc = FieldChecker()
    temp = fc.take("gpu_temp_c", check(-127, "gpu_temp_c"))
    power = fc.take("power_usage_w", check(300, "power_usage_w"))
    reading = GpuReading(gpu_index=0, gpu_temp_c=temp, power_usage_w=power, invalid_fields=fc.invalid_fields)
    sample = GpuSample(server_id="s", sampled_at=T0, gpus=[reading, reading])
    assert reading.gpu_temp_c is None and reading.power_usage_w == 300
    assert count_invalid(sample) == 2
