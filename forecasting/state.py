"""The records the online forecaster works on: one observation, the model parameters and per-server state.

Everything here is plain floats in slotted dataclasses so that a stream worker can
update thousands of servers per second in Python, and a state can be stored in a
Faust changelog table as bytes with an exact round trip. ``Observation`` and
``ServerModelState`` are built once per sample and are not ``frozen``: a frozen
dataclass's ``__init__`` sets every field through ``object.__setattr__``, which was a
third of ``advance_state``'s 26 µs (17 µs without it, same host). They are still
values — every function here returns a new state and none mutates its inputs
(``tests/unit/test_forecast_online.py`` checks it).
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from contracts.errors import ConfigError


@dataclass(slots=True)
class Observation:
    """One server at one instant, as the worker joins it from GPU, inlet and PDU samples.

    Attributes:
        server_id: stable server id (Kafka key of the telemetry).
        at_s: sample time, seconds since the Unix epoch (UTC).
        hottest_gpu_temp_c: hottest GPU die temperature, °C.
        gpu_power_w: sum of the server's GPU power draws, W.
        server_power_w: whole-server input power, W, when the BMC or PDU outlet reports it.
        inlet_temp_c: latest intake air temperature, °C, when known.
        mean_gpu_util_pct: mean GPU utilisation, 0-100.
        prefill_tokens_per_s: prompt tokens processed per second on this server.
        decode_tokens_per_s: output tokens generated per second on this server.
        batch_size: mean running batch size.
        frequency_cap_mhz: SM clock cap in force, when any.
        config_id: catalogue configuration name, when the serving layer reports it.
        num_gpus: GPUs in the server.
        slowdown_temp_c: the GPUs' thermal slowdown threshold, °C.
        hottest_gpu_power_w: the hottest GPU's own power draw, W, when the sample carries per-GPU power (the
            thermal model's input: the hottest GPU is not at the mean power when GPUs of a server carry
            different loads). None: taken as the mean (older histories).
    """

    server_id: str
    at_s: float
    hottest_gpu_temp_c: float
    gpu_power_w: float
    server_power_w: float | None
    inlet_temp_c: float | None
    mean_gpu_util_pct: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    batch_size: float
    frequency_cap_mhz: float | None
    config_id: str | None
    num_gpus: int
    slowdown_temp_c: float
    hottest_gpu_power_w: float | None = None


#: Columns of a history DataFrame that map one-to-one onto :class:`Observation`.
OBSERVATION_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Observation))


def _default_horizon_table() -> dict[str, list[float]]:
    return {}


@dataclass(frozen=True)
class ForecasterParams:
    """Everything a forecaster version is: physics constants, priors, learned corrections, intervals.

    The defaults are the documented physics model used when the registry is empty
    (see ``forecasting/__init__.py``): a first-order thermal lag
    ``T(t+h) = T_ss + (T(t) - T_ss) * exp(-h / tau)`` with
    ``T_ss = inlet + b + R * p_gpu`` (``p_gpu`` = mean per-GPU power in units of
    100 W), and server power reverting from its recent level to its slower mean.
    ``R``/``b`` and the load→power map are corrected per server by recursive least
    squares. Trained versions overwrite the constants, and add per-horizon linear
    residual corrections (``*_coef``) and residual quantiles (``*_q``).

    Attributes:
        version: identifier announced on the model topic.
        tau_thermal_s: thermal time constant of a GPU (tens of seconds, DESIGN §5).
        r_c_per_100w: prior thermal resistance, °C per 100 W of per-GPU power.
        b_c: prior offset of hottest GPU above inlet at zero power, °C.
        prior_var_r: prior variance of ``R`` (how far one server may differ).
        prior_var_b: prior variance of ``b``.
        forgetting: RLS forgetting factor per second (memory ``1/(1-f)`` s).
        rls_noise_var_c2: assumed temperature noise variance, °C² (scales the RLS gain).
        idle_w_per_gpu: prior per-GPU power at zero load, W.
        prefill_w_per_ktok: prior server GPU power per 1000 prefill tokens/s, W.
        decode_w_per_ktok: prior server GPU power per 1000 decode tokens/s, W.
        prior_var_power: prior variances of the three load→power coefficients.
        power_noise_var_w2: assumed per-GPU power noise variance, W².
        base_w_per_gpu: prior non-GPU server power per GPU (CPU, fans, NVSwitch), W.
        tau_fast_s: time constant of the "recent level" filters.
        tau_slow_s: time constant of the "mean level" filters.
        tau_revert_s: how fast bursty power reverts from its recent level to its mean level (seconds:
            a serving burst says little about the load a minute later; 5 s gave lower 60 s errors
            than 15 s or 60 s in ``tapas backtest --simulate``).
        tau_inlet_slow_s: time constant of the inlet mean used for the inlet trend.
        tau_jitter_s: time constant of the power-jitter filter.
        jitter_scale_w: per-GPU jitter at which a server counts as half bursty, half smooth
            (``g = j² / (j² + scale²)``: a sharp gate keeps smooth load clear of burst corrections).
        jitter_clip_w: largest per-sample change counted as jitter (one step is not burstiness).
        max_gap_s: a gap longer than this restarts the filters (learned parameters kept).
        ar_bucket_s: width of the buckets the oscillation model averages per-GPU power over, s.
        ar_forgetting: per-bucket forgetting factor of its RLS (memory ``1/(1-f)`` buckets).
        ar_reset_w: a bucket-to-bucket change of per-GPU power larger than this is a step (a VM came or
            went, a configuration changed): the model restarts from it rather than fit across it, W.
        ar_min_buckets: closed buckets since the last restart before its path is used.
        ar_max_radius: largest spectral radius of the fitted recursion that is still extrapolated
            (an exploding fit falls back to persistence).
        ar_prior_var: prior variance of its three coefficients (weak: persistence is the prior mean).
        horizons_s: horizons the correction and quantile tables are given at.
        temp_coef: per horizon, linear residual correction of temperature over ``FEATURE_NAMES``.
        power_coef: per horizon, correction of per-GPU power (W) over ``FEATURE_NAMES``.
        temp_q: per horizon, residual quantiles of temperature, °C: ``[lo, hi]`` for every server, or
            ``[lo_0, hi_0, ..., lo_K-1, hi_K-1]`` for K equal bins of the server's burstiness.
        power_q: the same for per-GPU power, W.
        interval_level: nominal coverage of ``[lo, hi]``.
        metadata: free-form provenance (training range, metrics); not used to predict.
    """

    version: str = "physics-default"
    tau_thermal_s: float = 30.0
    r_c_per_100w: float = 10.0
    b_c: float = 5.0
    prior_var_r: float = 4.0
    prior_var_b: float = 25.0
    forgetting: float = 0.998
    rls_noise_var_c2: float = 1.0
    idle_w_per_gpu: float = 80.0
    prefill_w_per_ktok: float = 150.0
    decode_w_per_ktok: float = 600.0
    prior_var_power: tuple[float, float, float] = (400.0, 1.0e4, 1.0e5)
    power_noise_var_w2: float = 400.0
    base_w_per_gpu: float = 200.0
    tau_fast_s: float = 5.0
    tau_slow_s: float = 120.0
    tau_revert_s: float = 5.0
    tau_inlet_slow_s: float = 600.0
    tau_jitter_s: float = 60.0
    jitter_scale_w: float = 10.0
    jitter_clip_w: float = 100.0
    max_gap_s: float = 300.0
    ar_bucket_s: float = 30.0
    ar_forgetting: float = 0.97
    ar_reset_w: float = 25.0
    ar_min_buckets: float = 7.0
    ar_max_radius: float = 1.02
    ar_prior_var: float = 1.0e4
    horizons_s: tuple[float, ...] = (10.0, 60.0, 300.0, 900.0)
    temp_coef: dict[str, list[float]] = field(default_factory=_default_horizon_table)
    power_coef: dict[str, list[float]] = field(default_factory=_default_horizon_table)
    temp_q: dict[str, list[float]] = field(
        default_factory=lambda: {"10": [-1.0, 1.0], "60": [-2.0, 2.0], "300": [-3.5, 3.5], "900": [-5.0, 5.0]}
    )
    power_q: dict[str, list[float]] = field(
        default_factory=lambda: {"10": [-25.0, 25.0], "60": [-45.0, 45.0], "300": [-80.0, 80.0],
                                 "900": [-110.0, 110.0]}
    )
    interval_level: float = 0.9
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the registry artifact body)."""
        d = asdict(self)
        d["prior_var_power"] = list(self.prior_var_power)
        d["horizons_s"] = list(self.horizons_s)
        return d

    @classmethod
    def from_json_dict(cls, raw: dict[str, Any]) -> ForecasterParams:
        """Inverse of :meth:`to_json_dict`; unknown keys are an error naming them (a newer artifact)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"model artifact has unknown keys {unknown}; upgrade tapas to load it")
        d = dict(raw)
        if "prior_var_power" in d:
            d["prior_var_power"] = tuple(float(v) for v in d["prior_var_power"])
        if "horizons_s" in d:
            d["horizons_s"] = tuple(float(v) for v in d["horizons_s"])
        return cls(**d)


#: Float fields of :class:`ServerModelState`, in their byte order.
_STATE_FLOATS: tuple[str, ...] = (
    "at_s", "temp_c", "temp_fast_c", "inlet_c", "inlet_f_c", "inlet_slow_c",
    "pgpu_f_w", "pgpu_fast_w", "pgpu_slow_w", "base_w", "tokens_fast", "tokens_slow", "prefill_frac",
    "batch_fast", "freq_cap_mhz",
    "th_r", "th_b", "th_p11", "th_p12", "th_p22",
    "pw_0", "pw_1", "pw_2", "pw_p00", "pw_p01", "pw_p02", "pw_p11", "pw_p12", "pw_p22",
    "num_obs", "pjit_w", "pgpu_w",
    "ar_bucket_s", "ar_sum_w", "ar_cnt", "ar_y0", "ar_y1", "ar_ref", "ar_n", "ar_phi", "ar_kap", "ar_c",
    "ar_p00", "ar_p01", "ar_p02", "ar_p11", "ar_p12", "ar_p22",
    "phot_dev_w",
)
#: The oscillation model's fields, which format 3 added.
AR_FIELDS: tuple[str, ...] = tuple(n for n in _STATE_FLOATS if n.startswith("ar_"))
_AR_FLOATS = len(AR_FIELDS)
#: Format 2 added ``pjit_w`` and ``pgpu_w``, format 3 the ``ar_*`` oscillation model, format 4
#: ``phot_dev_w``; older payloads still load, with the newer fields at 0 (an empty oscillation model
#: restarts at the next bucket; a zero hot-GPU offset is the mean-power model of formats 1-3).
_STATE_STRUCTS = {1: struct.Struct(f"<B{len(_STATE_FLOATS) - 3 - _AR_FLOATS}d"),
                  2: struct.Struct(f"<B{len(_STATE_FLOATS) - 1 - _AR_FLOATS}d"),
                  3: struct.Struct(f"<B{len(_STATE_FLOATS) - 1}d"),
                  4: struct.Struct(f"<B{len(_STATE_FLOATS)}d")}
_STATE_FORMAT_VERSION = 4
_STATE_STRUCT = _STATE_STRUCTS[_STATE_FORMAT_VERSION]


@dataclass(slots=True)
class ServerModelState:
    """Per-server filters and online-learned coefficients (plain floats; zeros until the first observation, see ``started``).

    Attributes:
        at_s: time of the last observation folded in.
        temp_c: last hottest-GPU temperature, °C.
        temp_fast_c: temperature filtered with ``tau_fast_s`` (short-term trend).
        inlet_c: last inlet temperature, °C.
        inlet_f_c: inlet filtered with the thermal time constant.
        inlet_slow_c: inlet filtered with ``tau_inlet_slow_s`` (trend reference).
        pgpu_f_w: the hottest GPU's power filtered with the thermal time constant, W (the thermal model's input).
        pgpu_fast_w: per-GPU power, recent level, W.
        pgpu_slow_w: per-GPU power, mean level, W.
        base_w: non-GPU server power (server minus GPUs), W.
        tokens_fast: prefill+decode tokens/s, recent level.
        tokens_slow: prefill+decode tokens/s, mean level.
        prefill_frac: prefill share of tokens, recent level, 0-1.
        batch_fast: batch size, recent level.
        freq_cap_mhz: frequency cap in force (0 = none).
        th_r, th_b: per-server thermal resistance (°C/100 W) and offset (°C).
        th_p11, th_p12, th_p22: their RLS covariance.
        pw_0, pw_1, pw_2: per-server GPU power map: idle W/GPU, W per ktok/s prefill, W per ktok/s decode.
        pw_p00 ... pw_p22: their RLS covariance (upper triangle).
        num_obs: observations folded in.
        pgpu_w: last per-GPU power, W.
        pjit_w: per-GPU power jitter, the mean absolute sample-to-sample change, W (bursty vs smooth load).
        ar_bucket_s: start of the bucket being averaged (0 = none), s.
        ar_sum_w, ar_cnt: per-GPU power sum and sample count of that bucket.
        ar_y0, ar_y1: the two last closed bucket means, older first, W.
        ar_ref: the bucket mean the oscillation model restarted from, W.
        ar_n: closed buckets since that restart (0 = empty).
        ar_phi, ar_kap, ar_c: the recursion ``dy' = phi * dy / 100 + kap * (y - ref) / 100 + c`` (see
            :func:`forecasting.features.smooth_power_path`).
        ar_p00 ... ar_p22: their RLS covariance (upper triangle).
        config_key: configuration and frequency cap the power map was learned under.
        phot_dev_w: the hottest GPU's power above the server's mean per-GPU power, recent level (``tau_fast_s``),
            W (0 without per-GPU power): the forecast's temperature target adds it to the mean power path.
    """

    at_s: float = 0.0
    temp_c: float = 0.0
    temp_fast_c: float = 0.0
    inlet_c: float = 0.0
    inlet_f_c: float = 0.0
    inlet_slow_c: float = 0.0
    pgpu_f_w: float = 0.0
    pgpu_fast_w: float = 0.0
    pgpu_slow_w: float = 0.0
    base_w: float = 0.0
    tokens_fast: float = 0.0
    tokens_slow: float = 0.0
    prefill_frac: float = 0.0
    batch_fast: float = 0.0
    freq_cap_mhz: float = 0.0
    th_r: float = 0.0
    th_b: float = 0.0
    th_p11: float = 0.0
    th_p12: float = 0.0
    th_p22: float = 0.0
    pw_0: float = 0.0
    pw_1: float = 0.0
    pw_2: float = 0.0
    pw_p00: float = 0.0
    pw_p01: float = 0.0
    pw_p02: float = 0.0
    pw_p11: float = 0.0
    pw_p12: float = 0.0
    pw_p22: float = 0.0
    num_obs: float = 0.0
    pjit_w: float = 0.0
    pgpu_w: float = 0.0
    ar_bucket_s: float = 0.0
    ar_sum_w: float = 0.0
    ar_cnt: float = 0.0
    ar_y0: float = 0.0
    ar_y1: float = 0.0
    ar_ref: float = 0.0
    ar_n: float = 0.0
    ar_phi: float = 0.0
    ar_kap: float = 0.0
    ar_c: float = 0.0
    ar_p00: float = 0.0
    ar_p01: float = 0.0
    ar_p02: float = 0.0
    ar_p11: float = 0.0
    ar_p12: float = 0.0
    ar_p22: float = 0.0
    phot_dev_w: float = 0.0
    config_key: str = ""

    def to_bytes(self) -> bytes:
        """Compact binary form (little-endian doubles + UTF-8 config key); exact round trip."""
        head = _STATE_STRUCT.pack(_STATE_FORMAT_VERSION, *(getattr(self, n) for n in _STATE_FLOATS))
        return head + self.config_key.encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ServerModelState:
        """Inverse of :meth:`to_bytes`; raises ``ValueError`` on a foreign or truncated payload."""
        fmt = _STATE_STRUCTS.get(raw[0]) if raw else None
        if fmt is None:
            raise ValueError(f"ServerModelState: format {raw[:1]!r} unknown (expected {_STATE_FORMAT_VERSION})")
        if len(raw) < fmt.size:
            raise ValueError(f"ServerModelState: {len(raw)} bytes, need at least {fmt.size}")
        values = fmt.unpack_from(raw)
        kwargs: dict[str, Any] = dict(zip(_STATE_FLOATS, values[1:], strict=False))
        kwargs["config_key"] = raw[fmt.size:].decode()
        return cls(**kwargs)

    @property
    def started(self) -> bool:
        """True once an observation has been folded in."""
        return self.num_obs > 0
