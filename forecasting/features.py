"""The one feature pipeline: per-server filters, online least squares and the feature vector.

Offline training and backtesting fold history through :func:`advance_state` row by
row exactly as the stream worker folds live samples, then read
:func:`feature_vector`; that is how the project avoids train/serve skew. The
functions are plain-float arithmetic (no NumPy, no pandas) because the worker calls
them per sample.

Features (``FEATURE_NAMES``), all computed from the state after folding the newest
observation in:

* inlet temperature and its trend (inlet minus its 10-minute mean),
* GPU power level and trend (recent minus mean level), what the current load would
  draw under the per-server load→power map,
* tokens/s split by phase (prefill share) and the load trend, batch size,
  configuration (frequency cap; the config id selects the power map),
* recent temperature history (temperature minus its 5-second filter, and the
  temperature's departure from the thermal model's value),
* burstiness: every feature enters twice, weighted by ``g`` and ``1 - g`` where
  ``g = jitter / (jitter + jitter_scale_w)`` and jitter is the mean absolute
  sample-to-sample change of per-GPU power. Serving load (prefill bursts) and
  smooth VM load need opposite corrections (revert to the mean vs follow the
  trend); the soft gate lets one linear model learn both,
* position in the row/rack enters through the per-server thermal offset ``b`` and
  resistance ``R`` that recursive least squares learns (a server in a hot spot gets
  a larger ``b`` within minutes).
"""

from __future__ import annotations

import math
from dataclasses import replace

from forecasting.state import ForecasterParams, Observation, ServerModelState

#: Inlet assumed when a server has never reported one (°C, ASHRAE recommended band mid-point).
DEFAULT_INLET_C = 24.0

#: Base features; each enters twice, weighted by the server's burstiness ``g`` and by ``1 - g``.
BASE_FEATURE_NAMES: tuple[str, ...] = (
    "intercept",
    "temp_minus_model_c",
    "power_short_trend_100w",
    "power_long_trend_100w",
    "temp_trend_c",
    "inlet_trend_c",
    "prefill_frac",
    "load_trend_frac",
    "freq_cap_frac",
    "batch_64",
    "load_power_gap_100w",
    "power_level_100w",
    "slowdown_margin_10c",
)
FEATURE_NAMES: tuple[str, ...] = tuple(f"{n}*smooth" for n in BASE_FEATURE_NAMES) + tuple(
    f"{n}*bursty" for n in BASE_FEATURE_NAMES)
NUM_FEATURES = len(FEATURE_NAMES)


def config_key(obs: Observation) -> str:
    """The key under which the per-server load→power map is learned (config and frequency cap)."""
    cap = "none" if obs.frequency_cap_mhz is None else f"{obs.frequency_cap_mhz:.0f}"
    return f"{obs.config_id or 'unknown'}|{cap}"


def initial_state(params: ForecasterParams) -> ServerModelState:
    """A state holding only the priors (nothing observed yet)."""
    return ServerModelState(
        th_r=params.r_c_per_100w, th_b=params.b_c, th_p11=params.prior_var_r, th_p22=params.prior_var_b,
        pw_0=params.idle_w_per_gpu, pw_1=params.prefill_w_per_ktok, pw_2=params.decode_w_per_ktok,
        pw_p00=params.prior_var_power[0], pw_p11=params.prior_var_power[1], pw_p22=params.prior_var_power[2],
    )


def _ewma(prev: float, new: float, dt_s: float, tau_s: float) -> float:
    a = math.exp(-dt_s / tau_s)
    return a * prev + (1.0 - a) * new


def _mix(prev: float, new: float, a: float) -> float:
    """One exponential-filter step with decay ``a`` (``exp(-dt / tau)``)."""
    return a * prev + (1.0 - a) * new


def load_power_w(state: ServerModelState, prefill_tokens_per_s: float, decode_tokens_per_s: float,
                 num_gpus: int) -> float:
    """Per-GPU power the server's learned load→power map predicts for a load, W."""
    n = max(num_gpus, 1)
    return state.pw_0 + state.pw_1 * prefill_tokens_per_s / (1000.0 * n) + state.pw_2 * decode_tokens_per_s / (
        1000.0 * n)


