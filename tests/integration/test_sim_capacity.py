"""Capacity search end to end (slow: several closed-loop runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.capacity import Tolerance, search_capacity

pytestmark = pytest.mark.slow


def test_capacity_search_stops_at_the_first_size_breaking_tolerance(data_dir: Path) -> None:
    trace = data_dir / "azure-llm-inference-2023" / "AzureLLMInferenceTrace_code.csv"
    out = search_capacity(["baseline"], trace_path=trace, hours=0.1, rows=1, max_racks=16,
                          tolerance=Tolerance(max_throttled_frac=0.01))
    res = out["policies"]["baseline"]
    steps = res["steps"]
    assert all(s["passed"] for s in steps[:-1])
    # the budget is the base row's nameplate, so 40 servers (oversubscription 1.0) must pass
    assert res["max_servers_per_domain"] >= 40
    if not steps[-1]["passed"]:
        assert res["max_servers_per_domain"] == steps[-1]["servers_per_domain"] - 4
    assert out["ratio"] is None  # no tapas in this search
