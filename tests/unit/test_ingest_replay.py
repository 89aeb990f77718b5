"""Replay of recorded telemetry (CSV/Parquet in Observation columns) into contract messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from contracts import GpuSample, InletSample, PduPowerSample, SourceError
from ingest.sources.replay import ReplaySource

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def frame() -> pd.DataFrame:
    rows = []
    for at_s in (0.0, 10.0, 20.0):
        for k, sid in enumerate(("a", "b")):
            rows.append({"server_id": sid, "at_s": at_s, "hottest_gpu_temp_c": 60.0 + k + at_s / 10,
                         "gpu_power_w": 2400.0 + 100 * k, "server_power_w": 3000.0 + 100 * k,
                         "inlet_temp_c": 22.0 if at_s == 0 else None, "mean_gpu_util_pct": 50.0,
                         "prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 40.0, "batch_size": 8.0,
                         "frequency_cap_mhz": 1410.0, "config_id": "cfg-1", "num_gpus": 8, "slowdown_temp_c": 87.0,
                         "pdu_id": "pdu-1"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_rows_become_contract_messages_preserving_aggregates(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rec{suffix}"
    df = frame()
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    rounds = list(ReplaySource(path, speed=0, start_at=T0).rounds())
    assert len(rounds) == 3
    first = rounds[0]
    gpus = [m for m in first if isinstance(m, GpuSample)]
    inlets = [m for m in first if isinstance(m, InletSample)]
    pdus = [m for m in first if isinstance(m, PduPowerSample)]
    assert [g.server_id for g in gpus] == ["a", "b"] and all(g.sampled_at == T0 for g in gpus)
    assert gpus[1].hottest_gpu_temp_c == 61.0 and gpus[1].gpu_power_w == pytest.approx(2500.0)
    assert len(gpus[0].gpus) == 8 and gpus[0].workload is not None and gpus[0].workload.config_id == "cfg-1"
    assert [i.inlet_temp_c for i in inlets] == [22.0, 22.0] and inlets[1].chassis_power_w == 3100.0
    assert pdus[0].power_w == 6100.0 and pdus[0].server_ids == ["a", "b"]
    later = rounds[2]
    assert not [m for m in later if isinstance(m, InletSample)]  # no inlet reading in those rows
    assert later[0].sampled_at == T0 + timedelta(seconds=20)


def test_speed_scales_the_recorded_gaps(tmp_path: Path) -> None:
    path = tmp_path / "rec.csv"
    frame().to_csv(path, index=False)
    slept: list[float] = []
    list(ReplaySource(path, speed=10, start_at=T0, sleep=slept.append).rounds())
    assert slept == [1.0, 1.0]  # 10 s recorded gaps at 10x
    slept.clear()
    list(ReplaySource(path, speed=10, start_at=T0, fixed_gap_s=0.25, sleep=slept.append).rounds())
    assert slept == [0.25, 0.25]  # --interval overrides the recorded gaps


def test_epoch_timestamps_and_sentinels(tmp_path: Path) -> None:
    df = frame().iloc[:1].copy()
    df["at_s"] = 1_700_000_000.0
    df["hottest_gpu_temp_c"] = -127.0
    df["server_power_w"] = -5.0
    path = tmp_path / "rec.csv"
    df.to_csv(path, index=False)
    (msgs,) = list(ReplaySource(path, speed=0).rounds())
    gpu, inlet, pdu = msgs
    assert isinstance(gpu, GpuSample) and gpu.sampled_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert gpu.hottest_gpu_temp_c is None and gpu.gpus[0].invalid_fields == ["gpu_temp_c"]
    assert isinstance(inlet, InletSample) and inlet.chassis_power_w is None
    assert inlet.invalid_fields == ["chassis_power_w"]
    assert isinstance(pdu, PduPowerSample) and pdu.power_w is None and pdu.invalid_fields == ["power_w"]


def test_missing_columns_name_what_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    pd.DataFrame({"server_id": ["a"], "at_s": [0]}).to_csv(path, index=False)
    with pytest.raises(SourceError, match="hottest_gpu_temp_c"):
        ReplaySource(path)


def test_simulator_recording_replays(tmp_path: Path) -> None:
    """What simulator.feed.record_telemetry writes is what replay reads."""
    from foundation.topology import default_topology
    from simulator.feed import record_telemetry

    df = record_telemetry(default_topology(4), hours=0.002, seed=3, scenario="normal")
    path = tmp_path / "sim.parquet"
    df.to_parquet(path)
    rounds = list(ReplaySource(path, speed=0).rounds())
    assert len(rounds) == df["at_s"].nunique()
    gpus = [m for m in rounds[-1] if isinstance(m, GpuSample)]
    last = df[df["at_s"] == df["at_s"].max()].set_index("server_id")
    for g in gpus:
        assert g.hottest_gpu_temp_c == pytest.approx(last.loc[g.server_id, "hottest_gpu_temp_c"])
        assert g.gpu_power_w == pytest.approx(last.loc[g.server_id, "gpu_power_w"])
