"""Every local GPU through NVML (nvidia-ml-py): temperatures, power, clocks, utilisation, throttle reasons.

Power is the instant field (``NVML_FI_DEV_POWER_INSTANT``) where the driver has it and
``nvmlDeviceGetPowerUsage`` (a 1 s average on Ampere and newer) otherwise, with
``power_kind`` saying which; the power and thermal violation counters
(``nvmlDeviceGetViolationStatus``) say how long the GPU has been held back by each.

The reader takes the NVML module as an argument (``pynvml`` in production, a fake
with the same functions and constants in tests), so the parsing — units, sentinels,
"not supported" versus "failed" — is tested without a GPU. Units as NVML reports
them: power and limits in mW, memory in bytes, energy in mJ, clocks in MHz.

A call that NVML answers with ``NOT_SUPPORTED`` leaves the field absent (null, not
flagged: the GPU simply has no such sensor); any other NVML error, or a sentinel or
impossible value, leaves it null *and* flagged in ``invalid_fields``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from contracts.errors import SourceError
from contracts.messages import GpuReading, GpuSample, PowerKind
from ingest.validate import ABSENT, Checked, FieldChecker, check

log = logging.getLogger(__name__)

MW_TO_W = 0.001
BYTES_TO_MIB = 1.0 / (1024 * 1024)


def _call(nvml: Any, fn: Callable[..., Any], *args: Any) -> tuple[Any, bool]:
    """Call an NVML function: ``(value, failed)``; NOT_SUPPORTED gives ``(None, False)``."""
    try:
        return fn(*args), False
    except nvml.NVMLError as exc:
        not_supported = getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3)
        if getattr(exc, "value", None) == not_supported:
            return None, False
        return None, True


def _reading(nvml: Any, fn_name: str, *args: Any, field: str, scale: float = 1.0,
             pick: Callable[[Any], Any] | None = None) -> Checked:
    fn = getattr(nvml, fn_name, None)
    if fn is None:
        return ABSENT
    raw, failed = _call(nvml, fn, *args)
    if failed:
        return Checked(None, True)
    if raw is not None and pick is not None:
        raw = pick(raw)
    return check(raw, field, scale=scale)


def _clock_event_reasons(nvml: Any, handle: Any) -> tuple[int, bool]:
    """Current clock-event (throttle) reasons; newer drivers renamed the call "ClocksEvent"."""
    for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        fn = getattr(nvml, name, None)
        if fn is not None:
            raw, failed = _call(nvml, fn, handle)
            if failed:
                return 0, True
            return int(raw or 0) & 0xFFFFFFFF, False
    return 0, False


_VALUE_FIELDS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def _field_value(nvml: Any, handle: Any, field_name: str, *, field: str, scale: float = 1.0) -> Checked:
    """One value from the NVML field API (``nvmlDeviceGetFieldValues``); absent where the driver lacks it."""
    fn = getattr(nvml, "nvmlDeviceGetFieldValues", None)
    field_id = getattr(nvml, field_name, None)
    if fn is None or field_id is None:
        return ABSENT
    values, failed = _call(nvml, fn, handle, [field_id])
    if failed:
        return Checked(None, True)
    if not values:
        return ABSENT
    entry = values[0]
    ret = getattr(entry, "nvmlReturn", 0)
    if ret == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3):
        return ABSENT
    if ret != 0:
        return Checked(None, True)
    raw = getattr(entry.value, _VALUE_FIELDS.get(int(entry.valueType), "uiVal"))
    return check(raw, field, scale=scale)


def _memory_temp(nvml: Any, handle: Any) -> Checked:
    """HBM temperature from the NVML field API (``NVML_FI_DEV_MEMORY_TEMP``); absent where unsupported."""
    return _field_value(nvml, handle, "NVML_FI_DEV_MEMORY_TEMP", field="memory_temp_c")


def _power(nvml: Any, handle: Any) -> tuple[Checked, PowerKind]:
    """GPU power and its kind: the instant field where the driver has it, else ``nvmlDeviceGetPowerUsage``.

    ``nvmlDeviceGetPowerUsage`` is a 1 s average on Ampere and newer, which hides the
    sub-second bursts of LLM prefill; ``NVML_FI_DEV_POWER_INSTANT`` (driver 535+) is not.
    A broken instant field is not papered over with the average: it is flagged.
    """
    instant = _field_value(nvml, handle, "NVML_FI_DEV_POWER_INSTANT", field="power_usage_w", scale=MW_TO_W)
    if instant.value is not None or instant.invalid:
        return instant, "instant"
    average = _reading(nvml, "nvmlDeviceGetPowerUsage", handle, field="power_usage_w", scale=MW_TO_W)
    return average, "average" if average.value is not None or average.invalid else "unknown"


NS_TO_US = 0.001


def _threshold(nvml: Any, handle: Any, kind_name: str, field: str) -> Checked:
    """A temperature threshold by its NVML name (absent where this nvidia-ml-py lacks the constant)."""
    kind = getattr(nvml, kind_name, None)
    if kind is None:
        return ABSENT
    return _reading(nvml, "nvmlDeviceGetTemperatureThreshold", handle, kind, field=field)


def _violation_us(nvml: Any, handle: Any, policy_name: str, field: str) -> Checked:
    """Cumulative throttled time for one perf policy (``nvmlDeviceGetViolationStatus``), ns → µs."""
    policy = getattr(nvml, policy_name, None)
    if policy is None:
        return ABSENT
    return _reading(nvml, "nvmlDeviceGetViolationStatus", handle, policy, field=field, scale=NS_TO_US,
                    pick=lambda v: v.violationTime)


def read_gpu(nvml: Any, index: int) -> GpuReading:
    """One GPU's reading through the NVML-like module ``nvml`` (pure apart from those calls)."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    fc = FieldChecker()
    uuid, _ = _call(nvml, nvml.nvmlDeviceGetUUID, handle)
    if isinstance(uuid, bytes):
        uuid = uuid.decode(errors="replace")
    reasons, reasons_failed = _clock_event_reasons(nvml, handle)
    invalid_extra = ["clocks_event_reasons"] if reasons_failed else []
    power, power_kind = _power(nvml, handle)
    reading = GpuReading(
        gpu_index=index,
        uuid=uuid,
        gpu_temp_c=fc.take("gpu_temp_c", _reading(nvml, "nvmlDeviceGetTemperature", handle,
                                                  nvml.NVML_TEMPERATURE_GPU, field="gpu_temp_c")),
        memory_temp_c=fc.take("memory_temp_c", _memory_temp(nvml, handle)),
        power_usage_w=fc.take("power_usage_w", power),
        power_kind=power_kind,
        power_limit_w=fc.take("power_limit_w", _reading(nvml, "nvmlDeviceGetEnforcedPowerLimit", handle,
                                                        field="power_limit_w", scale=MW_TO_W)),
        sm_clock_mhz=fc.take("sm_clock_mhz", _reading(nvml, "nvmlDeviceGetClockInfo", handle, nvml.NVML_CLOCK_SM,
                                                      field="sm_clock_mhz")),
        mem_clock_mhz=fc.take("mem_clock_mhz", _reading(nvml, "nvmlDeviceGetClockInfo", handle,
                                                        nvml.NVML_CLOCK_MEM, field="mem_clock_mhz")),
        gpu_util_pct=fc.take("gpu_util_pct", _reading(nvml, "nvmlDeviceGetUtilizationRates", handle,
                                                      field="gpu_util_pct", pick=lambda u: u.gpu)),
        fb_used_mib=fc.take("fb_used_mib", _reading(nvml, "nvmlDeviceGetMemoryInfo", handle, field="fb_used_mib",
                                                    scale=BYTES_TO_MIB, pick=lambda m: m.used)),
        total_energy_mj=fc.take("total_energy_mj", _reading(nvml, "nvmlDeviceGetTotalEnergyConsumption", handle,
                                                            field="total_energy_mj")),
        slowdown_temp_c=fc.take("slowdown_temp_c", _reading(
            nvml, "nvmlDeviceGetTemperatureThreshold", handle, nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN,
            field="slowdown_temp_c")),
        memory_max_temp_c=fc.take("memory_max_temp_c", _threshold(nvml, handle, "NVML_TEMPERATURE_THRESHOLD_MEM_MAX",
                                                                  "memory_max_temp_c")),
        power_violation_us=fc.take("power_violation_us", _violation_us(
            nvml, handle, "NVML_PERF_POLICY_POWER", "power_violation_us")),
        thermal_violation_us=fc.take("thermal_violation_us", _violation_us(
            nvml, handle, "NVML_PERF_POLICY_THERMAL", "thermal_violation_us")),
        clocks_event_reasons=reasons,
        invalid_fields=[*fc.invalid_fields, *invalid_extra],
    )
    return reading


