"""Configuration catalogue shared by the controller and the simulator.

A ``ConfigOption`` is one way to serve an endpoint: model variant, tensor parallelism,
precision, GPU frequency cap and maximum batch, with its capacity at the SLO, its
per-GPU power as a function of load (prefill and decode separately), its output quality
and the cost of switching to it, plus the serving model behind those numbers (prefill and
decode time fits, phase power), which the simulator replays requests with. It is the
only declaration of a configuration. The simulator builds catalogues from its physics
(``simulator.catalogue.build_catalogue``); ``tapas catalogue export`` writes one as data
(:meth:`Catalogue.to_dict`, with the sources of its numbers) and the live service loads
that file (:meth:`Catalogue.from_dict`) without importing the simulator.

Power model (per GPU of the instance), clipped to ``[gpu_idle_w, gpu_max_w]``::

    gpu_power_w = gpu_idle_w
                + prefill_w_per_token_s * prefill_tokens_per_s
                + decode_w_per_token_s * decode_tokens_per_s

where the token rates are the instance's (not per GPU). Switching between options that
differ in model variant, tensor parallelism or precision reloads weights (a *slow* knob);
frequency cap and batch size are *fast* knobs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.core.snapshot import FloatArray


@dataclass(frozen=True)
class ConfigOption:
    """One serving configuration of an endpoint.

    Examples:
        >>> o = ConfigOption("70b-tp8-fp16-1980", "llama2-70b", 8, "fp16", 1980.0, 64,
        ...                  capacity_tokens_per_s_at_slo=12000.0, gpu_idle_w=90.0, gpu_max_w=700.0,
        ...                  prefill_w_per_token_s=0.02, decode_w_per_token_s=0.3, quality_score=0.689)
        >>> round(o.gpu_power_w(1000.0, 500.0), 1)
        260.0
    """

    config_id: str
    model_variant: str
    tensor_parallelism: int
    precision: str
    frequency_cap_mhz: float
    max_batch: int
    capacity_tokens_per_s_at_slo: float
    """Prompt + generated tokens/s the instance serves while meeting its P99 TTFT/TBT SLO."""
    gpu_idle_w: float
    gpu_max_w: float
    prefill_w_per_token_s: float
    decode_w_per_token_s: float
    quality_score: float
    """Output quality in [0, 1] (e.g. MMLU fraction of the model variant and precision); higher is better."""
    switch_cost_s: float = 0.0
    """Seconds out of service to switch to this option from another weight layout (0 for fast knobs)."""
    slow_knob: bool = False
    """True when this option uses a non-default weight layout (variant, TP or precision) of the endpoint."""
    prefill_heavy_capacity_frac: float = 1.0
    """Capacity multiplier for prefill-heavy traffic (optional refinement)."""
    # The serving model behind the numbers above (what the simulator replays requests with; the controller
    # does not read them). One record per configuration: there is no second declaration in the simulator.
    replicas: int = 1
    """Copies of the model on one server (``gpus_per_server // tensor_parallelism``)."""
    prefill_time_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Prompt time at the maximum clock, ``c0 + c1·P + c2·P²`` seconds for a prompt of P tokens (batch 1)."""
    decode_step_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Decode step (time between tokens) at the maximum clock, ``d0 + d1·b + d2·b²`` seconds at batch b."""
    prefill_power_frac: float = 1.0
    """Prefill-phase GPU power as a fraction of TDP."""
    decode_power_frac: float = 0.5
    """Decode-phase GPU power as a fraction of TDP (at the reference batch)."""

    @property
    def weight_layout(self) -> tuple[str, int, str]:
        """Variant, tensor parallelism and precision: changing any of them reloads weights."""
        return (self.model_variant, self.tensor_parallelism, self.precision)

    def gpu_power_w(self, prefill_tokens_per_s: float, decode_tokens_per_s: float) -> float:
        """Per-GPU power at the given instance token rates."""
        p = self.gpu_idle_w + self.prefill_w_per_token_s * prefill_tokens_per_s + self.decode_w_per_token_s * decode_tokens_per_s
        return float(min(max(p, self.gpu_idle_w), self.gpu_max_w))


@dataclass(frozen=True)
class CatalogueArrays:
    """The options of one endpoint as aligned arrays, for vectorised optimisation."""

    config_ids: tuple[str, ...]
    capacity_tokens_per_s: FloatArray
    gpu_idle_w: FloatArray
    gpu_max_w: FloatArray
    prefill_w_per_token_s: FloatArray
    decode_w_per_token_s: FloatArray
    quality_score: FloatArray
    switch_cost_s: FloatArray
    frequency_cap_mhz: FloatArray
    tensor_parallelism: FloatArray
    layout_code: FloatArray
    """Integer code of the weight layout; equal codes switch without reloading."""

    def gpu_power_w(self, prefill_tokens_per_s: FloatArray, decode_tokens_per_s: FloatArray) -> FloatArray:
        """Per-GPU power for every (load, option) pair: inputs shape (N,), output shape (N, K)."""
        p = (
            self.gpu_idle_w[None, :]
            + self.prefill_w_per_token_s[None, :] * prefill_tokens_per_s[:, None]
            + self.decode_w_per_token_s[None, :] * decode_tokens_per_s[:, None]
        )
        out: FloatArray = np.clip(p, self.gpu_idle_w[None, :], self.gpu_max_w[None, :])
        return out


@dataclass(frozen=True)
class Catalogue:
    """Configuration options per endpoint, with each endpoint's default (nominal) configuration."""

    options: Mapping[str, tuple[ConfigOption, ...]]
    """endpoint id -> its options."""
    defaults: Mapping[str, str]
    """endpoint id -> config id it runs when nothing is wrong."""
    _by_id: dict[str, ConfigOption] = field(init=False, repr=False, compare=False)
    _arrays: dict[str, CatalogueArrays] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[str, ConfigOption] = {}
        arrays: dict[str, CatalogueArrays] = {}
        for endpoint_id, opts in self.options.items():
            if not opts:
                raise ValueError(f"catalogue: endpoint {endpoint_id!r} has no options")
            layouts: dict[tuple[str, int, str], int] = {}
            for o in opts:
                by_id[o.config_id] = o
                layouts.setdefault(o.weight_layout, len(layouts))
            if self.defaults.get(endpoint_id) not in {o.config_id for o in opts}:
                raise ValueError(f"catalogue: default of endpoint {endpoint_id!r} is not one of its options")
            arrays[endpoint_id] = CatalogueArrays(
                config_ids=tuple(o.config_id for o in opts),
                capacity_tokens_per_s=_arr(o.capacity_tokens_per_s_at_slo for o in opts),
                gpu_idle_w=_arr(o.gpu_idle_w for o in opts),
                gpu_max_w=_arr(o.gpu_max_w for o in opts),
                prefill_w_per_token_s=_arr(o.prefill_w_per_token_s for o in opts),
                decode_w_per_token_s=_arr(o.decode_w_per_token_s for o in opts),
                quality_score=_arr(o.quality_score for o in opts),
                switch_cost_s=_arr(o.switch_cost_s for o in opts),
                frequency_cap_mhz=_arr(o.frequency_cap_mhz for o in opts),
                tensor_parallelism=_arr(float(o.tensor_parallelism) for o in opts),
                layout_code=_arr(float(layouts[o.weight_layout]) for o in opts),
            )
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_arrays", arrays)

    @classmethod
    def from_options(cls, per_endpoint: Mapping[str, Sequence[ConfigOption]], defaults: Mapping[str, str]) -> Catalogue:
        """Build from any sequences of options."""
        return cls(options={k: tuple(v) for k, v in per_endpoint.items()}, defaults=dict(defaults))

    @property
    def endpoint_ids(self) -> tuple[str, ...]:
        """Endpoints with options."""
        return tuple(self.options)

    def option(self, config_id: str) -> ConfigOption:
        """The option with ``config_id`` (KeyError names it when unknown)."""
        try:
            return self._by_id[config_id]
        except KeyError:
            raise KeyError(f"catalogue: unknown config_id {config_id!r}") from None

    def default(self, endpoint_id: str) -> ConfigOption:
        """The nominal option of an endpoint."""
        return self._by_id[self.defaults[endpoint_id]]

    def efficient(self, endpoint_id: str, *, prefill_frac: float = 0.9) -> ConfigOption:
        """The endpoint's most power-efficient option that gives up nothing against its default.

        Among the options with the default's quality and at least its capacity at the SLO, the
        one drawing the least per-GPU power while serving the default's capacity (prompt share
        ``prefill_frac``); ties to the default. Its weight layout is where a power-aware
        controller keeps the endpoint in calm times (e.g. two TP4 replicas instead of one TP8
        on a server, when tensor-parallel scaling losses make TP8 burn more per token), so
        that frequency caps alone can absorb an emergency later.
        """
        d = self.default(endpoint_id)
        load = d.capacity_tokens_per_s_at_slo
        best, best_w = d, d.gpu_power_w(prefill_frac * load, (1.0 - prefill_frac) * load)
        for o in self.options[endpoint_id]:
            if o.quality_score < d.quality_score - 1e-12 or o.capacity_tokens_per_s_at_slo < load:
                continue
            w = o.gpu_power_w(prefill_frac * load, (1.0 - prefill_frac) * load)
            if w < best_w - 1e-9:
                best, best_w = o, w
        return best

    def arrays(self, endpoint_id: str) -> CatalogueArrays:
        """The endpoint's options as aligned arrays."""
        return self._arrays[endpoint_id]

    def is_slow_switch(self, from_config_id: str, to_config_id: str) -> bool:
        """True when switching reloads weights (variant, tensor parallelism or precision differ)."""
        return self.option(from_config_id).weight_layout != self.option(to_config_id).weight_layout

    def to_dict(self, *, sources: Mapping[str, str] | None = None, **meta: object) -> dict[str, object]:
        """The catalogue as data (``tapas catalogue export``): every option's record, each endpoint's default,
        the sources its numbers come from and any metadata (SKU, request mix).

        >>> o = ConfigOption("a", "m", 8, "fp16", 1410.0, 32, 100.0, 60.0, 400.0, 0.01, 0.02, 0.7)
        >>> c = Catalogue.from_options({"ep": [o]}, {"ep": "a"})
        >>> Catalogue.from_dict(c.to_dict(sources={"capacity": "a test"})) == c
        True
        """
        return {
            "format": CATALOGUE_FORMAT,
            **meta,
            "sources": dict(sources or {}),
            "endpoints": {ep: {"default": self.defaults[ep],
                               "options": [dataclasses.asdict(o) for o in opts]}
                          for ep, opts in self.options.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Catalogue:
        """Load what :meth:`to_dict` wrote; a wrong format, unknown field or bad default raises ``ValueError``."""
        if data.get("format") != CATALOGUE_FORMAT:
            raise ValueError(f"catalogue: format {data.get('format')!r} is not {CATALOGUE_FORMAT!r}")
        endpoints = data.get("endpoints")
        if not isinstance(endpoints, Mapping) or not endpoints:
            raise ValueError("catalogue: no endpoints")
        names = {f.name for f in dataclasses.fields(ConfigOption)}
        tuples = {f.name for f in dataclasses.fields(ConfigOption) if str(f.type).startswith("tuple")}
        options: dict[str, list[ConfigOption]] = {}
        defaults: dict[str, str] = {}
        for ep, body in endpoints.items():
            if not isinstance(body, Mapping) or not isinstance(body.get("options"), list):
                raise ValueError(f"catalogue: endpoint {ep!r} needs 'default' and 'options'")
            defaults[str(ep)] = str(body.get("default"))
            opts = []
            for raw in body["options"]:
                unknown = set(raw) - names
                if unknown:
                    raise ValueError(f"catalogue: endpoint {ep!r}: unknown option fields {sorted(unknown)}")
                kwargs: dict[str, Any] = {k: tuple(v) if k in tuples else v for k, v in raw.items()}
                try:
                    opts.append(ConfigOption(**kwargs))
                except TypeError as exc:
                    raise ValueError(f"catalogue: endpoint {ep!r}: {exc}") from None
            options[str(ep)] = opts
        return cls.from_options(options, defaults)


CATALOGUE_FORMAT = "tapas-catalogue/1"


def _arr(values: Iterable[float]) -> FloatArray:
    return np.asarray(list(values), dtype=np.float64)
