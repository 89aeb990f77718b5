"""Workload: SaaS request arrivals from an Azure-LLM-schema trace, and synthetic IaaS VMs.

SaaS requests. Any CSV with ``TIMESTAMP,ContextTokens,GeneratedTokens`` is accepted.
The trace is *replayed in a loop* (time since its first request, modulo its span) and
scaled to the cluster by superposing randomly time-shifted copies thinned to the rate
``scale × diurnal(t) × spike(t)`` × the trace's (see ``generate_arrivals``). ``scale``
is chosen by the engine so that peak-hour demand equals ``target_saas_util`` of the
SaaS capacity at SLO of the default configuration; copies keep the prompt and output
lengths. The diurnal factor is

    diurnal(t) = (1 + DIURNAL_AMPLITUDE × cos(2π (h(t) − DIURNAL_PEAK_H) / 24)) / (1 + DIURNAL_AMPLITUDE)

so its peak is 1, where ``h(t)`` is the wall-clock hour of the simulated
instant (runs start at ``start_hour``, default 10:00, rising toward a 15:00 peak;
``DIURNAL_AMPLITUDE = 0.25`` gives a 60 % trough-to-peak ratio, a typical shape of
interactive services such as the Azure week-long traces). ``stretch`` > 1 slows the
trace's own time (a 1 h trace covering ``stretch`` hours) while keeping the rate.

Requests are split over endpoints by a seeded uniform draw with the endpoints' shares.

IaaS VMs (opaque). Sizes 1/2/4/8 GPUs with probabilities 0.2/0.2/0.2/0.4; lifetimes
log-normal (median 2 h, σ = 1.0; Azure VM lifetimes are heavy-tailed, Cortez et al.,
SOSP 2017); arrivals Poisson with the rate that keeps ``iaas_fill`` of the IaaS GPUs
busy in steady state (Little's law). Each VM draws a mean utilisation
``u0 ~ Beta(5, 2.5)`` (mean 0.67) and a slow oscillation ``0.15·sin(2πt/T + φ)``,
``T ~ U(10, 40) min``: its GPU power is ``idle + (TDP − idle)·u(t)·f²``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from contracts.errors import ConfigError

F = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

DIURNAL_AMPLITUDE = 0.25
DIURNAL_PEAK_H = 15.0
VM_SIZES = np.array([1, 2, 4, 8])
VM_SIZE_P = np.array([0.2, 0.2, 0.2, 0.4])
VM_LIFETIME_MEDIAN_S = 7200.0
VM_LIFETIME_SIGMA = 1.0
VM_UTIL_BETA = (5.0, 2.5)
VM_OSC_AMPLITUDE = 0.15


@dataclass(frozen=True)
class Trace:
    """A loaded trace: arrival offsets from its first request (s), prompt and output tokens."""

    offset_s: F
    prompt_tokens: F
    output_tokens: F
    span_s: float
    path: str

    @property
    def rate_per_s(self) -> float:
        """Mean request rate of the trace."""
        return len(self.offset_s) / self.span_s


def load_trace(path: Path | str) -> Trace:
    """Read an Azure-LLM-schema CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""
    import pandas as pd

    p = Path(path)
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"trace {p}: {exc}") from exc
    missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(df.columns)
    if missing:
        raise ConfigError(f"trace {p}: missing columns {sorted(missing)} (Azure LLM trace schema expected)")
    if df.empty:
        raise ConfigError(f"trace {p}: no requests")
    ts = pd.to_datetime(df["TIMESTAMP"], format="mixed")
    order = np.argsort(ts.to_numpy(), kind="stable")
    t = (ts.to_numpy()[order] - ts.to_numpy()[order][0]) / np.timedelta64(1, "s")
    span = max(float(t[-1]) + 1.0, 60.0)
    return Trace(
        offset_s=np.asarray(t, dtype=np.float64),
        prompt_tokens=np.clip(df["ContextTokens"].to_numpy(dtype=np.float64)[order], 1.0, 32_768.0),
        output_tokens=np.clip(df["GeneratedTokens"].to_numpy(dtype=np.float64)[order], 1.0, 8192.0),
        span_s=span,
        path=str(p),
    )


def diurnal_factor(t_s: F | float, start_hour: float = 10.0) -> F:
    """Diurnal load multiplier in (0, 1] at simulated time ``t_s`` (peak 1 at DIURNAL_PEAK_H).

    Examples:
        >>> float(diurnal_factor(5 * 3600.0, start_hour=10.0))
        1.0
        >>> round(float(diurnal_factor(0.0, start_hour=3.0)), 3)
        0.6
    """
    h = start_hour + np.asarray(t_s, dtype=np.float64) / 3600.0
    raw = 1.0 + DIURNAL_AMPLITUDE * np.cos(2.0 * np.pi * (h - DIURNAL_PEAK_H) / 24.0)
    return np.asarray(raw / (1.0 + DIURNAL_AMPLITUDE), dtype=np.float64)


@dataclass(frozen=True)
class Arrivals:
    """All SaaS requests of a run, sorted by arrival time."""

    arrival_s: F
    prompt_tokens: F
    output_tokens: F
    endpoint: I64

    def __len__(self) -> int:
        return len(self.arrival_s)


