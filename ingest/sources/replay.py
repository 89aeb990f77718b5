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
``PduPowerSample`` per PDU and tick. Empty cells are absent readings.

Bad cells are handled by what they are:

* **readings** (``hottest_gpu_temp_c``, ``gpu_power_w``, ``mean_gpu_util_pct``,
  ``slowdown_temp_c``, ``inlet_temp_c``, ``server_power_w``): a sentinel, impossible,
  non-numeric (text, a list) or out-of-float-range value is flagged by the edge rules
  like any device's (``null`` plus the field in ``invalid_fields``);
* **workload context** (``prefill_tokens_per_s``, ``decode_tokens_per_s``,
  ``batch_size``, ``frequency_cap_mhz``, ``config_id``): the contract has no flag for
  these, so a row with one that is non-numeric, non-finite or outside the contract's
  range (a negative batch size) keeps its GPU readings but carries no workload
  (``workload`` is null); the row is reported as a note;
* **row identity and shape** (``server_id``, ``num_gpus`` — a whole number 1-64, an
  empty cell meaning 8 —, ``pdu_id``, ``at_s``): the row cannot become a message, so
  :func:`row_messages` raises :class:`BadCell` (a ``SourceError`` naming the column).

:class:`ReplaySource` never drops a bad row silently: an unusable row is skipped,
counted in ``rejected_rows`` and logged with its file, row number (data rows from 1,
header excluded, in file order) and column, and so is a row whose workload was
dropped (``notes``); the totals are logged when the replay ends.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contracts.errors import SourceError
from contracts.messages import Contract, GpuReading, GpuSample, InletSample, PduPowerSample, WorkloadContext
from ingest.validate import ABSENT, Checked, FieldChecker, brief, check

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("server_id", "at_s", "hottest_gpu_temp_c", "gpu_power_w", "num_gpus")
EPOCH_THRESHOLD_S = 1.0e9
MAX_AT_S = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last instant a datetime holds
DEFAULT_NUM_GPUS = 8
MAX_NUM_GPUS = 64  # GpuSample.gpus holds at most 64 readings
MAX_ID_LENGTH = 128  # server_id / pdu_id in the contracts
WORKLOAD_COLUMNS = ("prefill_tokens_per_s", "decode_tokens_per_s", "batch_size", "frequency_cap_mhz")


class BadCell(SourceError):  # noqa: N818 - a SourceError, named for what it reports
    """A cell that makes its row unusable (identity or shape of the row, not a reading).

    Attributes:
        column: the column of the offending cell.
        reason: what is wrong with it.
    """

    def __init__(self, column: str, value: Any, reason: str) -> None:
        self.column = column
        self.reason = f"{brief(value)} {reason}"
        super().__init__(f"replay: column {column!r}: {self.reason}")


def load_table(path: Path) -> Any:
    """Read a CSV or Parquet recording into a DataFrame sorted by time, checking the columns.

    The index holds each row's position in the file (0-based), so a bad row can be
    reported by number; ``at_s`` is numeric, NaN where the cell is not a number.
    """
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
    frame = frame.reset_index(drop=True)
    frame["at_s"] = pd.to_numeric(frame["at_s"], errors="coerce")
    try:
        return frame.sort_values(["at_s", "server_id"], kind="stable")
    except TypeError:  # server ids of mixed types (a Parquet object column): order them as text
        return frame.sort_values(["at_s", "server_id"], kind="stable",
                                 key=lambda col: col if col.name == "at_s" else col.astype(str))


def _cell(row: dict[str, Any], name: str) -> Any:
    value = row.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _checked(row: dict[str, Any], name: str, field: str, scale: float = 1.0) -> Checked:
    value = _cell(row, name)
    return ABSENT if value is None else check(value, field, scale=scale)


def _text_id(row: dict[str, Any], column: str) -> str | None:
    """An id cell (``server_id``, ``pdu_id``) as text; None when empty; :class:`BadCell` when unusable."""
    value = _cell(row, column)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float) or isinstance(value, float) and \
            not math.isfinite(value):
        raise BadCell(column, value, "is not an identifier")
    text = str(value).strip()
    if not 1 <= len(text) <= MAX_ID_LENGTH:
        raise BadCell(column, value, f"is not an identifier of 1-{MAX_ID_LENGTH} characters")
    return text


def _num_gpus(row: dict[str, Any]) -> int:
    value = _cell(row, "num_gpus")
    if value is None:
        return DEFAULT_NUM_GPUS
    number = _number(value)
    if number is None or not number.is_integer() or not 1 <= number <= MAX_NUM_GPUS:
        raise BadCell("num_gpus", value, f"is not a whole number of GPUs 1-{MAX_NUM_GPUS}")
    return int(number)


def _number(value: Any) -> float | None:
    """A cell as a finite float; None for text, lists, NaN, infinities and ints beyond float range."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _workload(row: dict[str, Any], notes: list[str] | None) -> WorkloadContext | None:
    """The row's workload context, or None (with a note) when a cell is not a number the contract allows."""
    numbers: dict[str, float | None] = {}
    for column in WORKLOAD_COLUMNS:
        value = _cell(row, column)
        numbers[column] = None if value is None else _number(value)
        if value is not None and numbers[column] is None:
            if notes is not None:
                notes.append(f"column {column!r}: {brief(value)} is not a number; workload context dropped")
            return None
    config = _cell(row, "config_id")
    try:
        return WorkloadContext(
            prefill_tokens_per_s=numbers["prefill_tokens_per_s"] or 0.0,
            decode_tokens_per_s=numbers["decode_tokens_per_s"] or 0.0,
            batch_size=numbers["batch_size"] or 0.0,
            config_id=None if config is None else str(config),
            frequency_cap_mhz=numbers["frequency_cap_mhz"],
        )
    except ValidationError as exc:
        if notes is not None:
            first = exc.errors()[0]
            column = ".".join(str(p) for p in first["loc"]) or "workload"
            notes.append(f"column {column!r}: {brief(first.get('input'))} {first['msg'].lower()}; "
                         "workload context dropped")
        return None


