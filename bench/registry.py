"""The benchmark registry: name → ``"module:function"``. Adding a benchmark is one module and one line.

Each benchmark function takes ``quick: bool`` (a short run for smoke tests) and
returns a flat ``dict[str, float | int | str]`` holding the keys its issue names,
including its same-run baseline figures and ``ratio`` (or ``*_ratio``) keys.
Figures are medians over repeats inside the function.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

BENCHMARKS: dict[str, str] = {
    "producer": "bench.producer:run",
    "worker": "bench.worker:run",
    "forecast": "bench.forecast:run",
    "controller": "bench.controller:run",
    "simulator": "bench.simulator:run",
    "dashboard": "bench.dashboard:run",
    "policies": "bench.policies:run",
    "placement_api": "bench.placement_api:run",
    "collectors": "bench.collectors:run",
}


def load(name: str) -> Callable[..., dict[str, Any]]:
    """Import the benchmark function registered under ``name``."""
    module, func = BENCHMARKS[name].split(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def available() -> list[str]:
    """Names whose module exists in this checkout."""
    names = []
    for name, target in BENCHMARKS.items():
        try:
            importlib.import_module(target.split(":")[0])
        except ModuleNotFoundError:
            continue
        names.append(name)
    return names
