"""The simulator's telemetry feed and the ``tapas simulate`` command."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from contracts.messages import ClockEventReason, GpuSample, decode
from foundation.topology import default_topology
from simulator.feed import LOCATION_COLUMNS, TelemetryFeed, record_telemetry
from tapas.cli import app


def _trace_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 300
    t0 = np.datetime64("2023-11-16T18:00:00")
    ts = t0 + (np.sort(rng.uniform(0, 600, n)) * 1e6).astype("timedelta64[us]")
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [
        f"{str(t).replace('T', ' ')},{int(p)},{int(g)}"
        for t, p, g in zip(ts, rng.integers(100, 4000, n), rng.integers(5, 60, n), strict=True)
    ]
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(lines))
    return path


def test_feed_emits_valid_messages_at_collector_cadences(tmp_path: Path) -> None:
    topo = default_topology(8, oversubscription=2.5)
    feed = TelemetryFeed(topo, seed=1, scenario="power-failure", start_at=datetime(2026, 1, 1, tzinfo=UTC),
                         hours=0.03, trace_path=_trace_csv(tmp_path))
    ticks = []
    while not feed.finished:
        ticks.append(feed.step())
    assert len(ticks) == feed.sim.num_ticks
    first = ticks[0]
    assert len(first.gpu) == 8 and len(first.inlet) == 8 and len(first.pdu) == len(topo.racks)
    assert ticks[1].inlet == [] and ticks[1].pdu == [] and ticks[2].pdu != []
    sample = decode(GpuSample, first.gpu[0].to_bytes())
    assert sample.source == "sim" and len(sample.gpus) == 8 and sample.gpus[0].slowdown_temp_c == 87.0
    kinds = [e.event_kind for t in ticks for e in t.events]
    assert "power_emergency" in kinds
    # the budget cut makes the reactive manager cap rows: GPUs report a power-cap clock reason
    capped = [g for t in ticks for s in t.gpu for g in s.gpus if g.clocks_event_reasons & ClockEventReason.SW_POWER_CAP]
    assert capped and "power_throttle" in kinds
    assert (ticks[1].at - ticks[0].at).total_seconds() == 1.0


def test_record_telemetry_has_observation_columns(tmp_path: Path) -> None:
    from forecasting.state import Observation

    df = record_telemetry(default_topology(8), hours=0.005, seed=2, scenario="normal", trace_path=_trace_csv(tmp_path))
    fields = [f.name for f in dataclasses.fields(Observation)]
    assert list(df.columns) == [*fields, *LOCATION_COLUMNS]
    assert len(df) == 8 * 18
    assert (df["hottest_gpu_temp_c"] > df["inlet_temp_c"]).all()
    assert df["server_power_w"].min() > 0


def test_simulate_cli_writes_json_with_every_key_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    result = CliRunner().invoke(app, ["simulate", "--trace", str(_trace_csv(tmp_path)), "--scenario", "cooling-failure",
                                      "--servers", "16", "--hours", "0.02", "--compare", "baseline", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    keys = {"thermal_throttle_events", "power_throttle_events", "throttled_gpu_seconds", "max_gpu_temp_c",
            "peak_row_power_frac", "slo_attainment", "p99_ttft_s", "p99_tbt_s", "tokens_per_s", "quality_loss",
            "saas_perf_loss", "iaas_perf_loss"}
    assert set(data["policies"]["baseline"]) == keys
    assert (tmp_path / "res_temperatures.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["simulate", "--compare", "nope", "--hours", "0.01"])
    assert bad.exit_code != 0 and "nope" in bad.output


def test_demo_without_the_trace_stops_at_once_naming_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from contracts.errors import ConfigError

    monkeypatch.setenv("TAPAS_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("TAPAS_TRACE_FILE", raising=False)
    result = CliRunner().invoke(app, ["demo", "--no-dashboard", "--log-dir", str(tmp_path / "logs")])
    assert isinstance(result.exception, ConfigError), result.output
    assert "TAPAS_DATA_DIR" in str(result.exception)
    assert not (tmp_path / "logs").exists()  # nothing was started


def test_config_sweep_puts_configuration_changes_in_the_telemetry(tmp_path: Path) -> None:
    """The forecasting history must hold configuration changes; baseline alone never reconfigures."""
    kw = {"hours": 0.1, "seed": 3, "scenario": "normal", "trace_path": _trace_csv(tmp_path)}

    def changes(df: pd.DataFrame) -> int:
        saas = df[df["config_id"].notna()].sort_values(["server_id", "at_s"])
        return int((saas.groupby("server_id")["config_id"].nunique() - 1).sum())

    assert changes(record_telemetry(default_topology(8), **kw)) == 0
    swept = record_telemetry(default_topology(8), config_sweep_s=60.0, **kw)
    assert changes(swept) >= 2
    assert swept["frequency_cap_mhz"].dropna().nunique() >= 2 or swept["config_id"].dropna().nunique() >= 3
