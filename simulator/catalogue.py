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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from controller.core.catalogue import Catalogue, ConfigOption
from foundation.topology import GpuSku
from simulator.physics.perf import (
    POWER_FREQ_EXP,
    ConfigSpec,
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


def config_id_for(endpoint_id: str, spec: ConfigSpec) -> str:
    """Catalogue id: endpoint-qualified so two endpoints' options never collide."""
    return f"{endpoint_id}:{spec.config_id}"


def build_specs(
    endpoints: Sequence[EndpointSpec], sku: GpuSku, *, gpus_per_server: int = 8
) -> dict[str, list[tuple[str, ConfigSpec]]]:
    """Every (config id, physics spec) of every endpoint; the first of each list is the default."""
    out: dict[str, list[tuple[str, ConfigSpec]]] = {}
    for ep in endpoints:
        layouts = [ep.default_layout] + [lay for lay in ep.layouts if lay != ep.default_layout]
        items: list[tuple[str, ConfigSpec]] = []
        for variant, tp, precision in layouts:
            if precision == "fp8" and sku.perf_scale < 1.5:
                continue  # FP8 needs Hopper
            for frac in FREQ_CAP_FRACS:
                spec = make_config(variant, tp, precision, round(sku.max_freq_mhz * frac), ep.max_batch,
                                   gpus_per_server=gpus_per_server, perf_scale=sku.perf_scale)
                if (variant, tp, precision) != ep.default_layout:
                    spec = _with_switch_cost(spec, RELOAD_S)
                items.append((config_id_for(ep.endpoint_id, spec), spec))
        out[ep.endpoint_id] = items
    return out


def _with_switch_cost(spec: ConfigSpec, cost_s: float) -> ConfigSpec:
    from dataclasses import replace

    return replace(spec, switch_cost_s=cost_s)


def option_from_spec(
    config_id: str, spec: ConfigSpec, sku: GpuSku, *, mean_prompt: float, mean_output: float, default_layout: tuple[str, int, str]
) -> ConfigOption:
    """Score one physics spec for the request mix and express it as a controller ``ConfigOption``."""
    f = np.array([spec.frequency_cap_mhz / sku.max_freq_mhz])
    pre_t = float(prefill_time_s(np.array([mean_prompt]), spec.prefill_c0_s, spec.prefill_c1_s, spec.prefill_c2_s, f)[0])
    b = float(min(spec.max_batch, TYPICAL_BATCH))
    step = float(tbt_s(np.array([b]), spec.decode_d0_s, spec.decode_d1_s, spec.decode_d2_s, f)[0])
    service_s = pre_t + mean_output * step / b
    capacity = SLO_UTILISATION * spec.replicas * (mean_prompt + mean_output) / service_s
    fscale = float(f[0]) ** POWER_FREQ_EXP
    pre_dyn = max(spec.prefill_power_frac * sku.tdp_w - sku.idle_w, 0.0) * fscale
    dec_dyn = max(spec.decode_power_frac * sku.tdp_w - sku.idle_w, 0.0) * fscale
    prefill_rate_full = spec.replicas * mean_prompt / pre_t
    decode_rate_full = spec.replicas * b / step
    return ConfigOption(
        config_id=config_id,
        model_variant=spec.model_variant,
        tensor_parallelism=spec.tensor_parallelism,
        precision=spec.precision,
        frequency_cap_mhz=spec.frequency_cap_mhz,
        max_batch=spec.max_batch,
        capacity_tokens_per_s_at_slo=capacity,
        gpu_idle_w=sku.idle_w,
        gpu_max_w=sku.idle_w + max(pre_dyn, dec_dyn),
        prefill_w_per_token_s=pre_dyn / prefill_rate_full,
        decode_w_per_token_s=dec_dyn / decode_rate_full,
        quality_score=spec.quality_score / 100.0,
        switch_cost_s=spec.switch_cost_s,
        slow_knob=spec.slow_knobs != default_layout,
    )


def build_catalogue(
    sku: GpuSku,
    *,
    endpoints: Sequence[EndpointSpec] = DEFAULT_ENDPOINTS,
    mean_prompt: float = 2048.0,
    mean_output: float = 28.0,
    gpus_per_server: int = 8,
) -> tuple[Catalogue, Mapping[str, ConfigSpec]]:
    """The controller-format catalogue and the physics spec behind every config id.

    Examples:
        >>> from foundation.topology import SKUS
        >>> cat, specs = build_catalogue(SKUS["A100-SXM-80GB"])
        >>> cat.defaults["llm-70b"]
        'llm-70b:llama2-70b-tp8-fp16-1410mhz-b32'
        >>> cat.default("llm-70b").capacity_tokens_per_s_at_slo > 0
        True
    """
    per_ep = build_specs(endpoints, sku, gpus_per_server=gpus_per_server)
    options: dict[str, list[ConfigOption]] = {}
    specs: dict[str, ConfigSpec] = {}
    defaults: dict[str, str] = {}
    for ep in endpoints:
        items = per_ep[ep.endpoint_id]
        defaults[ep.endpoint_id] = items[0][0]
        options[ep.endpoint_id] = [
            option_from_spec(cid, spec, sku, mean_prompt=mean_prompt, mean_output=mean_output,
                             default_layout=ep.default_layout)
            for cid, spec in items
        ]
        specs.update(dict(items))
    return Catalogue.from_options(options, defaults), specs