def model_temp_c(state: ServerModelState) -> float:
    """Hottest-GPU temperature the lag model explains from filtered inlet and power, °C."""
    return state.inlet_f_c + state.th_b + state.th_r * state.pgpu_f_w / 100.0


def _start(params: ForecasterParams, state: ServerModelState, obs: Observation, inlet_c: float,
           pgpu_w: float, tokens: float) -> ServerModelState:
    """(Re)start the filters at a first observation or after a gap; learned coefficients are kept."""
    if not state.started:
        state = initial_state(params)
    n = max(obs.num_gpus, 1)
    # Pick the filtered power that makes the lag model agree with the observed temperature, so a
    # server caught mid-warm-up is not mistaken for one with a different offset.
    implied = (obs.hottest_gpu_temp_c - inlet_c - state.th_b) * 100.0 / state.th_r if state.th_r > 0 else pgpu_w
    pgpu_f = min(max(implied, 0.0), max(2.0 * pgpu_w, 100.0))
    base = obs.server_power_w - obs.gpu_power_w if obs.server_power_w is not None else n * params.base_w_per_gpu
    tok_total = obs.prefill_tokens_per_s + obs.decode_tokens_per_s
    return replace(
        state, at_s=obs.at_s, temp_c=obs.hottest_gpu_temp_c, temp_fast_c=obs.hottest_gpu_temp_c,
        inlet_c=inlet_c, inlet_f_c=inlet_c, inlet_slow_c=inlet_c, pgpu_f_w=pgpu_f, pgpu_fast_w=pgpu_w,
        pgpu_slow_w=pgpu_w, pgpu_w=pgpu_w, base_w=max(base, 0.0), tokens_fast=tokens, tokens_slow=tokens,
        prefill_frac=obs.prefill_tokens_per_s / tok_total if tok_total > 0 else 0.0,
        batch_fast=obs.batch_size,
        freq_cap_mhz=0.0 if obs.frequency_cap_mhz is None else obs.frequency_cap_mhz,
        num_obs=state.num_obs + 1.0, config_key=config_key(obs),
    )


