"""Joining one server's streams: GPU samples, inlet readings and its share of PDU power; pure.

Each stream arrives at its own rate (GPU 1 s, PDU 2 s, inlet 10-60 s) and may be
late or missing. The join is "latest reading within a window, in sample time":
a GPU sample pairs with the newest inlet reading no more than ``inlet_max_age_s``
apart and with the server's chassis power (else its share of PDU power) no more
than ``power_max_age_s`` apart. A reading older than the one already held is late
and ignored (the caller counts it); a missing reading joins as ``None``, which
the forecaster handles. Because GPU samples not newer than the state are ignored,
replaying a partition after a crash leaves the state unchanged (idempotent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from contracts.messages import GpuSample, InletSample
from forecasting.state import Observation
from streams.state import ServerStates


@dataclass(frozen=True)
class JoinWindows:
    """How far apart in sample time readings may be and still join.

    Attributes:
        inlet_max_age_s: inlet reading vs. GPU sample.
        power_max_age_s: chassis or PDU power reading vs. GPU sample.
    """

    inlet_max_age_s: float = 120.0
    power_max_age_s: float = 10.0


@dataclass(frozen=True, slots=True)
class GpuSummary:
    """What the worker keeps of a GPU sample: the hottest GPU (temperature and its own power), total power, load."""

    at_s: float
    hottest_gpu_temp_c: float
    gpu_power_w: float
    mean_gpu_util_pct: float
    num_gpus: int
    slowdown_temp_c: float | None
    hottest_gpu_power_w: float = math.nan


def summarize_gpu(sample: GpuSample) -> GpuSummary | None:
    """Reduce an eight-GPU sample to the server's figures; ``None`` when no GPU has a valid temperature.

    GPUs whose power is flagged invalid (null) are filled with the mean of the
    others so a single bad sensor does not look like a power drop.

    Examples:
        >>> from tests.samples import example_messages
        >>> s = summarize_gpu(example_messages()[0])
        >>> (s.hottest_gpu_temp_c, s.gpu_power_w, s.num_gpus)
        (67.0, 2400.0, 8)
    """
    temps = [g.gpu_temp_c for g in sample.gpus if g.gpu_temp_c is not None]
    if not temps:
        return None
    hottest = max((g for g in sample.gpus if g.gpu_temp_c is not None), key=lambda g: g.gpu_temp_c or 0.0)
    powers = [g.power_usage_w for g in sample.gpus if g.power_usage_w is not None]
    n = len(sample.gpus)
    power = sum(powers) * n / len(powers) if powers else math.nan
    utils = [g.gpu_util_pct for g in sample.gpus if g.gpu_util_pct is not None]
    slowdowns = [g.slowdown_temp_c for g in sample.gpus if g.slowdown_temp_c is not None]
    return GpuSummary(
        at_s=sample.sampled_at.timestamp(), hottest_gpu_temp_c=max(temps), gpu_power_w=power,
        mean_gpu_util_pct=sum(utils) / len(utils) if utils else 0.0, num_gpus=n,
        slowdown_temp_c=min(slowdowns) if slowdowns else None,
        hottest_gpu_power_w=math.nan if hottest.power_usage_w is None else hottest.power_usage_w,
    )


def apply_gpu(states: ServerStates, sample: GpuSample, summary: GpuSummary, *,
              default_slowdown_temp_c: float) -> int | None:
    """Store a GPU sample as the server's latest readings; returns its slot, or ``None`` when late."""
    i = states.slot(sample.server_id)
    a = states.arr
    last = a["gpu_at_s"][i]
    if not math.isnan(last) and summary.at_s <= last:
        return None
    a["gpu_at_s"][i] = summary.at_s
    a["hottest_gpu_temp_c"][i] = summary.hottest_gpu_temp_c
    a["gpu_power_w"][i] = summary.gpu_power_w if not math.isnan(summary.gpu_power_w) else a["gpu_power_w"][i]
    a["mean_gpu_util_pct"][i] = summary.mean_gpu_util_pct
    a["hottest_gpu_power_w"][i] = summary.hottest_gpu_power_w  # NaN (mean used) when that GPU's power is flagged
    a["num_gpus"][i] = summary.num_gpus
    a["slowdown_temp_c"][i] = (summary.slowdown_temp_c if summary.slowdown_temp_c is not None
                               else default_slowdown_temp_c)
    w = sample.workload
    if w is not None:
        a["prefill_tokens_per_s"][i] = w.prefill_tokens_per_s
        a["decode_tokens_per_s"][i] = w.decode_tokens_per_s
        a["batch_size"][i] = w.batch_size
        a["frequency_cap_mhz"][i] = math.nan if w.frequency_cap_mhz is None else w.frequency_cap_mhz
        states.config_ids[i] = w.config_id or ""
    else:
        for name in ("prefill_tokens_per_s", "decode_tokens_per_s", "batch_size"):
            a[name][i] = 0.0
    a["num_samples"][i] += 1
    return i


def apply_inlet(states: ServerStates, sample: InletSample) -> int | None:
    """Keep the newest inlet (and chassis power) reading of a server; returns its slot, ``None`` when late."""
    i = states.slot(sample.server_id)
    a = states.arr
    at_s = sample.sampled_at.timestamp()
    last = a["inlet_at_s"][i]
    if not math.isnan(last) and at_s <= last:
        return None
    if sample.inlet_temp_c is not None:
        a["inlet_temp_c"][i] = sample.inlet_temp_c
        a["inlet_at_s"][i] = at_s
    if sample.chassis_power_w is not None:
        a["chassis_power_w"][i] = sample.chassis_power_w
        a["chassis_at_s"][i] = at_s
    return i


def join_server_power(chassis_w: float, chassis_at_s: float, pdu_share_w: float, pdu_at_s: float,
                      at_s: float, max_age_s: float) -> float:
    """The server's power at ``at_s``: fresh chassis power, else fresh PDU share, else NaN.

    Examples:
        >>> join_server_power(4000.0, 99.0, 4200.0, 100.0, 100.0, 10.0)
        4000.0
        >>> join_server_power(4000.0, 50.0, 4200.0, 100.0, 100.0, 10.0)
        4200.0
        >>> join_server_power(float("nan"), float("nan"), 4200.0, 80.0, 100.0, 10.0)
        nan
    """
    if not math.isnan(chassis_at_s) and abs(at_s - chassis_at_s) <= max_age_s:
        return chassis_w
    if not math.isnan(pdu_at_s) and abs(at_s - pdu_at_s) <= max_age_s:
        return pdu_share_w
    return math.nan


def joined_observation(states: ServerStates, i: int, windows: JoinWindows) -> Observation:
    """Join slot ``i``'s latest GPU readings with its inlet and power readings inside the windows.

    Sets ``server_power_w`` in the arrays (the joined value) and pushes the sample
    onto the rolling window, then returns the :class:`Observation` the forecaster folds in.
    """
    a = states.arr
    at_s = float(a["gpu_at_s"][i])
    power = join_server_power(float(a["chassis_power_w"][i]), float(a["chassis_at_s"][i]),
                              float(a["pdu_share_w"][i]), float(a["pdu_at_s"][i]), at_s, windows.power_max_age_s)
    a["server_power_w"][i] = power
    states.push_window(i, float(a["hottest_gpu_temp_c"][i]), power)
    obs = states.observation(i)
    inlet_at = float(a["inlet_at_s"][i])
    if obs.inlet_temp_c is not None and not abs(at_s - inlet_at) <= windows.inlet_max_age_s:
        obs = replace(obs, inlet_temp_c=None)
    return obs


