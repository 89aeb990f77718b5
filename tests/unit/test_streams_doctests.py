"""Run the docstring examples of the stream worker and store modules."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["streams.state", "streams.joins", "streams.publish", "streams.aggregate", "streams.store.embedded",
           "streams.store.influx", "streams.store.influxql"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