def advance_state(params: ForecasterParams, state: ServerModelState, obs: Observation) -> ServerModelState:
    """Fold one observation into a server's state (filters, thermal RLS, load→power RLS); pure.

    Observations not newer than the state are ignored (replays, duplicates). A gap
    longer than ``params.max_gap_s`` restarts the filters but keeps what was learned.
    """
    n = max(obs.num_gpus, 1)
    pgpu = obs.gpu_power_w / n
    tokens = obs.prefill_tokens_per_s + obs.decode_tokens_per_s
    if obs.inlet_temp_c is not None:
        inlet = obs.inlet_temp_c
    elif state.started:
        inlet = state.inlet_c
    else:
        inlet = DEFAULT_INLET_C
    if not state.started or obs.at_s - state.at_s > params.max_gap_s:
        return _start(params, state, obs, inlet, pgpu, tokens)
    dt = obs.at_s - state.at_s
    if dt <= 0:
        return state

    a_th = math.exp(-dt / params.tau_thermal_s)
    a_fast = math.exp(-dt / params.tau_fast_s)
    a_slow = math.exp(-dt / params.tau_slow_s)
    pgpu_f = a_th * state.pgpu_f_w + (1.0 - a_th) * pgpu
    inlet_f = a_th * state.inlet_f_c + (1.0 - a_th) * inlet

    # Thermal RLS as a random-walk Kalman filter: T - inlet_f = b + R * pgpu_f / 100. Process noise
    # (1 - forgetting) * prior per second lets a drifting server be tracked; the covariance is scaled
    # back (congruence, so it stays positive semi-definite) when it exceeds the prior.
    q = (1.0 - params.forgetting) * dt
    x1 = pgpu_f / 100.0
    r, b = state.th_r, state.th_b
    p11, p12, p22 = state.th_p11 + q * params.prior_var_r, state.th_p12, state.th_p22 + q * params.prior_var_b
    px1 = p11 * x1 + p12
    px2 = p12 * x1 + p22
    s = max(x1 * px1 + px2, 0.0) + params.rls_noise_var_c2
    innov = obs.hottest_gpu_temp_c - inlet_f - (b + r * x1)
    bound = 5.0 * math.sqrt(s)
    innov = min(max(innov, -bound), bound)
    k1, k2 = px1 / s, px2 / s
    r += k1 * innov
    b += k2 * innov
    p11, p12, p22 = p11 - k1 * px1, p12 - k1 * px2, p22 - k2 * px2
    d1 = min(1.0, math.sqrt(params.prior_var_r / p11)) if p11 > 0 else 1.0
    d2 = min(1.0, math.sqrt(params.prior_var_b / p22)) if p22 > 0 else 1.0
    p11, p12, p22 = max(p11 * d1 * d1, 1e-12), p12 * d1 * d2, max(p22 * d2 * d2, 1e-12)

    # Load->power RLS per GPU (same filter): pgpu = c0 + c1 * prefill_ktok/gpu + c2 * decode_ktok/gpu.
    # Unrolled 3x3 algebra: this runs per sample in the worker.
    key = config_key(obs)
    v0, v1, v2 = params.prior_var_power
    if key != state.config_key:  # new configuration: keep the map as a start, forget its certainty
        m00, m01, m02, m11, m12, m22 = v0, 0.0, 0.0, v1, 0.0, v2
    else:
        m00, m01, m02 = state.pw_p00 + q * v0, state.pw_p01, state.pw_p02
        m11, m12, m22 = state.pw_p11 + q * v1, state.pw_p12, state.pw_p22 + q * v2
    x1 = obs.prefill_tokens_per_s / (1000.0 * n)
    x2 = obs.decode_tokens_per_s / (1000.0 * n)
    q0 = m00 + m01 * x1 + m02 * x2
    q1 = m01 + m11 * x1 + m12 * x2
    q2 = m02 + m12 * x1 + m22 * x2
    sp = q0 + x1 * q1 + x2 * q2
    sp = (sp if sp > 0.0 else 0.0) + params.power_noise_var_w2
    e = pgpu - (state.pw_0 + state.pw_1 * x1 + state.pw_2 * x2)
    pbound = 5.0 * math.sqrt(sp)
    e = pbound if e > pbound else -pbound if e < -pbound else e
    k0, k1, k2 = q0 / sp, q1 / sp, q2 / sp
    c0, c1, c2 = state.pw_0 + k0 * e, state.pw_1 + k1 * e, state.pw_2 + k2 * e
    m00, m01, m02 = m00 - k0 * q0, m01 - k0 * q1, m02 - k0 * q2
    m11, m12, m22 = m11 - k1 * q1, m12 - k1 * q2, m22 - k2 * q2
    d0 = math.sqrt(v0 / m00) if m00 > v0 else 1.0
    d1 = math.sqrt(v1 / m11) if m11 > v1 else 1.0
    d2 = math.sqrt(v2 / m22) if m22 > v2 else 1.0
    m00, m01, m02 = m00 * d0 * d0, m01 * d0 * d1, m02 * d0 * d2
    m11, m12, m22 = m11 * d1 * d1, m12 * d1 * d2, m22 * d2 * d2
    m00, m11, m22 = max(m00, 1e-12), max(m11, 1e-12), max(m22, 1e-12)

    if obs.server_power_w is not None:
        base = _mix(state.base_w, max(obs.server_power_w - obs.gpu_power_w, 0.0), a_th)
    else:
        base = state.base_w
    tok_total = obs.prefill_tokens_per_s + obs.decode_tokens_per_s
    pre_frac = obs.prefill_tokens_per_s / tok_total if tok_total > 0 else state.prefill_frac
    return ServerModelState(
        at_s=obs.at_s,
        temp_c=obs.hottest_gpu_temp_c,
        temp_fast_c=_mix(state.temp_fast_c, obs.hottest_gpu_temp_c, a_fast),
        inlet_c=inlet,
        inlet_f_c=inlet_f,
        inlet_slow_c=_ewma(state.inlet_slow_c, inlet, dt, params.tau_inlet_slow_s),
        pgpu_f_w=pgpu_f,
        pgpu_fast_w=_mix(state.pgpu_fast_w, pgpu, a_fast),
        pgpu_slow_w=_mix(state.pgpu_slow_w, pgpu, a_slow),
        base_w=base,
        tokens_fast=_mix(state.tokens_fast, tokens, a_fast),
        tokens_slow=_mix(state.tokens_slow, tokens, a_slow),
        prefill_frac=_mix(state.prefill_frac, pre_frac, a_fast),
        batch_fast=_mix(state.batch_fast, obs.batch_size, a_fast),
        freq_cap_mhz=0.0 if obs.frequency_cap_mhz is None else obs.frequency_cap_mhz,
        th_r=r, th_b=b, th_p11=p11, th_p12=p12, th_p22=p22,
        pw_0=c0, pw_1=c1, pw_2=c2,
        pw_p00=m00, pw_p01=m01, pw_p02=m02, pw_p11=m11, pw_p12=m12, pw_p22=m22,
        num_obs=state.num_obs + 1.0,
        pjit_w=_ewma(state.pjit_w, min(abs(pgpu - state.pgpu_w), params.jitter_clip_w), dt, params.tau_jitter_s),
        pgpu_w=pgpu,
        config_key=key,
    )


