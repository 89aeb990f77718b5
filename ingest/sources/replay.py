"""Replay recorded telemetry (CSV or Parquet) as contract messages, at recorded speed or faster.

The file has one row per server per tick in the columns of
``forecasting.online.Observation`` — what ``simulator.feed.record_telemetry`` writes
and what ``tapas`` history exports — plus optional ``pdu_id`` (and ``rack_id``,
``row_id``, ``zone_id``, ignored here):

``server_id, at_s, hottest_gpu_temp_c, gpu_power_w, server_power_w, inlet_temp_c,
mean_gpu_util_pct, prefill_tokens_per_s, decode_tokens_per_s, batch_size,
frequency_cap_mhz, config_id, num_gpus, slowdown_temp_c``

``at_s`` is seconds since the Unix epoch when it is that large, else seconds since
the start of the recording (anchored at ``start_at``). A server-level row carries no
per-GPU detail, so each tick becomes ``num_gpus`` readings that preserve exactly the
aggregates the stream worker uses: every GPU at the hottest temperature (the max is
unchanged), the GPU power split evenly (the sum is unchanged), the mean utilisation.
Rows with ``inlet_temp_c`` also give an ``InletSample`` (with ``server_power_w`` as
chassis power); rows with a ``pdu_id`` and ``server_power_w`` sum into one
``PduPowerSample`` per PDU and tick. Empty cells are absent readings; sentinel or
impossible values are flagged by the edge rules like any device's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from contracts.errors import SourceError
from contracts.messages import Contract, GpuReading, GpuSample, InletSample, PduPowerSample, WorkloadContext
from ingest.validate import ABSENT, Checked, FieldChecker, check

REQUIRED_COLUMNS = ("server_id", "at_s", "hottest_gpu_temp_c", "gpu_power_w", "num_gpus")
EPOCH_THRESHOLD_S = 1.0e9


def load_table(path: Path) -> Any:
    """Read a CSV or Parquet recording into a DataFrame sorted by time, checking the columns."""
    import pandas as pd

    if not path.exists():
        raise SourceError(f"replay: {path} not found")
    suffix = path.suffix.lower()
    try:
        frame = pd.read_parquet(path) if suffix in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types
        raise SourceError(f"replay: cannot read {path}: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise SourceError(f"replay: {path} lacks column(s) {', '.join(missing)} "
                          f"(expected forecasting.online.Observation columns: {', '.join(REQUIRED_COLUMNS)}, ...)")
    return frame.sort_values(["at_s", "server_id"], kind="stable").reset_index(drop=True)


def _cell(row: dict[str, Any], name: str) -> Any:
    value = row.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _checked(row: dict[str, Any], name: str, field: str, scale: float = 1.0) -> Checked:
    value = _cell(row, name)
    return ABSENT if value is None else check(value, field, scale=scale)


def row_messages(row: dict[str, Any], at: datetime) -> tuple[GpuSample, InletSample | None]:
    """The GPU sample (and inlet sample, when the row has one) of one server-tick row."""
    server_id = str(row["server_id"])
    num_gpus = int(row.get("num_gpus") or 8)
    fc = FieldChecker()
    temp = fc.take("gpu_temp_c", _checked(row, "hottest_gpu_temp_c", "gpu_temp_c"))
    total_power = _cell(row, "gpu_power_w")
    per_gpu = _checked({"p": None if total_power is None else float(total_power) / num_gpus}, "p", "power_usage_w")
    power = fc.take("power_usage_w", per_gpu)
    util = fc.take("gpu_util_pct", _checked(row, "mean_gpu_util_pct", "gpu_util_pct"))
    slowdown = fc.take("slowdown_temp_c", _checked(row, "slowdown_temp_c", "slowdown_temp_c"))
    cap = _cell(row, "frequency_cap_mhz")
    gpus = [GpuReading(gpu_index=i, gpu_temp_c=temp, power_usage_w=power, gpu_util_pct=util,
                       slowdown_temp_c=slowdown, invalid_fields=list(fc.invalid_fields)) for i in range(num_gpus)]
    workload = WorkloadContext(
        prefill_tokens_per_s=float(_cell(row, "prefill_tokens_per_s") or 0.0),
        decode_tokens_per_s=float(_cell(row, "decode_tokens_per_s") or 0.0),
        batch_size=float(_cell(row, "batch_size") or 0.0),
        config_id=None if _cell(row, "config_id") is None else str(row["config_id"]),
        frequency_cap_mhz=None if cap is None else float(cap),
    )
    gpu = GpuSample(server_id=server_id, sampled_at=at, gpus=gpus, workload=workload, source="replay")
    inlet = None
    if _cell(row, "inlet_temp_c") is not None:
        ic = FieldChecker()
        inlet = InletSample(server_id=server_id, sampled_at=at, source="replay",
                            inlet_temp_c=ic.take("inlet_temp_c", _checked(row, "inlet_temp_c", "inlet_temp_c")),
                            chassis_power_w=ic.take("chassis_power_w",
                                                    _checked(row, "server_power_w", "chassis_power_w")),
                            invalid_fields=ic.invalid_fields)
    return gpu, inlet


def pdu_messages(rows: list[dict[str, Any]], at: datetime) -> list[PduPowerSample]:
    """One PDU sample per ``pdu_id`` in a tick: the sum of its servers' power (flagged if any is bad)."""
    power: dict[str, float] = defaultdict(float)
    servers: dict[str, list[str]] = defaultdict(list)
    bad: set[str] = set()
    for row in rows:
        pdu = _cell(row, "pdu_id")
        if pdu is None or "server_power_w" not in row:
            continue
        c = _checked(row, "server_power_w", "chassis_power_w")
        servers[str(pdu)].append(str(row["server_id"]))
        if c.value is None:
            bad.add(str(pdu))
        else:
            power[str(pdu)] += c.value
    return [PduPowerSample(pdu_id=pdu, sampled_at=at, source="replay", server_ids=ids,
                           power_w=None if pdu in bad else round(power[pdu], 6),
                           invalid_fields=["power_w"] if pdu in bad else [])
            for pdu, ids in servers.items()]


