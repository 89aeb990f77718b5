"""The worker benchmark's quick run: every figure present and the ratio against the averaged Faust floor."""

from __future__ import annotations

import pytest

from bench.worker import run


@pytest.mark.integration
def test_quick_worker_bench_reports_same_run_figures() -> None:
    got = run(quick=True, latency_rate_per_s=300.0)
    before, after = got["faust_floor_runs_per_s"]
    assert got["faust_floor_per_s"] == pytest.approx((before + after) / 2, abs=0.1)
    assert got["ratio"] == pytest.approx(got["server_samples_per_s"] / got["faust_floor_per_s"], abs=0.002)
    assert min(got["server_samples_per_s"], before, after, got["plain_consumer_per_s"]) > 0
    assert got["backlog_samples"] == 500 * 6
    assert got["cpu_ratio"] == pytest.approx(
        got["faust_floor_cpu_us_per_sample"] / got["worker_cpu_us_per_sample"], abs=0.002)
    assert got["worker_cpu_us_per_sample"] > 0 and got["faust_floor_cpu_us_per_sample"] > 0
    # 300 samples/s is far below saturation: (nearly) every sample sent live comes back as a forecast
    # within the 3 s the bench reads after the last send.
    assert got["latency_forecasts"] >= 0.98 * got["latency_samples_sent"]
    assert 0 < got["p50_latency_ms"] <= got["p99_latency_ms"]