def open_nvml() -> Any:
    """Import and initialise ``pynvml``, turning a missing driver into a one-line :class:`SourceError`."""
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
        raise SourceError(f"nvml: nvidia-ml-py is not installed ({exc}); pip install nvidia-ml-py") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise SourceError(f"nvml: cannot initialise NVML ({exc}); is the NVIDIA driver installed and "
                          "loaded on this host? (nvidia-smi should list the GPUs)") from None
    return pynvml


class NvmlSource:
    """All GPUs of this host: ``read()`` returns ``[GpuSample]`` each round.

    Args:
        nvml: an initialised NVML module (``open_nvml()``) or a test double with the same names.
        server_id: key of the sample (defaults to the host name).
        now: clock returning an aware UTC datetime.
    """

    def __init__(self, nvml: Any, *, server_id: str | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.nvml = nvml
        self.server_id = server_id or socket.gethostname()
        self.now = now
        count, failed = _call(nvml, nvml.nvmlDeviceGetCount)
        if failed or not count:
            raise SourceError("nvml: no GPUs visible to NVML on this host (check CUDA_VISIBLE_DEVICES and drivers)")
        self.num_gpus = int(count)

    def read(self) -> list[GpuSample]:
        at = self.now()
        gpus = [read_gpu(self.nvml, i) for i in range(self.num_gpus)]
        return [GpuSample(server_id=self.server_id, sampled_at=at, gpus=gpus, source="nvml")]

    def close(self) -> None:
        shutdown = getattr(self.nvml, "nvmlShutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except self.nvml.NVMLError as exc:
                log.warning("event=nvml_shutdown_failed error=%s", exc)
