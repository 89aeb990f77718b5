"""Per-run metrics: throttling events, throttled GPU-seconds, SLO attainment, latency percentiles, losses.

Event definitions (debounced intervals):

* thermal throttle event — a GPU's hardware thermal slowdown engages (clock factor < 1)
  after at least ``debounce_s`` (30 s) without thermal slowdown on that GPU; the
  throttled seconds in between belong to the same event.
* power throttle event — the reactive power manager's cap on a row engages (< 1) after
  at least ``debounce_s`` without a cap on that row.
* throttled GPU-seconds — Σ over ticks of GPUs in use (SaaS or IaaS) whose clock is
  reduced by thermal slowdown or a row power cap, × tick length.

Latency: TTFT and TBT of every request go into log-spaced histograms (800 bins from
0.1 ms to 10⁴ s, ≤ 1.2 % relative bin width); P99 is interpolated in the bin. SLO
attainment is exact per request: both its TTFT and its mean TBT meet their SLO.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from foundation.topology import Topology

F = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]


class LatencyHistogram:
    """Log-binned latency counts with quantiles.

    Examples:
        >>> h = LatencyHistogram()
        >>> h.add(np.linspace(0.01, 1.0, 10_000))
        >>> abs(h.quantile(0.99) - 0.99) < 0.015
        True
    """

    EDGES = np.logspace(-4.0, 4.0, 801)

    def __init__(self) -> None:
        self.counts = np.zeros(len(self.EDGES) + 1, dtype=np.int64)

    def add(self, values: F) -> None:
        """Count latencies (seconds)."""
        if len(values):
            idx = np.searchsorted(self.EDGES, np.asarray(values, dtype=np.float64), side="right")
            self.counts += np.bincount(idx, minlength=len(self.counts))

    @property
    def total(self) -> int:
        """Number of latencies counted."""
        return int(self.counts.sum())

    def quantile(self, q: float) -> float:
        """Quantile ``q`` interpolated geometrically inside its bin (NaN when empty)."""
        n = self.total
        if n == 0:
            return float("nan")
        cum = np.cumsum(self.counts)
        target = q * n
        b = int(np.searchsorted(cum, target, side="left"))
        if b == 0:
            return float(self.EDGES[0])
        if b >= len(self.EDGES):
            return float(self.EDGES[-1])
        lo, hi = self.EDGES[b - 1], self.EDGES[b]
        prev = cum[b - 1]
        frac = (target - prev) / max(self.counts[b], 1)
        return float(lo * (hi / lo) ** frac)


class MetricsAccumulator:
    """Accumulates per-tick counters of one run."""

    def __init__(self, num_servers: int, num_gpus: int, num_rows: int, debounce_s: float) -> None:
        self.debounce_s = debounce_s
        self.max_temp = -np.inf
        self.prev_th = np.zeros((num_servers, num_gpus), dtype=bool)
        self.last_th = np.full((num_servers, num_gpus), -np.inf)
        self.prev_pw = np.zeros(num_rows, dtype=bool)
        self.last_pw = np.full(num_rows, -np.inf)
        self.thermal_events = 0
        self.power_events = 0
        self.th_gpu_s = 0.0
        self.pw_gpu_s = 0.0
        self.any_gpu_s = 0.0
        self.peak_row_frac = 0.0
        self.requests = 0
        self.met = 0
        self.tokens = 0.0
        self.qloss_tokens = 0.0
        self.saas_perf_sum = 0.0
        self.saas_perf_n = 0
        self.iaas_perf_sum = 0.0
        self.iaas_perf_n = 0
        self.rejected_placements = 0
        self.invalid_actions = 0
        self.slow_switches = 0
        self.fast_switches = 0
        self.caps_applied = 0
        self.dropped_requests = 0
        self.rerouted_requests = 0
        self.deadline_violation_s = 0.0

    def add_requests(self, met: B, tokens: F, qloss: F) -> None:
        """Completed (or overdue) requests: SLO met flags, tokens and per-request quality loss."""
        self.requests += len(met)
        self.met += int(met.sum())
        self.tokens += float(tokens.sum())
        self.qloss_tokens += float((qloss * tokens).sum())

    def add_iaas(self, f_eff: F, in_window: bool) -> None:
        """IaaS GPUs' effective clock (fraction of requested) this tick; counted inside the loss window."""
        if in_window and len(f_eff):
            self.iaas_perf_sum += float(f_eff.sum())
            self.iaas_perf_n += len(f_eff)

    def tick(
        self,
        t: float,
        dt: float,
        gpu_temp: F,
        th_thr: B,
        pw_thr: B,
        row_capped: B,
        row_frac: F,
        row_over: B,
        in_window: bool,
        saas_perf: F,
        events: list[dict[str, Any]],
        topo: Topology,
    ) -> None:
        """Fold one tick into the counters; append control events (throttle starts) for the feed."""
        self.max_temp = max(self.max_temp, float(gpu_temp.max()))
        start = th_thr & ~self.prev_th
        new = start & (t - self.last_th > self.debounce_s)
        n_new = int(new.sum())
        if n_new:
            self.thermal_events += n_new
            for s in np.flatnonzero(new.any(axis=1))[:50]:
                events.append({"t_s": t, "kind": "thermal_throttle", "domain_kind": "server",
                               "domain_id": topo.server_ids[int(s)], "detail": f"{int(new[s].sum())} GPU(s) at slowdown"})
        self.last_th[th_thr] = t
        self.prev_th = th_thr
        pstart = row_capped & ~self.prev_pw
        pnew = pstart & (t - self.last_pw > self.debounce_s)
        if pnew.any():
            self.power_events += int(pnew.sum())
            for r in np.flatnonzero(pnew):
                events.append({"t_s": t, "kind": "power_throttle", "domain_kind": "row",
                               "domain_id": topo.row_ids[int(r)], "detail": "row frequency cap engaged"})
        self.last_pw[row_capped] = t
        self.prev_pw = row_capped
        self.th_gpu_s += float(th_thr.sum()) * dt
        self.pw_gpu_s += float(pw_thr.sum()) * dt
        self.any_gpu_s += float((th_thr | pw_thr).sum()) * dt
        self.peak_row_frac = max(self.peak_row_frac, float(row_frac.max()))
        if in_window and len(saas_perf):
            self.saas_perf_sum += float(saas_perf.sum())
            self.saas_perf_n += len(saas_perf)

    def summary(
        self, duration_s: float, ttft: LatencyHistogram, tbt: LatencyHistogram, *, iaas_loss_window: object = None
    ) -> dict[str, float]:
        """The metric keys of ``tapas simulate --json`` plus diagnostics."""
        del iaas_loss_window
        return {
            "thermal_throttle_events": float(self.thermal_events),
            "power_throttle_events": float(self.power_events),
            "throttled_gpu_seconds": self.any_gpu_s,
            "max_gpu_temp_c": self.max_temp,
            "peak_row_power_frac": self.peak_row_frac,
            "slo_attainment": self.met / self.requests if self.requests else float("nan"),
            "p99_ttft_s": ttft.quantile(0.99),
            "p99_tbt_s": tbt.quantile(0.99),
            "tokens_per_s": self.tokens / duration_s if duration_s > 0 else 0.0,
            "quality_loss": self.qloss_tokens / self.tokens if self.tokens > 0 else 0.0,
            "saas_perf_loss": 1.0 - self.saas_perf_sum / self.saas_perf_n if self.saas_perf_n else 0.0,
            "iaas_perf_loss": 1.0 - self.iaas_perf_sum / self.iaas_perf_n if self.iaas_perf_n else 0.0,
            "thermal_throttled_gpu_seconds": self.th_gpu_s,
            "power_throttled_gpu_seconds": self.pw_gpu_s,
            "requests": float(self.requests),
            "rejected_placements": float(self.rejected_placements),
            "dropped_requests": float(self.dropped_requests),
            "rerouted_requests": float(self.rerouted_requests),
            "power_deadline_violation_s": self.deadline_violation_s,
            "slow_switches": float(self.slow_switches),
            "fast_switches": float(self.fast_switches),
            "caps_applied": float(self.caps_applied),
            "invalid_actions": float(self.invalid_actions),
        }