def burstiness(params: ForecasterParams, state: ServerModelState) -> float:
    """How bursty the server's power is, 0 (smooth VM load) to 1 (serving bursts)."""
    j2 = state.pjit_w * state.pjit_w
    return j2 / (j2 + params.jitter_scale_w * params.jitter_scale_w)


def feature_vector(params: ForecasterParams, state: ServerModelState, obs: Observation) -> list[float]:
    """The ``FEATURE_NAMES`` vector of a server after ``obs`` was folded into ``state``."""
    n = max(obs.num_gpus, 1)
    cap = state.freq_cap_mhz
    load_p = load_power_w(state, state.tokens_fast * state.prefill_frac,
                          state.tokens_fast * (1.0 - state.prefill_frac), n)
    base = [
        1.0,
        state.temp_c - model_temp_c(state),
        (state.pgpu_fast_w - state.pgpu_f_w) / 100.0,
        (state.pgpu_f_w - state.pgpu_slow_w) / 100.0,
        state.temp_c - state.temp_fast_c,
        state.inlet_c - state.inlet_slow_c,
        state.prefill_frac,
        (state.tokens_fast - state.tokens_slow) / (state.tokens_slow + 100.0),
        1.0 if cap <= 0 else cap / 2000.0,
        state.batch_fast / 64.0,
        (load_p - state.pgpu_fast_w) / 100.0,
        state.pgpu_slow_w / 100.0,
        (obs.slowdown_temp_c - state.temp_c) / 10.0,
    ]
    g = burstiness(params, state)
    return [v * (1.0 - g) for v in base] + [v * g for v in base]


def power_path(params: ForecasterParams, state: ServerModelState) -> tuple[float, float]:
    """``(L, D)`` of the expected per-GPU power path ``p(t) = L + D * exp(-t / tau_revert_s)``, W.

    Smooth (VM-like) load persists at its last value; bursty (serving) load starts
    from its 5-second level and reverts to its 2-minute mean. The burstiness
    :func:`burstiness` blends the two.
    """
    g = burstiness(params, state)
    p0 = (1.0 - g) * state.pgpu_w + g * state.pgpu_fast_w
    level = (1.0 - g) * p0 + g * state.pgpu_slow_w
    return level, p0 - level


def physics_temp_c(params: ForecasterParams, state: ServerModelState, horizon_s: float) -> float:
    """First-order-lag forecast of the hottest GPU at ``horizon_s``, °C.

    Solves ``dT/dt = (T_ss(t) - T) / tau`` from ``T(0)`` = the last reading, with
    ``T_ss(t) = inlet + b + R * p(t) / 100`` and the per-GPU power path of
    :func:`power_path`.
    """
    tau, tau_p = params.tau_thermal_s, params.tau_revert_s
    level, dev = power_path(params, state)
    a = state.inlet_c + state.th_b + state.th_r * level / 100.0
    e = math.exp(-horizon_s / tau)
    if abs(tau_p - tau) < 1e-6:
        g = horizon_s / tau * e
    else:
        g = tau_p / (tau_p - tau) * (math.exp(-horizon_s / tau_p) - e)
    return a + (state.temp_c - a) * e + state.th_r * dev / 100.0 * g


def physics_gpu_power_w(params: ForecasterParams, state: ServerModelState, horizon_s: float) -> float:
    """Per-GPU power at ``horizon_s`` along :func:`power_path`, W."""
    level, dev = power_path(params, state)
    return level + dev * math.exp(-horizon_s / params.tau_revert_s)
