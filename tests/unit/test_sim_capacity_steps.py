"""The capacity search's stepping: maximum before the first failure, optional sizes past it (runs faked)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import simulator.capacity as cap


def _fake_run(topo: Any, scenario: str, policy: str, **_: Any) -> SimpleNamespace:
    servers_per_row = topo.num_servers // len(topo.rows)
    ok = servers_per_row < 52 or servers_per_row == 56  # passes again at 56: the maximum must not move
    return SimpleNamespace(
        metrics={"slo_attainment": 0.99 if ok else 0.9, "throttled_gpu_seconds": 0.0,
                 "power_deadline_violation_s": 0.0, "peak_row_power_frac": 0.9},
        info={"in_use_gpu_seconds": 1.0, "mean_row_power_w": {"base": 1.0, "cpu": 1.0, "non_saas_gpus": 1.0,
                                                               "saas_gpus": 1.0}, "mean_saas_gpu_power_w": 1.0})


@pytest.mark.parametrize(("past", "sizes"), [(0, [40, 44, 48, 52]), (2, [40, 44, 48, 52, 56, 60])])
def test_maximum_is_before_the_first_failure_and_past_failure_only_adds_rows(
        monkeypatch: pytest.MonkeyPatch, past: int, sizes: list[int]) -> None:
    monkeypatch.setattr(cap, "run", _fake_run)
    monkeypatch.setattr(cap, "load_trace", lambda path: None)
    out = cap.search_capacity(["tapas"], trace_path=Path("unused.csv"), rows=1, max_racks=30, past_failure=past)
    res = out["policies"]["tapas"]
    assert [s["servers_per_domain"] for s in res["steps"]] == sizes
    assert res["max_servers_per_domain"] == 48
    assert res["steps"][-1]["mean_saas_gpu_power_w"] == 1.0
