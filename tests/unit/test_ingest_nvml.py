"""The NVML reader's parsing, through a fake NVML module (a double for the library, not for Kafka).

No GPU machine was available to this work, so there is no recorded capture from a
real driver; the fake follows nvidia-ml-py's names, units (mW, bytes, mJ) and
error model (NVMLError with ``value``; NOT_SUPPORTED = 3).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts import ClockEventReason, GpuSample, SourceError
from ingest.sources.nvml import NvmlSource, read_gpu

T0 = datetime(2026, 11, 25, tzinfo=UTC)


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__(f"NVML error {value}")


@dataclass
class FakeGpu:
    temp_c: Any = 61
    power_mw: Any = 345_250
    limit_mw: Any = 700_000
    sm_mhz: Any = 1980
    mem_mhz: Any = 2619
    util_pct: Any = 87
    used_bytes: Any = 60 * 1024**3
    energy_mj: Any = 123_456_789
    reasons: Any = 0
    slowdown_c: Any = 87
    mem_temp_c: Any = 71
    mem_temp_ret: int = 0
    mem_max_c: Any = 95
    instant_mw: Any = None  # None: the driver has no NVML_FI_DEV_POWER_INSTANT (NOT_SUPPORTED)
    power_violation_ns: Any = 4_000_000_000
    thermal_violation_ns: Any = 1_500_000
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class Util:
    gpu: int
    memory: int = 0


@dataclass
class Mem:
    used: int
    total: int = 80 * 1024**3


@dataclass
class FieldValue:
    """Shaped like pynvml's c_nvmlFieldValue_t (valueType 1 = unsigned int)."""

    nvmlReturn: int
    valueType: int
    value: Any


@dataclass
class Value:
    uiVal: int


@dataclass
class ViolationTime:
    """Shaped like pynvml's c_nvmlViolationTime_t (reference time in µs, violation time in ns)."""

    referenceTime: int  # noqa: N815 - pynvml names
    violationTime: int  # noqa: N815


