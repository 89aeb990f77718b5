"""Configuration catalogues built from the simulator's physics, in the controller's ``Catalogue`` format.

An endpoint's options are the cross product of its weight layouts (model variant,
tensor parallelism, precision) and GPU frequency caps; every option occupies one
8-GPU server as ``8 // TP`` replicas. Options are scored for a request mix (mean
prompt and output tokens of the trace) so that capacity and power-per-token match the
workload the simulator will replay.

* ``capacity_tokens_per_s_at_slo`` = ``SLO_UTILISATION`` × replicas × (P̄ + Ḡ) /
  (prefill(P̄) + Ḡ·tbt(b)/b) with b = min(max_batch, 8): the throughput at which queueing
  still keeps the P99 TTFT near its SLO (an M/G/1 queue at ρ = 0.7 has P99 wait ≈ 3–4
  service times, the TTFT SLO allowance; see PARAMETERS.md).
* per-GPU power per token/s: the phase's dynamic power at the option's clock divided by
  the instance's token rate when fully busy in that phase.
* ``quality_score`` = MMLU/100 of the variant minus the precision's loss.
* ``switch_cost_s`` = ``RELOAD_S`` for options whose weight layout differs from the
  endpoint's default (reloading weights, DynamoLLM reports tens of seconds), else 0.

Each option is one ``ConfigOption`` record (the controller's numbers and the serving model
the engine replays requests with); ``export_catalogue`` writes it as data with ``SOURCES``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from controller.core.catalogue import Catalogue, ConfigOption
from foundation.topology import GpuSku
from simulator.physics.perf import (
    POWER_FREQ_EXP,
    make_config,
    prefill_time_s,
    tbt_s,
)

SLO_UTILISATION = 0.7
RELOAD_S = 45.0
TYPICAL_BATCH = 8


@dataclass(frozen=True)
class EndpointSpec:
    """A SaaS endpoint: its share of requests, its default layout and the layouts it may switch to."""

    endpoint_id: str
    share: float
    default_layout: tuple[str, int, str]
    layouts: tuple[tuple[str, int, str], ...]
    max_batch: int = 32


#: Shipped endpoints: a 70B service (may fall back to INT8, TP4 or a 13B model) and a 13B one.
DEFAULT_ENDPOINTS: tuple[EndpointSpec, ...] = (
    EndpointSpec(
        "llm-70b",
        0.75,
        ("llama2-70b", 8, "fp16"),
        (("llama2-70b", 8, "fp16"), ("llama2-70b", 8, "int8"), ("llama2-70b", 4, "fp16"), ("llama2-13b", 2, "fp16")),
    ),
    EndpointSpec(
        "llm-13b",
        0.25,
        ("llama2-13b", 2, "fp16"),
        (("llama2-13b", 2, "fp16"), ("llama2-13b", 2, "int8"), ("llama2-7b", 1, "fp16")),
    ),
)

#: Frequency caps offered as fractions of the SKU's maximum clock.
FREQ_CAP_FRACS: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def config_id_for(endpoint_id: str, option: ConfigOption) -> str:
    """Catalogue id: endpoint-qualified so two endpoints' options never collide."""
    return f"{endpoint_id}:{option.config_id}"


def build_specs(
    endpoints: Sequence[EndpointSpec], sku: GpuSku, *, gpus_per_server: int = 8
) -> dict[str, list[ConfigOption]]:
    """Every endpoint's options with their serving model (not yet scored for a request mix); default first."""
    out: dict[str, list[ConfigOption]] = {}
    for ep in endpoints:
        layouts = [ep.default_layout] + [lay for lay in ep.layouts if lay != ep.default_layout]
        items: list[ConfigOption] = []
        for variant, tp, precision in layouts:
            if precision == "fp8" and sku.perf_scale < 1.5:
                continue  # FP8 needs Hopper
            for frac in FREQ_CAP_FRACS:
                o = make_config(variant, tp, precision, round(sku.max_freq_mhz * frac), ep.max_batch,
                                gpus_per_server=gpus_per_server, perf_scale=sku.perf_scale)
                slow = (variant, tp, precision) != ep.default_layout
                items.append(replace(o, config_id=config_id_for(ep.endpoint_id, o),
                                     switch_cost_s=RELOAD_S if slow else 0.0, slow_knob=slow))
        out[ep.endpoint_id] = items
    return out


