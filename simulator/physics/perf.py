"""Per-configuration speed and power of an LLM inference instance (pure NumPy, no I/O).

Grounding: Llama-2-70B on 8×A100-80GB measured by Splitwise (Patel et al., ISCA 2024;
``splitwise-perf/perf_model.csv``). For TP 2, 4 and 8 the prompt (prefill) time is
fitted as ``c0 + c1·P + c2·P²`` ms in the prompt size P (batch 1) and the per-token
(decode) time as ``d0 + d1·b + d2·b²`` ms in the batch size b (prompt 512); the
coefficients below come from :func:`fit_llama70b_a100` on that file (a unit test
re-fits them when the data is present). Normalised power in the same file: prompt
phases peak at ≈1.0×TDP, decode-dominated runs average 0.44 (TP8), 0.59 (TP4) and
0.74 (TP2) of TDP. Smaller variants and other precisions are scaled from these by the
documented factors in ``simulator/PARAMETERS.md`` (assumptions, not measurements).

Frequency: prefill is compute-bound (time ∝ 1/f for its compute share
``PREFILL_COMPUTE_FRAC``), decode is memory-bound (only ``DECODE_COMPUTE_FRAC`` of its
time scales with 1/f). Dynamic GPU power scales as ``f**POWER_FREQ_EXP``.

Examples:
    >>> round(float(prefill_time_s(np.array([2048.0]), 0.039, 1.062e-4, 1.0e-8, np.array([1.0]))[0]), 3)
    0.298
    >>> round(float(tbt_s(np.array([1.0]), 0.04494, 1.788e-4, 3.59e-6, np.array([1.0]))[0]), 4)
    0.0451
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from controller.core.catalogue import ConfigOption

F = npt.NDArray[np.float64]

#: Share of prefill time that scales with 1/frequency (compute-bound; Splitwise §3).
PREFILL_COMPUTE_FRAC = 0.9
#: Share of decode time that scales with 1/frequency (memory-bound; POLCA §4 shows small losses).
DECODE_COMPUTE_FRAC = 0.3
#: Dynamic power ∝ f**exp over the DVFS range (assumption; calibration item 9 not run here).
POWER_FREQ_EXP = 2.0

#: Fitted on perf_model.csv (llama2-70b, a100-80gb): prefill ms = c0 + c1 P + c2 P² (batch 1).
LLAMA70B_A100_PREFILL_MS: dict[int, tuple[float, float, float]] = {
    2: (25.3955, 0.335464, 3.2947e-6),
    4: (37.7674, 0.164984, 1.41124e-5),
    8: (39.0252, 0.106201, 9.5118e-6),
}
#: Fitted on perf_model.csv: decode ms/token = d0 + d1 b + d2 b² (prompt 512).
LLAMA70B_A100_DECODE_MS: dict[int, tuple[float, float, float]] = {
    2: (57.7352, 0.687302, -0.0083669),
    4: (44.8057, 0.0886998, 0.00540795),
    8: (44.9406, 0.178804, 0.00358629),
}
#: Decode-phase GPU power as a fraction of TDP (perf_model.csv average_power, decode-dominated runs).
LLAMA70B_A100_DECODE_POWER_FRAC: dict[int, float] = {2: 0.74, 4: 0.59, 8: 0.44}
#: Prefill-phase GPU power as a fraction of TDP (perf_model.csv peak_power ≈ 1.0).
PREFILL_POWER_FRAC = 1.0

#: Parameters in billions per model variant (Touvron et al. 2023).
VARIANT_PARAMS_B: dict[str, float] = {"llama2-70b": 70.0, "llama2-13b": 13.0, "llama2-7b": 7.0}
#: MMLU 5-shot (Touvron et al. 2023, Table 3), the quality score of the FP16 variant.
VARIANT_MMLU: dict[str, float] = {"llama2-70b": 68.9, "llama2-13b": 54.8, "llama2-7b": 45.3}
#: Precision effects: (prefill time ×, decode time ×, decode power ×, MMLU points lost).
#: INT8 weight-only (LLM.int8()/SmoothQuant report < 0.5 MMLU points lost on Llama-class models);
#: FP8 (H100 transformer engine) ~0.3 points. Speed factors are assumptions (weights halve memory traffic).
PRECISION_EFFECTS: dict[str, tuple[float, float, float, float]] = {
    "fp16": (1.0, 1.0, 1.0, 0.0),
    "int8": (1.05, 0.65, 0.9, 0.4),
    "fp8": (0.6, 0.65, 0.9, 0.3),
}


def make_config(
    model_variant: str,
    tensor_parallelism: int,
    precision: str,
    frequency_cap_mhz: float,
    max_batch: int,
    *,
    gpus_per_server: int = 8,
    perf_scale: float = 1.0,
) -> ConfigOption:
    """Derive a configuration's serving model from the Llama-2-70B A100 fits and the scaling rules.

    Returns the configuration's one record (``ConfigOption``) with its identity, serving-model
    coefficients and quality filled in; capacity and per-token power depend on the request mix
    and are scored by ``simulator.catalogue.option_from_spec``.

    Prefill compute scales with parameters; decode time with weight bytes per GPU to the
    power 0.8 (fixed overheads — kernel launches, all-reduce — do not shrink), floored at
    12 ms; TP 1 extrapolates from TP 2 (prefill ×2, decode as TP 2). ``perf_scale`` divides
    times (2.0 for H100 against A100, from the TP8 prefill and decode fits of the same file).
    """
    scale = VARIANT_PARAMS_B[model_variant] / 70.0
    tp_key = min(max(tensor_parallelism, 2), 8)
    c0, c1, c2 = LLAMA70B_A100_PREFILL_MS[tp_key]
    d0, d1, d2 = LLAMA70B_A100_DECODE_MS[tp_key]
    pre_x, dec_x, dpow_x, mmlu_lost = PRECISION_EFFECTS[precision]
    tp_extra = 2.0 if tensor_parallelism == 1 else 1.0
    pf = pre_x * tp_extra * scale / perf_scale
    dec_scale = max(scale**0.8, 0.0) * dec_x / perf_scale
    dpf = LLAMA70B_A100_DECODE_POWER_FRAC[tp_key] * dpow_x
    config_id = f"{model_variant}-tp{tensor_parallelism}-{precision}-{int(frequency_cap_mhz)}mhz-b{max_batch}"
    return ConfigOption(
        config_id=config_id,
        model_variant=model_variant,
        tensor_parallelism=tensor_parallelism,
        precision=precision,
        frequency_cap_mhz=frequency_cap_mhz,
        max_batch=max_batch,
        capacity_tokens_per_s_at_slo=0.0,
        gpu_idle_w=0.0,
        gpu_max_w=0.0,
        prefill_w_per_token_s=0.0,
        decode_w_per_token_s=0.0,
        quality_score=(VARIANT_MMLU[model_variant] - mmlu_lost) / 100.0,
        replicas=max(1, gpus_per_server // tensor_parallelism),
        prefill_time_s=(c0 * 1e-3 * max(scale, 0.3) * pre_x / perf_scale, c1 * 1e-3 * pf, c2 * 1e-3 * pf),
        decode_step_s=(max(d0 * 1e-3 * dec_scale, 0.012), d1 * 1e-3 * dec_scale, max(d2, 0.0) * 1e-3 * dec_scale),
        decode_power_frac=dpf,
        prefill_power_frac=PREFILL_POWER_FRAC,
    )


def freq_time_factor(freq_frac: F, compute_frac: float) -> F:
    """Time multiplier at a clock ``freq_frac`` of the maximum when ``compute_frac`` of the work is compute-bound."""
    return (1.0 - compute_frac) + compute_frac / np.maximum(freq_frac, 1e-3)


def prefill_time_s(prompt_tokens: F, c0_s: F | float, c1_s: F | float, c2_s: F | float, freq_frac: F) -> F:
    """Time to prefill one prompt of ``prompt_tokens`` at relative clock ``freq_frac`` (seconds)."""
    base = c0_s + c1_s * prompt_tokens + c2_s * prompt_tokens * prompt_tokens
    return np.asarray(base * freq_time_factor(freq_frac, PREFILL_COMPUTE_FRAC), dtype=np.float64)


def tbt_s(batch: F, d0_s: F | float, d1_s: F | float, d2_s: F | float, freq_frac: F) -> F:
    """Time of one decode step (time between tokens) at batch ``batch`` per replica (seconds)."""
    b = np.maximum(batch, 1.0)
    base = d0_s + d1_s * b + d2_s * b * b
    return np.asarray(base * freq_time_factor(freq_frac, DECODE_COMPUTE_FRAC), dtype=np.float64)


def decode_power_frac_at_batch(base_frac: F | float, batch: F, max_batch: F | float) -> F:
    """Decode power fraction of TDP: more concurrent sequences → more memory traffic (±15 % around base)."""
    fill = np.clip(batch / np.maximum(max_batch, 1.0), 0.0, 1.0)
    return np.asarray(base_frac * (0.85 + 0.3 * fill), dtype=np.float64)


def gpu_power_w(
    idle_w: F | float,
    tdp_w: F | float,
    prefill_busy_frac: F,
    decode_busy_frac: F,
    decode_frac_of_tdp: F,
    freq_frac: F,
    prefill_frac_of_tdp: F | float = PREFILL_POWER_FRAC,
) -> F:
    """Mean GPU power over an interval: idle plus the dynamic power of the busy shares, capped at TDP.

    ``*_frac_of_tdp`` are the phase powers at full clock as a fraction of TDP; the dynamic part
    above idle scales with ``freq_frac ** POWER_FREQ_EXP``.

    Examples:
        >>> float(gpu_power_w(60.0, 400.0, np.array([1.0]), np.array([0.0]), np.array([0.4]), np.array([1.0]))[0])
        400.0
        >>> float(gpu_power_w(60.0, 400.0, np.array([0.0]), np.array([0.0]), np.array([0.4]), np.array([1.0]))[0])
        60.0
    """
    fscale = np.power(np.clip(freq_frac, 0.0, 1.0), POWER_FREQ_EXP)
    tdp = np.asarray(tdp_w, dtype=np.float64)
    idle = np.asarray(idle_w, dtype=np.float64)
    pre_dyn = np.maximum(prefill_frac_of_tdp * tdp - idle, 0.0)
    dec_dyn = np.maximum(decode_frac_of_tdp * tdp - idle, 0.0)
    p = idle + fscale * (prefill_busy_frac * pre_dyn + decode_busy_frac * dec_dyn)
    return np.asarray(np.minimum(p, tdp), dtype=np.float64)


def fit_llama70b_a100(csv_path: Path) -> dict[str, dict[int, tuple[float, float, float]]]:
    """Re-fit the prefill and decode polynomials from ``perf_model.csv`` (used by a test and PARAMETERS.md)."""
    import pandas as pd

    d = pd.read_csv(csv_path)
    d = d[(d.model == "llama2-70b") & (d.hardware == "a100-80gb")]
    out: dict[str, dict[int, tuple[float, float, float]]] = {"prefill_ms": {}, "decode_ms": {}}
    for tp in (2, 4, 8):
        x = d[d.tensor_parallel == tp]
        pre = x[x.batch_size == 1].groupby("prompt_size").prompt_time.mean()
        p = pre.index.to_numpy(dtype=float)
        c = np.linalg.lstsq(np.vstack([np.ones_like(p), p, p * p]).T, pre.to_numpy(), rcond=None)[0]
        dec = x[x.prompt_size == 512].groupby("batch_size").token_time.mean()
        b = dec.index.to_numpy(dtype=float)
        e = np.linalg.lstsq(np.vstack([np.ones_like(b), b, b * b]).T, dec.to_numpy(), rcond=None)[0]
        out["prefill_ms"][tp] = (float(c[0]), float(c[1]), float(c[2]))
        out["decode_ms"][tp] = (float(e[0]), float(e[1]), float(e[2]))
    return out
