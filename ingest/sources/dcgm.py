"""GPU readings from NVIDIA dcgm-exporter's Prometheus text (what GPU-Operator nodes already run).

dcgm-exporter serves one line per GPU and field, labelled ``gpu`` (index), ``UUID``
and ``Hostname`` (plus ``device``, ``modelName``, ``pci_bus_id`` and, with pod
mapping, ``namespace``/``pod``/``container``). Units are DCGM's, which are already
the contract's: °C, W, MHz, MiB, mJ; the violation counters are µs. Fields map by
the DCGM name the contract's field descriptions cite (``gpu_temp_c`` ←
``DCGM_FI_DEV_GPU_TEMP``).

DCGM reports "no value" with blank codes rather than omitting the line
(``DCGM_INT64_BLANK`` = 2^63 - 16 and the codes just above it, NOT_SUPPORTED
2^63 - 14 among them; ``DCGM_FP64_BLANK`` = 2^47). As Prometheus text values are
floats the int64 codes cannot be told apart, so every blank code leaves the field
absent (null, not flagged), as NVML's NOT_SUPPORTED does; impossible values leave it
null and flagged in ``invalid_fields``.

Parsing (:func:`parse_dcgm_text`) is pure and uses ``prometheus_client.parser``;
the HTTP GET is injected into :class:`DcgmSource`. Under GPU-Operator the ``Hostname``
label is the node name (the operator sets ``NODE_NAME``); elsewhere pass ``--server-id``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from contracts.errors import SourceError
from contracts.messages import GpuReading, GpuSample, PowerKind
from ingest.validate import ABSENT, Checked, FieldChecker, check

log = logging.getLogger(__name__)

DCGM_INT64_BLANK = 0x7FFFFFFFFFFFFFF0
DCGM_FP64_BLANK = 140737488355328.0

#: contract field ← DCGM field (dcgm-exporter's metric name).
FIELDS: dict[str, str] = {
    "gpu_temp_c": "DCGM_FI_DEV_GPU_TEMP",
    "memory_temp_c": "DCGM_FI_DEV_MEMORY_TEMP",
    "power_limit_w": "DCGM_FI_DEV_ENFORCED_POWER_LIMIT",
    "sm_clock_mhz": "DCGM_FI_DEV_SM_CLOCK",
    "mem_clock_mhz": "DCGM_FI_DEV_MEM_CLOCK",
    "gpu_util_pct": "DCGM_FI_DEV_GPU_UTIL",
    "fb_used_mib": "DCGM_FI_DEV_FB_USED",
    "total_energy_mj": "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "slowdown_temp_c": "DCGM_FI_DEV_SLOWDOWN_TEMP",
    "memory_max_temp_c": "DCGM_FI_DEV_MEM_MAX_OP_TEMP",
    "power_violation_us": "DCGM_FI_DEV_POWER_VIOLATION",
    "thermal_violation_us": "DCGM_FI_DEV_THERMAL_VIOLATION",
}
POWER_INSTANT = "DCGM_FI_DEV_POWER_USAGE_INSTANT"
POWER_AVERAGE = "DCGM_FI_DEV_POWER_USAGE"
#: The clock-event bitmask under its old and new DCGM names.
REASONS = ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS")
WANTED = frozenset({*FIELDS.values(), POWER_INSTANT, POWER_AVERAGE, *REASONS})


def _blank(raw: float) -> Checked | None:
    """ABSENT for a DCGM blank code (no value), None when ``raw`` is a real value."""
    if raw >= float(DCGM_INT64_BLANK) or raw == DCGM_FP64_BLANK:
        return ABSENT
    return None


def _checked(values: dict[str, float], dcgm_name: str, field: str) -> Checked:
    raw = values.get(dcgm_name)
    if raw is None:
        return ABSENT
    return _blank(raw) or check(raw, field)


def _power(values: dict[str, float]) -> tuple[Checked, PowerKind]:
    """The instant power where the exporter has it (newer DCGM), else the averaged field."""
    instant = _checked(values, POWER_INSTANT, "power_usage_w")
    if instant.value is not None or instant.invalid:
        return instant, "instant"
    average = _checked(values, POWER_AVERAGE, "power_usage_w")
    return average, "average" if average.value is not None or average.invalid else "unknown"


def _reading(index: int, uuid: str | None, values: dict[str, float]) -> GpuReading:
    fc = FieldChecker()
    taken = {name: fc.take(name, _checked(values, dcgm, name)) for name, dcgm in FIELDS.items()}
    power, kind = _power(values)
    power_w = fc.take("power_usage_w", power)
    reasons = 0
    for name in REASONS:
        raw = values.get(name)
        if raw is not None and _blank(raw) is None and 0 <= raw <= 0xFFFFFFFF:
            reasons = int(raw)
            break
    return GpuReading(gpu_index=index, uuid=uuid, power_usage_w=power_w, power_kind=kind,
                      clocks_event_reasons=reasons, invalid_fields=fc.invalid_fields, **taken)


def parse_dcgm_text(text: str, *, sampled_at: datetime, server_id: str | None = None) -> list[GpuSample]:
    """One :class:`GpuSample` per ``Hostname`` in a dcgm-exporter scrape (``server_id`` overrides it).

    Examples:
        >>> from datetime import UTC, datetime
        >>> text = ('DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a",Hostname="n1"} 61\\n'
        ...         'DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-a",Hostname="n1"} 312.5\\n')
        >>> (s,) = parse_dcgm_text(text, sampled_at=datetime(2026, 1, 1, tzinfo=UTC))
        >>> s.server_id, s.gpus[0].gpu_temp_c, s.gpus[0].power_usage_w, s.gpus[0].power_kind
        ('n1', 61.0, 312.5, 'average')

    Raises:
        SourceError: when the text is not Prometheus exposition format, a GPU line has no
            ``gpu`` index label, or the scrape holds no DCGM GPU field at all.
    """
    per_host: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    uuids: dict[tuple[str, int], str] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise SourceError(f"dcgm: the scrape is not Prometheus text ({exc}); is --url dcgm-exporter's /metrics?") \
            from None
    for family in families:
        if family.name not in WANTED:
            continue
        for sample in family.samples:
            # the parser names a counter's samples ``<family>_total`` although dcgm-exporter writes none
            if sample.name not in (family.name, family.name + "_total"):
                continue
            labels = sample.labels
            gpu = labels.get("gpu", "")
            if not gpu.isdigit() or int(gpu) > 63:
                raise SourceError(f"dcgm: {family.name} has gpu label {gpu!r}, not an index 0-63 "
                                  "(is this dcgm-exporter output?)")
            host = server_id or labels.get("Hostname") or ""
            if not host:
                raise SourceError(f"dcgm: {family.name} carries no Hostname label; pass --server-id")
            per_host[host][int(gpu)][family.name] = float(sample.value)
            if labels.get("UUID"):
                uuids[(host, int(gpu))] = labels["UUID"]
    if not per_host:
        raise SourceError("dcgm: no DCGM_FI_DEV_* GPU field in the scrape (check --url and the exporter's "
                          "counters file: DCGM_FI_DEV_GPU_TEMP and DCGM_FI_DEV_POWER_USAGE are needed)")
    return [
        GpuSample(server_id=host, sampled_at=sampled_at, source="dcgm",
                  gpus=[_reading(i, uuids.get((host, i)), gpus[i]) for i in sorted(gpus)])
        for host, gpus in sorted(per_host.items())
    ]


class TextGetter(Protocol):
    """Fetch a URL's body as text (raising :class:`SourceError` on failure)."""

    def get_text(self, url: str) -> str: ...