class FakeNvml:
    """The subset of pynvml the reader calls, with the real constants."""

    NVMLError = NVMLError
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_TEMPERATURE_GPU = 0
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
    NVML_TEMPERATURE_THRESHOLD_MEM_MAX = 5
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_FI_DEV_MEMORY_TEMP = 82
    NVML_FI_DEV_POWER_INSTANT = 186
    NVML_PERF_POLICY_POWER = 0
    NVML_PERF_POLICY_THERMAL = 1

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.shut_down = False

    def _get(self, handle: int, name: str, value: Any) -> Any:
        if name in self.gpus[handle].errors:
            raise NVMLError(self.gpus[handle].errors[name])
        return value

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 - pynvml names
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:  # noqa: N802
        return f"GPU-{h:08d}"

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> Any:  # noqa: N802
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._get(h, "temp", self.gpus[h].temp_c)

    def nvmlDeviceGetPowerUsage(self, h: int) -> Any:  # noqa: N802
        return self._get(h, "power", self.gpus[h].power_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> Any:  # noqa: N802
        return self._get(h, "limit", self.gpus[h].limit_mw)

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> Any:  # noqa: N802
        return self._get(h, "clock", self.gpus[h].sm_mhz if clock == self.NVML_CLOCK_SM else self.gpus[h].mem_mhz)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Util:  # noqa: N802
        return self._get(h, "util", Util(self.gpus[h].util_pct))  # type: ignore[no-any-return]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Mem:  # noqa: N802
        return self._get(h, "mem", Mem(self.gpus[h].used_bytes))  # type: ignore[no-any-return]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> Any:  # noqa: N802
        return self._get(h, "energy", self.gpus[h].energy_mj)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> Any:  # noqa: N802
        return self._get(h, "reasons", self.gpus[h].reasons)

    def nvmlDeviceGetTemperatureThreshold(self, h: int, kind: int) -> Any:  # noqa: N802
        if kind == self.NVML_TEMPERATURE_THRESHOLD_MEM_MAX:
            return self._get(h, "mem_max", self.gpus[h].mem_max_c)
        assert kind == self.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
        return self._get(h, "slowdown", self.gpus[h].slowdown_c)

    def nvmlDeviceGetFieldValues(self, h: int, ids: list[int]) -> list[FieldValue]:  # noqa: N802
        gpu = self.gpus[h]
        out = []
        for fid in ids:
            if fid == self.NVML_FI_DEV_MEMORY_TEMP:
                out.append(FieldValue(gpu.mem_temp_ret, 1, Value(gpu.mem_temp_c)))
            elif fid == self.NVML_FI_DEV_POWER_INSTANT:
                ret = self.NVML_ERROR_NOT_SUPPORTED if gpu.instant_mw is None else 0
                out.append(FieldValue(ret, 1, Value(gpu.instant_mw or 0)))
            else:
                raise AssertionError(f"unexpected field id {fid}")
        return out

    def nvmlDeviceGetViolationStatus(self, h: int, policy: int) -> ViolationTime:  # noqa: N802
        gpu = self.gpus[h]
        ns = {self.NVML_PERF_POLICY_POWER: gpu.power_violation_ns,
              self.NVML_PERF_POLICY_THERMAL: gpu.thermal_violation_ns}[policy]
        return self._get(h, "violation", ViolationTime(referenceTime=1_700_000_000_000_000, violationTime=ns))  # type: ignore[no-any-return]

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shut_down = True


def test_units_are_converted_to_the_contract() -> None:
    r = read_gpu(FakeNvml([FakeGpu()]), 0)
    assert r.gpu_temp_c == 61 and r.slowdown_temp_c == 87 and r.memory_temp_c == 71 and r.memory_max_temp_c == 95
    assert r.power_usage_w == 345.25 and r.power_limit_w == 700.0  # mW -> W
    assert r.sm_clock_mhz == 1980 and r.mem_clock_mhz == 2619 and r.gpu_util_pct == 87
    assert r.fb_used_mib == 60 * 1024  # bytes -> MiB
    assert r.total_energy_mj == 123_456_789
    assert r.uuid == "GPU-00000000" and r.invalid_fields == []


def test_memory_temperature_not_supported_is_absent_and_a_sentinel_is_flagged() -> None:
    absent = read_gpu(FakeNvml([FakeGpu(mem_temp_ret=FakeNvml.NVML_ERROR_NOT_SUPPORTED)]), 0)
    assert absent.memory_temp_c is None and absent.invalid_fields == []
    broken = read_gpu(FakeNvml([FakeGpu(mem_temp_c=0xFFFFFFFF)]), 0)
    assert broken.memory_temp_c is None and broken.invalid_fields == ["memory_temp_c"]


def test_average_power_is_the_fallback_and_says_so() -> None:
    r = read_gpu(FakeNvml([FakeGpu()]), 0)  # driver without the instant field
    assert r.power_usage_w == 345.25 and r.power_kind == "average"


def test_instant_power_is_preferred_over_the_one_second_average() -> None:
    r = read_gpu(FakeNvml([FakeGpu(power_mw=345_250, instant_mw=512_000)]), 0)
    assert r.power_usage_w == 512.0 and r.power_kind == "instant"
    sample = NvmlSource(FakeNvml([FakeGpu(instant_mw=512_000)]), server_id="h", now=lambda: T0).read()[0]
    assert GpuSample.model_validate_json(sample.model_dump_json()).gpus[0].power_kind == "instant"


def test_a_broken_instant_field_is_flagged_not_replaced_by_the_average() -> None:
    r = read_gpu(FakeNvml([FakeGpu(instant_mw=0xFFFFFFFF)]), 0)
    assert r.power_usage_w is None and r.invalid_fields == ["power_usage_w"] and r.power_kind == "instant"


def test_no_power_reading_at_all_is_unknown() -> None:
    r = read_gpu(FakeNvml([FakeGpu(errors={"power": FakeNvml.NVML_ERROR_NOT_SUPPORTED})]), 0)
    assert r.power_usage_w is None and r.power_kind == "unknown" and r.invalid_fields == []


def test_violation_counters_are_read_in_microseconds() -> None:
    r = read_gpu(FakeNvml([FakeGpu(power_violation_ns=4_000_000_000, thermal_violation_ns=1_500_000)]), 0)
    assert r.power_violation_us == 4_000_000.0 and r.thermal_violation_us == 1_500.0
    missing = read_gpu(FakeNvml([FakeGpu(errors={"violation": FakeNvml.NVML_ERROR_NOT_SUPPORTED})]), 0)
    assert missing.power_violation_us is None and missing.thermal_violation_us is None
    assert missing.invalid_fields == []
    lost = read_gpu(FakeNvml([FakeGpu(errors={"violation": FakeNvml.NVML_ERROR_GPU_IS_LOST})]), 0)
    assert lost.invalid_fields == ["power_violation_us", "thermal_violation_us"]


def test_throttle_reasons_are_kept_as_the_bitmask() -> None:
    reasons = int(ClockEventReason.HW_THERMAL_SLOWDOWN | ClockEventReason.SW_POWER_CAP | ClockEventReason.HW_SLOWDOWN)
    r = read_gpu(FakeNvml([FakeGpu(reasons=reasons)]), 0)
    assert r.clocks_event_reasons == reasons
    assert r.thermal_throttled and r.power_throttled


def test_not_supported_is_absent_but_other_errors_are_flagged() -> None:
    gpu = FakeGpu(errors={"energy": FakeNvml.NVML_ERROR_NOT_SUPPORTED, "temp": FakeNvml.NVML_ERROR_GPU_IS_LOST})
    r = read_gpu(FakeNvml([gpu]), 0)
    assert r.total_energy_mj is None and "total_energy_mj" not in r.invalid_fields
    assert r.gpu_temp_c is None and r.invalid_fields == ["gpu_temp_c"]


@pytest.mark.parametrize(("attr", "raw", "field"), [
    ("temp_c", 0xFFFFFFFF, "gpu_temp_c"),
    ("temp_c", -127, "gpu_temp_c"),
    ("power_mw", 0xFFFFFFFF, "power_usage_w"),
    ("util_pct", 255, "gpu_util_pct"),
    ("power_mw", 5_000_000, "power_usage_w"),  # 5 kW on one GPU: impossible
])
def test_sentinels_and_impossible_values_are_flagged(attr: str, raw: int, field: str) -> None:
    r = read_gpu(FakeNvml([FakeGpu(**{attr: raw})]), 0)
    assert getattr(r, field) is None
    assert r.invalid_fields == [field]


def test_source_reads_every_gpu_into_one_sample() -> None:
    nvml = FakeNvml([FakeGpu(temp_c=50 + i) for i in range(8)])
    src = NvmlSource(nvml, server_id="gpu-host-1", now=lambda: T0)
    (sample,) = src.read()
    assert sample.server_id == "gpu-host-1" and sample.sampled_at == T0 and sample.source == "nvml"
    assert [g.gpu_index for g in sample.gpus] == list(range(8))
    assert sample.hottest_gpu_temp_c == 57
    src.close()
    assert nvml.shut_down


def test_no_gpus_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="no GPUs"):
        NvmlSource(FakeNvml([]))


@pytest.mark.integration
def test_cli_without_driver_exits_2_with_one_line() -> None:
    """On this machine there is no NVIDIA driver: one clear line on stderr, exit code 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "tapas.cli", "ingest", "nvml", "--once", "--stdout"],
                          capture_output=True, text=True, timeout=60, check=False)
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present here; the no-driver path cannot be observed")
    except pynvml.NVMLError:
        pass
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: nvml:")
    assert proc.stdout == ""