def option_from_spec(option: ConfigOption, sku: GpuSku, *, mean_prompt: float, mean_output: float) -> ConfigOption:
    """Score one option's serving model for the request mix: capacity at the SLO and per-GPU power per token/s."""
    f = np.array([option.frequency_cap_mhz / sku.max_freq_mhz])
    c0, c1, c2 = option.prefill_time_s
    d0, d1, d2 = option.decode_step_s
    pre_t = float(prefill_time_s(np.array([mean_prompt]), c0, c1, c2, f)[0])
    b = float(min(option.max_batch, TYPICAL_BATCH))
    step = float(tbt_s(np.array([b]), d0, d1, d2, f)[0])
    service_s = pre_t + mean_output * step / b
    capacity = SLO_UTILISATION * option.replicas * (mean_prompt + mean_output) / service_s
    fscale = float(f[0]) ** POWER_FREQ_EXP
    pre_dyn = max(option.prefill_power_frac * sku.tdp_w - sku.idle_w, 0.0) * fscale
    dec_dyn = max(option.decode_power_frac * sku.tdp_w - sku.idle_w, 0.0) * fscale
    prefill_rate_full = option.replicas * mean_prompt / pre_t
    decode_rate_full = option.replicas * b / step
    return replace(
        option,
        capacity_tokens_per_s_at_slo=capacity,
        gpu_idle_w=sku.idle_w,
        gpu_max_w=sku.idle_w + max(pre_dyn, dec_dyn),
        prefill_w_per_token_s=pre_dyn / prefill_rate_full,
        decode_w_per_token_s=dec_dyn / decode_rate_full,
    )


SOURCES: dict[str, str] = {
    "prefill_time_s, decode_step_s": "Llama-2-70B on 8xA100-80GB, Splitwise (Patel et al., ISCA 2024) "
    "splitwise-perf/perf_model.csv, fitted per TP by simulator.physics.perf.fit_llama70b_a100; other variants "
    "and precisions scaled by the factors in simulator/PARAMETERS.md (assumptions)",
    "prefill_power_frac, decode_power_frac": "perf_model.csv peak_power (prefill ~1.0 TDP) and average_power "
    "of decode-dominated runs (0.44/0.59/0.74 TDP at TP 8/4/2)",
    "quality_score": "MMLU 5-shot of the variant (Touvron et al. 2023, Table 3) minus the precision's loss "
    "(simulator.physics.perf.PRECISION_EFFECTS)",
    "capacity_tokens_per_s_at_slo": f"SLO_UTILISATION={SLO_UTILISATION} x replicas x tokens per request / "
    "service time at the request mix (simulator.catalogue; PARAMETERS.md)",
    "gpu_idle_w, gpu_max_w, prefill_w_per_token_s, decode_w_per_token_s": "SKU TDP and idle power "
    "(foundation.topology.SKUS), phase power fractions, dynamic power ~ f**POWER_FREQ_EXP "
    f"(POWER_FREQ_EXP={POWER_FREQ_EXP}, an assumption)",
    "switch_cost_s": f"RELOAD_S={RELOAD_S} s to reload weights (DynamoLLM reports tens of seconds)",
}
"""Where each field's numbers come from, written into every exported catalogue."""


def build_catalogue(
    sku: GpuSku,
    *,
    endpoints: Sequence[EndpointSpec] = DEFAULT_ENDPOINTS,
    mean_prompt: float = 2048.0,
    mean_output: float = 28.0,
    gpus_per_server: int = 8,
) -> Catalogue:
    """The catalogue of ``endpoints`` on ``sku``, scored for the request mix.

    Examples:
        >>> from foundation.topology import SKUS
        >>> cat = build_catalogue(SKUS["A100-SXM-80GB"])
        >>> cat.defaults["llm-70b"]
        'llm-70b:llama2-70b-tp8-fp16-1410mhz-b32'
        >>> cat.default("llm-70b").capacity_tokens_per_s_at_slo > 0
        True
    """
    per_ep = build_specs(endpoints, sku, gpus_per_server=gpus_per_server)
    options: dict[str, list[ConfigOption]] = {}
    defaults: dict[str, str] = {}
    for ep in endpoints:
        items = per_ep[ep.endpoint_id]
        defaults[ep.endpoint_id] = items[0].config_id
        options[ep.endpoint_id] = [option_from_spec(o, sku, mean_prompt=mean_prompt, mean_output=mean_output)
                                   for o in items]
    return Catalogue.from_options(options, defaults)


def export_catalogue(sku: GpuSku, *, mean_prompt: float = 2048.0, mean_output: float = 28.0,
                     gpus_per_server: int = 8) -> dict[str, object]:
    """``build_catalogue`` as data with its sources, SKU and request mix (``tapas catalogue export``)."""
    cat = build_catalogue(sku, mean_prompt=mean_prompt, mean_output=mean_output, gpus_per_server=gpus_per_server)
    return cat.to_dict(sources=SOURCES, sku=sku.name, gpus_per_server=gpus_per_server,
                       request_mix={"mean_prompt_tokens": mean_prompt, "mean_output_tokens": mean_output})