def row_messages(row: dict[str, Any], at: datetime,
                 notes: list[str] | None = None) -> tuple[GpuSample, InletSample | None]:
    """The GPU sample (and inlet sample, when the row has one) of one server-tick row.

    Bad readings are flagged; a bad workload cell drops the workload context and appends
    a note to ``notes`` (when given).

    Raises:
        BadCell: when ``server_id``, ``num_gpus`` or ``pdu_id`` makes the row unusable.
    """
    server_id = _text_id(row, "server_id")
    if server_id is None:
        raise BadCell("server_id", "", "is empty; every row needs its server")
    num_gpus = _num_gpus(row)
    _text_id(row, "pdu_id")  # a bad PDU id rejects the row here; pdu_messages skips it
    fc = FieldChecker()
    temp = fc.take("gpu_temp_c", _checked(row, "hottest_gpu_temp_c", "gpu_temp_c"))
    power = fc.take("power_usage_w", _checked(row, "gpu_power_w", "power_usage_w", scale=1.0 / num_gpus))
    util = fc.take("gpu_util_pct", _checked(row, "mean_gpu_util_pct", "gpu_util_pct"))
    slowdown = fc.take("slowdown_temp_c", _checked(row, "slowdown_temp_c", "slowdown_temp_c"))
    gpus = [GpuReading(gpu_index=i, gpu_temp_c=temp, power_usage_w=power, gpu_util_pct=util,
                       slowdown_temp_c=slowdown, invalid_fields=list(fc.invalid_fields)) for i in range(num_gpus)]
    gpu = GpuSample(server_id=server_id, sampled_at=at, gpus=gpus, workload=_workload(row, notes), source="replay")
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
    """One PDU sample per ``pdu_id`` in a tick: the sum of its servers' power (flagged if any is bad).

    A row whose ``pdu_id`` is unusable is left out here; :func:`row_messages` rejects that row.
    """
    power: dict[str, float] = defaultdict(float)
    servers: dict[str, list[str]] = defaultdict(list)
    bad: set[str] = set()
    for row in rows:
        try:
            pdu = _text_id(row, "pdu_id")
        except BadCell:
            continue
        if pdu is None or "server_power_w" not in row:
            continue
        c = _checked(row, "server_power_w", "chassis_power_w")
        servers[pdu].append(str(row.get("server_id")))
        if c.value is None:
            bad.add(pdu)
        else:
            power[pdu] += c.value
    out = []
    for pdu, ids in servers.items():
        total = Checked(None, True) if pdu in bad else check(round(power[pdu], 6), "pdu_power_w")
        out.append(PduPowerSample(pdu_id=pdu, sampled_at=at, source="replay", server_ids=ids, power_w=total.value,
                                  invalid_fields=["power_w"] if total.invalid else []))
    return out


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
        self.path = path
        self.rejected_rows = 0
        self.notes: list[str] = []  # one line per rejected row or dropped workload, naming file, row and column

    def _report(self, index: Any, problem: str, *, rejected: bool) -> None:
        line = f"replay {self.path} row {int(index) + 1}: {problem}"
        self.rejected_rows += rejected
        self.notes.append(line)
        log.warning("event=replay_bad_row rejected=%s detail=%s", rejected, line)

    def _instant(self, at_s: float) -> datetime:
        if at_s >= EPOCH_THRESHOLD_S:
            return datetime.fromtimestamp(at_s, UTC)
        return self.start_at + timedelta(seconds=at_s)

    def rounds(self) -> Iterator[list[Contract]]:
        """One list of messages per recorded instant; bad rows are reported (see the module docstring)."""
        at_column = self.frame["at_s"]
        unusable = ~at_column.between(-MAX_AT_S, MAX_AT_S)  # NaN (not a number), infinities, beyond year 9999
        for index in self.frame.index[unusable]:
            self._report(index, f"column 'at_s': not a number of seconds within ±{MAX_AT_S:.0f}; row skipped",
                         rejected=True)
        try:
            yield from self._rounds(self.frame[~unusable])
        finally:
            log.info("event=replay_done path=%s rows=%d rejected_rows=%d notes=%d", self.path, len(self.frame),
                     self.rejected_rows, len(self.notes))

    def _rounds(self, frame: Any) -> Iterator[list[Contract]]:
        previous: float | None = None
        for at_s, group in frame.groupby("at_s", sort=True):
            at_s = float(at_s)
            if previous is not None and self.fixed_gap_s is not None:
                self.sleep(self.fixed_gap_s)
            elif previous is not None and self.speed > 0:
                self.sleep(max(0.0, (at_s - previous) / self.speed))
            try:
                at = self._instant(at_s)
            except (OverflowError, ValueError, OSError):  # e.g. a negative relative time before year 1
                for index in group.index:
                    self._report(index, f"column 'at_s': {at_s!r} is not a representable instant; row skipped",
                                 rejected=True)
                continue
            previous = at_s
            rows = group.to_dict("records")
            out: list[Contract] = []
            for index, row in zip(group.index, rows, strict=True):
                notes: list[str] = []
                try:
                    gpu, inlet = row_messages(row, at, notes)
                except BadCell as exc:
                    self._report(index, f"column {exc.column!r}: {exc.reason}; row skipped", rejected=True)
                    continue
                for note in notes:
                    self._report(index, note, rejected=False)
                out.append(gpu)
                if inlet is not None:
                    out.append(inlet)
            out.extend(pdu_messages(rows, at))
            yield out