class ReplaySource:
    """Yields rounds of messages (one per recorded tick), sleeping ``Δt / speed`` between them.

    Args:
        path: CSV or Parquet file.
        speed: 1 = recorded speed, 60 = one recorded minute per second, 0 = as fast as possible.
        start_at: instant the first relative ``at_s`` maps to (default: now).
        fixed_gap_s: when set, wait this long between ticks whatever the recorded gap (``--interval``).
        sleep: injected for tests.
    """

    def __init__(self, path: Path, *, speed: float = 1.0, start_at: datetime | None = None,
                 fixed_gap_s: float | None = None, sleep: Callable[[float], None] | None = None) -> None:
        import time

        if speed < 0:
            raise SourceError("replay: --speed must be >= 0 (0 = as fast as possible)")
        self.frame = load_table(path)
        self.speed = speed
        self.fixed_gap_s = fixed_gap_s
        self.start_at = start_at or datetime.now(UTC)
        self.sleep = sleep or time.sleep

    def _instant(self, at_s: float) -> datetime:
        if at_s >= EPOCH_THRESHOLD_S:
            return datetime.fromtimestamp(at_s, UTC)
        return self.start_at + timedelta(seconds=at_s)

    def rounds(self) -> Iterator[list[Contract]]:
        previous: float | None = None
        for at_s, group in self.frame.groupby("at_s", sort=True):
            at_s = float(at_s)
            if previous is not None and self.fixed_gap_s is not None:
                self.sleep(self.fixed_gap_s)
            elif previous is not None and self.speed > 0:
                self.sleep(max(0.0, (at_s - previous) / self.speed))
            previous = at_s
            at = self._instant(at_s)
            rows = group.to_dict("records")
            out: list[Contract] = []
            for row in rows:
                gpu, inlet = row_messages(row, at)
                out.append(gpu)
                if inlet is not None:
                    out.append(inlet)
            out.extend(pdu_messages(rows, at))
            yield out
