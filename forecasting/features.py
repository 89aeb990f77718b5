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

The physics forecast (:func:`physics_forecast`) the corrections sit on runs the lag
model along an expected power path: serving load reverts from its 5-second level to
its 2-minute mean; smooth load follows an oscillation model (:func:`smooth_power_path`),
a second-order recursion on 30-second means of per-GPU power learned online by RLS,
which extrapolates drifts and oscillations of VM utilisation and restarts at steps.
"""

from __future__ import annotations

import math
from dataclasses import replace

from forecasting.state import AR_FIELDS, ForecasterParams, Observation, ServerModelState

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
    phot_w = pgpu_w if obs.hottest_gpu_power_w is None else obs.hottest_gpu_power_w
    implied = (obs.hottest_gpu_temp_c - inlet_c - state.th_b) * 100.0 / state.th_r if state.th_r > 0 else phot_w
    pgpu_f = min(max(implied, 0.0), max(2.0 * phot_w, 100.0))
    base = obs.server_power_w - obs.gpu_power_w if obs.server_power_w is not None else n * params.base_w_per_gpu
    tok_total = obs.prefill_tokens_per_s + obs.decode_tokens_per_s
    return replace(
        state, at_s=obs.at_s, temp_c=obs.hottest_gpu_temp_c, temp_fast_c=obs.hottest_gpu_temp_c,
        inlet_c=inlet_c, inlet_f_c=inlet_c, inlet_slow_c=inlet_c, pgpu_f_w=pgpu_f, pgpu_fast_w=pgpu_w,
        pgpu_slow_w=pgpu_w, pgpu_w=pgpu_w, base_w=max(base, 0.0), tokens_fast=tokens, tokens_slow=tokens,
        prefill_frac=obs.prefill_tokens_per_s / tok_total if tok_total > 0 else 0.0,
        batch_fast=obs.batch_size,
        freq_cap_mhz=0.0 if obs.frequency_cap_mhz is None else obs.frequency_cap_mhz,
        num_obs=state.num_obs + 1.0, config_key=config_key(obs), phot_dev_w=phot_w - pgpu_w,
        **_ar_restart_bucket(params, obs.at_s, pgpu_w),
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

    key = config_key(obs)
    changed = key != state.config_key
    a_th = math.exp(-dt / params.tau_thermal_s)
    a_fast = math.exp(-dt / params.tau_fast_s)
    a_slow = math.exp(-dt / params.tau_slow_s)
    # The thermal model's input is the hottest GPU's own power where the sample has per-GPU power.
    phot = pgpu if obs.hottest_gpu_power_w is None else obs.hottest_gpu_power_w
    pgpu_f = a_th * state.pgpu_f_w + (1.0 - a_th) * phot
    phot_dev = a_fast * state.phot_dev_w + (1.0 - a_fast) * (phot - pgpu)
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
    v0, v1, v2 = params.prior_var_power
    if changed:  # new configuration: keep the map as a start, forget its certainty
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
        phot_dev_w=phot_dev,
        config_key=key,
        # a new configuration steps the power level: the oscillation model restarts rather than fit across it
        **(_ar_restart_bucket(params, obs.at_s, pgpu) if changed else _ar_fold(params, state, obs.at_s, pgpu)),
    )


# ---- the oscillation model: per-GPU power averaged over buckets, a second-order recursion fitted online
#
# Smooth (VM-like) load is not flat: utilisation drifts and oscillates over tens of minutes, so
# persistence errs by several per cent of peak power at 300 s. A second-order recursion on bucket
# means, ``y[k+1] - y[k] = phi * (y[k] - y[k-1]) + kap * (y[k] - ref) + c`` (coefficients stored
# scaled by 100 for conditioning), represents a level, a trend and an oscillation of any period,
# and multi-step extrapolation of it is the forecast. It is learned by RLS with forgetting; a jump
# between buckets larger than ``ar_reset_w`` (a VM arrived or left, a configuration changed) restarts
# it from the new level, and a fit whose recursion would grow (spectral radius above
# ``ar_max_radius``) is not extrapolated.


def _ar_prior(params: ForecasterParams) -> dict[str, float]:
    v = params.ar_prior_var
    return {"ar_phi": 0.0, "ar_kap": 0.0, "ar_c": 0.0, "ar_p00": v, "ar_p01": 0.0, "ar_p02": 0.0,
            "ar_p11": v, "ar_p12": 0.0, "ar_p22": v}


def _ar_bucket_start(params: ForecasterParams, at_s: float) -> float:
    return math.floor(at_s / params.ar_bucket_s) * params.ar_bucket_s


def _ar_restart_bucket(params: ForecasterParams, at_s: float, pgpu_w: float) -> dict[str, float]:
    """An empty oscillation model with a bucket just opened at ``at_s``."""
    return {"ar_bucket_s": _ar_bucket_start(params, at_s), "ar_sum_w": pgpu_w, "ar_cnt": 1.0, "ar_y0": 0.0,
            "ar_y1": 0.0, "ar_ref": 0.0, "ar_n": 0.0, **_ar_prior(params)}


def _ar_fold(params: ForecasterParams, state: ServerModelState, at_s: float, pgpu_w: float) -> dict[str, float]:
    """The ``ar_*`` fields after one sample: accumulate it, or close the bucket and update the recursion."""
    b = _ar_bucket_start(params, at_s)
    if state.ar_cnt <= 0.0:
        return _ar_restart_bucket(params, at_s, pgpu_w)
    if b <= state.ar_bucket_s:
        kept = {f: getattr(state, f) for f in AR_FIELDS}
        return {**kept, "ar_sum_w": state.ar_sum_w + pgpu_w, "ar_cnt": state.ar_cnt + 1.0}
    y = state.ar_sum_w / state.ar_cnt
    opened = {"ar_bucket_s": b, "ar_sum_w": pgpu_w, "ar_cnt": 1.0}
    skipped = b > state.ar_bucket_s + 1.5 * params.ar_bucket_s
    if state.ar_n <= 0.0 or skipped or abs(y - state.ar_y1) > params.ar_reset_w:
        # restart from this bucket: a step (or missing buckets) breaks the recursion's lags
        return {**opened, "ar_y0": y, "ar_y1": y, "ar_ref": y, "ar_n": 1.0, **_ar_prior(params)}
    phi, kap, c = state.ar_phi, state.ar_kap, state.ar_c
    p00, p01, p02 = state.ar_p00, state.ar_p01, state.ar_p02
    p11, p12, p22 = state.ar_p11, state.ar_p12, state.ar_p22
    if state.ar_n >= 2.0:
        lam = params.ar_forgetting
        x0, x1 = (state.ar_y1 - state.ar_y0) / 100.0, (state.ar_y1 - state.ar_ref) / 100.0
        q0 = p00 * x0 + p01 * x1 + p02
        q1 = p01 * x0 + p11 * x1 + p12
        q2 = p02 * x0 + p12 * x1 + p22
        s = lam + x0 * q0 + x1 * q1 + q2
        e = (y - state.ar_y1) - (phi * x0 + kap * x1 + c)
        k0, k1, k2 = q0 / s, q1 / s, q2 / s
        phi, kap, c = phi + k0 * e, kap + k1 * e, c + k2 * e
        p00, p01, p02 = (p00 - k0 * q0) / lam, (p01 - k0 * q1) / lam, (p02 - k0 * q2) / lam
        p11, p12, p22 = (p11 - k1 * q1) / lam, (p12 - k1 * q2) / lam, (p22 - k2 * q2) / lam
        # unexcited directions grow by 1/lam per bucket: scale back to the prior (congruence keeps P PSD)
        v = params.ar_prior_var
        d0 = math.sqrt(v / p00) if p00 > v else 1.0
        d1 = math.sqrt(v / p11) if p11 > v else 1.0
        d2 = math.sqrt(v / p22) if p22 > v else 1.0
        p00, p01, p02 = max(p00 * d0 * d0, 1e-12), p01 * d0 * d1, p02 * d0 * d2
        p11, p12, p22 = max(p11 * d1 * d1, 1e-12), p12 * d1 * d2, max(p22 * d2 * d2, 1e-12)
    return {**opened, "ar_y0": state.ar_y1, "ar_y1": y, "ar_ref": state.ar_ref, "ar_n": state.ar_n + 1.0,
            "ar_phi": phi, "ar_kap": kap, "ar_c": c, "ar_p00": p00, "ar_p01": p01, "ar_p02": p02,
            "ar_p11": p11, "ar_p12": p12, "ar_p22": p22}


def ar_spectral_radius(state: ServerModelState) -> float:
    """Largest root modulus of the fitted recursion ``z² - (1 + phi + kap) z + phi`` (1 = persistence)."""
    phi, kap = state.ar_phi / 100.0, state.ar_kap / 100.0
    a1 = 1.0 + phi + kap
    disc = a1 * a1 - 4.0 * phi
    if disc < 0.0:
        return math.sqrt(phi)  # complex pair: |z|² = product of the roots = phi (> 0 here)
    r = math.sqrt(disc)
    return max(abs(a1 + r), abs(a1 - r)) / 2.0


def smooth_power_path(params: ForecasterParams, state: ServerModelState,
                      horizon_s: float) -> list[tuple[float, float]]:
    """Knots ``(seconds ahead, per-GPU W)`` of the smooth-load power path out to ``horizon_s``.

    Starts at the last reading; then the recursion's bucket means at the bucket centres ahead,
    held after the last knot. A single knot (persistence) while the model has fewer than
    ``ar_min_buckets`` buckets since its last restart, when its fit would grow, or when the last
    reading already stepped away from the last bucket (the restart is due at the bucket's close).
    """
    knots = [(0.0, state.pgpu_w)]
    if (state.ar_n < params.ar_min_buckets or abs(state.pgpu_w - state.ar_y1) > params.ar_reset_w
            or ar_spectral_radius(state) > params.ar_max_radius):
        return knots
    phi, kap, c, ref = state.ar_phi / 100.0, state.ar_kap / 100.0, state.ar_c, state.ar_ref
    y0, y1 = state.ar_y0, state.ar_y1
    centre = state.ar_bucket_s + 0.5 * params.ar_bucket_s
    while True:
        y0, y1 = y1, y1 + phi * (y1 - y0) + kap * (y1 - ref) + c
        t = centre - state.at_s
        if t > 0.0:
            knots.append((t, max(y1, 0.0)))
            if t >= horizon_s:
                return knots
        centre += params.ar_bucket_s


def _path_value(knots: list[tuple[float, float]], h: float) -> float:
    """Piecewise-linear value of knots at ``h`` (held after the last)."""
    t_prev, v_prev = knots[0]
    for t, v in knots[1:]:
        if t >= h:
            return v_prev + (v - v_prev) * (h - t_prev) / (t - t_prev)
        t_prev, v_prev = t, v
    return v_prev


def _lag_of_path(knots: list[tuple[float, float]], tau_s: float, h: float) -> float:
    """First-order lag response at ``h`` to the path ``knots - knots[0]``, starting from 0 (exact per segment).

    On a segment with slope ``m`` the lag follows ``T = u - m tau + (T0 - u0 + m tau) exp(-dt / tau)``.
    """
    v0 = knots[0][1]
    temp, t_prev, u_prev = 0.0, 0.0, 0.0
    for t, v in knots[1:]:
        u = v - v0
        m = (u - u_prev) / (t - t_prev)
        if t >= h:
            dt = h - t_prev
            return u_prev + m * dt - m * tau_s + (temp - u_prev + m * tau_s) * math.exp(-dt / tau_s)
        temp = u - m * tau_s + (temp - u_prev + m * tau_s) * math.exp(-(t - t_prev) / tau_s)
        t_prev, u_prev = t, u
    return u_prev + (temp - u_prev) * math.exp(-(h - t_prev) / tau_s)


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
        (state.pgpu_fast_w + state.phot_dev_w - state.pgpu_f_w) / 100.0,
        (state.pgpu_f_w - state.phot_dev_w - state.pgpu_slow_w) / 100.0,
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


def physics_forecast(params: ForecasterParams, state: ServerModelState,
                     horizons_s: list[float] | tuple[float, ...]) -> list[tuple[float, float]]:
    """``(hottest-GPU °C, per-GPU W)`` at each horizon from the lag model and the expected power path.

    The per-GPU power path blends, by the burstiness ``g`` (:func:`burstiness`), serving load that
    starts from its 5-second level and reverts to its 2-minute mean with ``tau_revert_s``,
    ``g * (slow + (fast - slow) exp(-t / tau_revert_s))``, and smooth load that follows the
    oscillation model, ``(1 - g) * s(t)`` (:func:`smooth_power_path`; the last reading while that
    model is not ready). The temperature solves ``dT/dt = (T_ss(t) - T) / tau`` from the last reading
    with ``T_ss(t) = inlet + b + R * (p(t) + d) / 100``, exactly for both parts, where ``d`` is the hottest
    GPU's filtered power above the mean (``phot_dev_w``; 0 without per-GPU power).
    """
    if not horizons_s:
        return []
    g = burstiness(params, state)
    tau, tau_p = params.tau_thermal_s, params.tau_revert_s
    knots = smooth_power_path(params, state, max(horizons_s))
    p_level = g * state.pgpu_slow_w + (1.0 - g) * state.pgpu_w
    dev = state.pgpu_fast_w - state.pgpu_slow_w
    k = state.th_r / 100.0
    a = state.inlet_c + state.th_b + k * (p_level + state.phot_dev_w)  # the hottest GPU sits phot_dev_w above
    out: list[tuple[float, float]] = []
    for h in horizons_s:
        e = math.exp(-h / tau)
        if abs(tau_p - tau) < 1e-6:
            gf = h / tau * e
        else:
            gf = tau_p / (tau_p - tau) * (math.exp(-h / tau_p) - e)
        smooth_dev = _path_value(knots, h) - state.pgpu_w
        temp = a + (state.temp_c - a) * e + k * g * dev * gf
        if len(knots) > 1:
            temp += k * (1.0 - g) * _lag_of_path(knots, tau, h)
        pgpu = p_level + g * dev * math.exp(-h / tau_p) + (1.0 - g) * smooth_dev
        out.append((temp, pgpu))
    return out
