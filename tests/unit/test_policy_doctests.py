"""The runnable examples in the policy module and the core <-> wire translations stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["controller.core.policy", "controller.translate", "controller.core.belief",
                                  "controller.core.catalogue"])
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