def generate_arrivals(
    trace: Trace,
    *,
    duration_s: float,
    scale: float,
    rng: np.random.Generator,
    num_endpoints: int = 1,
    endpoint_shares: F | None = None,
    start_hour: float = 10.0,
    stretch: float = 1.0,
    multiplier_fn: Callable[[F], F] | None = None,
    peak_multiplier: float = 2.0,
    start_s: float = 0.0,
) -> Arrivals:
    """Superpose time-shifted copies of the looped trace, thinned to ``scale·diurnal·spike``.

    The cluster serves many independent tenants that each behave like the trace: copy
    ``c`` is the trace looped over the run and circularly shifted by a uniform random
    offset ``φ_c ∈ [0, span)``. ``M = ceil(scale·peak_multiplier)`` copies are drawn and
    each request is kept with probability ``scale·diurnal(t)·spike(t)/M``, so the mean
    rate is ``scale × trace rate × diurnal × spike``. Keeping each copy's own bursts but
    not aligning them is what aggregation of independent users does; replicating the
    trace in phase would multiply its minute-scale bursts (up to 4× its mean) by M.
    ``multiplier_fn(t_s_array) -> array`` is the scenario's extra load factor (≤ ``peak_multiplier``).
    Only arrivals in ``[start_s, duration_s)`` are generated (runs draw their arrivals in chunks).
    """
    if scale <= 0 or stretch <= 0:
        raise ConfigError("scale and stretch must be > 0")
    span = trace.span_s * stretch
    first_rep = int(start_s // span)
    reps = int(np.ceil(duration_s / span)) + 1 - first_rep
    base = trace.offset_s * stretch
    copies = max(1, int(np.ceil(scale * peak_multiplier)))
    parts_t: list[F] = []
    parts_i: list[I64] = []
    n = len(base)
    for _ in range(copies):
        phi = rng.uniform(0.0, span)
        offs = ((base + phi) % span)[None, :] + span * (first_rep + np.arange(reps))[:, None]
        offs = offs.ravel()
        idx = np.tile(np.arange(n), reps)
        keep = (offs >= start_s) & (offs < duration_s)
        offs, idx = offs[keep], idx[keep]
        prob = scale * diurnal_factor(offs, start_hour) / copies
        if multiplier_fn is not None:
            prob = prob * np.asarray(multiplier_fn(offs), dtype=np.float64)
        keep = rng.uniform(size=len(offs)) < prob
        parts_t.append(offs[keep])
        parts_i.append(idx[keep])
    arrival = np.concatenate(parts_t)
    src = np.concatenate(parts_i)
    shares = np.full(num_endpoints, 1.0 / num_endpoints) if endpoint_shares is None else endpoint_shares
    endpoint = rng.choice(num_endpoints, size=len(src), p=shares / shares.sum()).astype(np.int64)
    order = np.argsort(arrival, kind="stable")
    return Arrivals(
        arrival_s=arrival[order],
        prompt_tokens=trace.prompt_tokens[src][order],
        output_tokens=trace.output_tokens[src][order],
        endpoint=endpoint[order],
    )


@dataclass(frozen=True)
class VmDraws:
    """Synthetic IaaS VMs: arrival time (negative = present at start), size, lifetime and power profile."""

    arrival_s: F
    num_gpus: I64
    lifetime_s: F
    util_mean: F
    osc_period_s: F
    osc_phase: F

    def __len__(self) -> int:
        return len(self.arrival_s)


def generate_vms(*, iaas_gpus: int, iaas_fill: float, duration_s: float, rng: np.random.Generator) -> VmDraws:
    """Draw the initial steady-state VM population and the Poisson arrivals of the run."""
    mean_size = float((VM_SIZES * VM_SIZE_P).sum())
    mean_life = VM_LIFETIME_MEDIAN_S * float(np.exp(VM_LIFETIME_SIGMA**2 / 2.0))
    target_vms = iaas_fill * iaas_gpus / mean_size
    rate = target_vms / mean_life
    # Initial population: fill sizes until the target GPU count; residual lifetimes (length-biased ≈ fresh draw).
    sizes_init: list[int] = []
    used = 0
    while True:
        s = int(rng.choice(VM_SIZES, p=VM_SIZE_P))
        if used + s > iaas_fill * iaas_gpus:
            break
        sizes_init.append(s)
        used += s
    n0 = len(sizes_init)
    n1 = int(rng.poisson(rate * duration_s))
    arrival = np.concatenate([np.full(n0, -1.0), np.sort(rng.uniform(0.0, duration_s, size=n1))])
    sizes = np.concatenate([np.asarray(sizes_init, dtype=np.int64), rng.choice(VM_SIZES, p=VM_SIZE_P, size=n1)])
    n = n0 + n1
    life = rng.lognormal(np.log(VM_LIFETIME_MEDIAN_S), VM_LIFETIME_SIGMA, size=n)
    life[:n0] *= rng.uniform(0.0, 1.0, size=n0)  # residual life of VMs already running
    return VmDraws(
        arrival_s=arrival,
        num_gpus=sizes.astype(np.int64),
        lifetime_s=np.maximum(life, 60.0),
        util_mean=rng.beta(*VM_UTIL_BETA, size=n),
        osc_period_s=rng.uniform(600.0, 2400.0, size=n),
        osc_phase=rng.uniform(0.0, 2 * np.pi, size=n),
    )


def vm_util(t_s: float, util_mean: F, period_s: F, phase: F) -> F:
    """Utilisation of each VM at time ``t_s`` (0.05..1)."""
    u = util_mean + VM_OSC_AMPLITUDE * np.sin(2.0 * np.pi * t_s / period_s + phase)
    return np.asarray(np.clip(u, 0.05, 1.0), dtype=np.float64)
