"""Per-server state of one worker as struct-of-arrays, with an exact byte form for the changelog table.

The hot path touches one slot per sample, so the scalars live in NumPy arrays
indexed by slot (vectorised aggregation reads them whole) and the online model
state sits beside them as a :class:`forecasting.state.ServerModelState`. Each
slot serialises to bytes (:meth:`ServerStates.slot_bytes`) and back
(:meth:`ServerStates.load_slot`) bit for bit: that is what the Faust changelog
table stores, so a restarted worker resumes with exactly the state it lost.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from forecasting.state import Observation, ServerModelState

#: Scalar per-server fields, in their byte order. NaN means "not seen yet".
SCALARS: tuple[str, ...] = (
    "gpu_at_s", "hottest_gpu_temp_c", "gpu_power_w", "mean_gpu_util_pct", "prefill_tokens_per_s",
    "decode_tokens_per_s", "batch_size", "frequency_cap_mhz", "num_gpus", "slowdown_temp_c",
    "inlet_temp_c", "inlet_at_s", "chassis_power_w", "chassis_at_s", "pdu_share_w", "pdu_at_s",
    "server_power_w", "last_forecast_at_s", "last_store_at_s", "num_samples",
    "window_pos", "window_len", "hottest_gpu_power_w",
)
#: Samples kept in each server's rolling window (at 1 s samples: the last minute).
WINDOW = 60
#: Format 2 added ``hottest_gpu_power_w``; a format-1 slot loads with it unknown (NaN).
_FORMAT_VERSION = 2
_NUM_SCALARS = {1: len(SCALARS) - 1, 2: len(SCALARS)}
_HEADS = {v: struct.Struct(f"<BH{n}d") for v, n in _NUM_SCALARS.items()}
_HEAD = _HEADS[_FORMAT_VERSION]
_HEAD_PREFIX = struct.Struct("<BH")
_WINDOW_BYTES = 2 * WINDOW * 8
_LEN = struct.Struct("<HI")


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Rolling-window summary of one server (NaN when the window is empty)."""

    max_temp_c: float
    mean_temp_c: float
    max_power_w: float
    mean_power_w: float
    num_samples: int


