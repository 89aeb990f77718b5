"""The runnable ``Examples:`` in the simulator's docstrings stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = (
    "foundation.topology",
    "simulator.physics.perf",
    "simulator.physics.thermal",
    "simulator.physics.power",
    "simulator.workload",
    "simulator.catalogue",
    "simulator.metrics",
    "simulator.engine",
)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