class RequestsTextGetter:
    """:class:`TextGetter` over a ``requests`` session (keep-alive across polls)."""

    def __init__(self, *, timeout_s: float = 5.0, session: Any = None) -> None:
        import requests

        self._requests = requests
        self.session = session or requests.Session()
        self.timeout_s = timeout_s

    def get_text(self, url: str) -> str:
        try:
            resp = self.session.get(url, timeout=self.timeout_s)
        except self._requests.RequestException as exc:
            raise SourceError(f"dcgm {url}: {exc.__class__.__name__}: {exc} (is dcgm-exporter running? "
                              "default port 9400)") from None
        if resp.status_code != 200:
            raise SourceError(f"dcgm {url}: HTTP {resp.status_code}")
        return str(resp.text)

    def close(self) -> None:
        self.session.close()


class DcgmSource:
    """Scrapes one dcgm-exporter: ``read()`` returns one ``GpuSample`` per host in the scrape.

    Args:
        url: the exporter's metrics URL (``http://node:9400/metrics``).
        getter: the HTTP seam (:class:`RequestsTextGetter` in production).
        server_id: key of the samples; default the ``Hostname`` label of each line.
        now: clock returning an aware UTC datetime.
    """

    def __init__(self, url: str, *, getter: TextGetter, server_id: str | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.url = url
        self.getter = getter
        self.server_id = server_id
        self.now = now

    def read(self) -> list[GpuSample]:
        text = self.getter.get_text(self.url)
        return parse_dcgm_text(text, sampled_at=self.now(), server_id=self.server_id)

    def close(self) -> None:
        closer = getattr(self.getter, "close", None)
        if callable(closer):
            closer()