class ServerStates:
    """The servers one worker owns: scalars in arrays, rolling windows in 2-D arrays, model states in a list.

    Examples:
        >>> st = ServerStates()
        >>> i = st.slot("s1")
        >>> st.arr["hottest_gpu_temp_c"][i] = 61.5
        >>> st.push_window(i, 61.5, 4000.0)
        >>> other = ServerStates()
        >>> j = other.load_slot("s1", st.slot_bytes(i))
        >>> other.slot_bytes(j) == st.slot_bytes(i)
        True
    """

    def __init__(self, capacity: int = 256) -> None:
        self.index: dict[str, int] = {}
        self.ids: list[str] = []
        #: ``[slot, scalar]`` matrix; a slot's row is its scalars' bytes as they are.
        self.matrix = np.full((capacity, len(SCALARS)), np.nan)
        self.arr: dict[str, npt.NDArray[np.float64]] = {}
        self._bind_columns()
        self.temp_window = np.full((capacity, WINDOW), np.nan)
        self.power_window = np.full((capacity, WINDOW), np.nan)
        self.models: list[ServerModelState | None] = []
        self.config_ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def _bind_columns(self) -> None:
        """``arr[name]`` is a view of one column of the matrix (writes go to the matrix)."""
        self.arr = {n: self.matrix[:, c] for c, n in enumerate(SCALARS)}

    def _grow(self) -> None:
        cap = len(self.matrix) * 2
        grown = np.full((cap, len(SCALARS)), np.nan)
        grown[: len(self.matrix)] = self.matrix
        self.matrix = grown
        self._bind_columns()
        for attr in ("temp_window", "power_window"):
            old = getattr(self, attr)
            grown2 = np.full((cap, WINDOW), np.nan)
            grown2[: len(old)] = old
            setattr(self, attr, grown2)

    def slot(self, server_id: str) -> int:
        """The slot of ``server_id``, allocated (empty) on first sight."""
        i = self.index.get(server_id)
        if i is not None:
            return i
        i = len(self.ids)
        if i >= len(self.matrix):
            self._grow()
        self.index[server_id] = i
        self.ids.append(server_id)
        self.models.append(None)
        self.config_ids.append("")
        for name in ("num_samples", "window_pos", "window_len"):
            self.arr[name][i] = 0.0
        return i

    def push_window(self, i: int, temp_c: float, power_w: float) -> None:
        """Append one sample to slot ``i``'s rolling window."""
        pos = int(self.arr["window_pos"][i])
        self.temp_window[i, pos] = temp_c
        self.power_window[i, pos] = power_w
        self.arr["window_pos"][i] = (pos + 1) % WINDOW
        self.arr["window_len"][i] = min(self.arr["window_len"][i] + 1, WINDOW)

    def window_stats(self, i: int) -> WindowStats:
        """Max and mean of temperature and server power over slot ``i``'s window."""
        n = int(self.arr["window_len"][i])
        if n == 0:
            nan = math.nan
            return WindowStats(nan, nan, nan, nan, 0)
        t = self.temp_window[i][~np.isnan(self.temp_window[i])]
        p = self.power_window[i][~np.isnan(self.power_window[i])]
        return WindowStats(float(t.max()) if t.size else math.nan, float(t.mean()) if t.size else math.nan,
                           float(p.max()) if p.size else math.nan, float(p.mean()) if p.size else math.nan, n)

    def slot_bytes(self, i: int) -> bytes:
        """Slot ``i`` as bytes: scalars, windows, model state and config id (exact round trip)."""
        model = self.models[i]
        model_raw = model.to_bytes() if model is not None else b""
        cfg = self.config_ids[i].encode()
        head: bytes = _HEAD_PREFIX.pack(_FORMAT_VERSION, WINDOW) + self.matrix[i].tobytes()
        windows: bytes = self.temp_window[i].tobytes() + self.power_window[i].tobytes()
        return head + windows + _LEN.pack(len(cfg), len(model_raw)) + cfg + model_raw

    def load_slot(self, server_id: str, raw: bytes) -> int:
        """Restore ``server_id`` from :meth:`slot_bytes` output; raises ``ValueError`` on foreign bytes."""
        if len(raw) < _HEAD_PREFIX.size:
            raise ValueError(f"server state {server_id}: {len(raw)} bytes is too short")
        version, window = _HEAD_PREFIX.unpack_from(raw)
        head = _HEADS.get(version)
        if head is None or window != WINDOW:
            raise ValueError(f"server state {server_id}: format {version}/window {window} unknown")
        if len(raw) < head.size + _WINDOW_BYTES + _LEN.size:
            raise ValueError(f"server state {server_id}: {len(raw)} bytes is too short")
        i = self.slot(server_id)
        count = _NUM_SCALARS[version]
        self.matrix[i] = np.nan
        self.matrix[i, :count] = np.frombuffer(raw, dtype=np.float64, count=count, offset=_HEAD_PREFIX.size)
        off = head.size
        self.temp_window[i] = np.frombuffer(raw, dtype=np.float64, count=WINDOW, offset=off)
        self.power_window[i] = np.frombuffer(raw, dtype=np.float64, count=WINDOW, offset=off + WINDOW * 8)
        off += _WINDOW_BYTES
        cfg_len, model_len = _LEN.unpack_from(raw, off)
        off += _LEN.size
        self.config_ids[i] = raw[off:off + cfg_len].decode()
        off += cfg_len
        model_raw = raw[off:off + model_len]
        self.models[i] = ServerModelState.from_bytes(model_raw) if model_len else None
        return i

    def observation(self, i: int) -> Observation:
        """The joined observation of slot ``i`` from its latest readings (see :mod:`streams.joins`)."""
        a = self.arr
        cap = float(a["frequency_cap_mhz"][i])
        inlet = float(a["inlet_temp_c"][i])
        power = float(a["server_power_w"][i])
        return Observation(
            server_id=self.ids[i], at_s=float(a["gpu_at_s"][i]),
            hottest_gpu_temp_c=float(a["hottest_gpu_temp_c"][i]), gpu_power_w=float(a["gpu_power_w"][i]),
            server_power_w=None if math.isnan(power) else power,
            inlet_temp_c=None if math.isnan(inlet) else inlet,
            mean_gpu_util_pct=float(a["mean_gpu_util_pct"][i]),
            prefill_tokens_per_s=float(a["prefill_tokens_per_s"][i]),
            decode_tokens_per_s=float(a["decode_tokens_per_s"][i]), batch_size=float(a["batch_size"][i]),
            frequency_cap_mhz=None if math.isnan(cap) else cap, config_id=self.config_ids[i] or None,
            num_gpus=int(a["num_gpus"][i]), slowdown_temp_c=float(a["slowdown_temp_c"][i]),
            hottest_gpu_power_w=None if math.isnan(hot_w := float(a["hottest_gpu_power_w"][i])) else hot_w,
        )
