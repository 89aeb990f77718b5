"""History loaders: the store entry point for notebooks, and files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from contracts.errors import ConfigError
from forecasting.history import load_history, read_history_file
from streams.store.base import Point
from streams.store.embedded import EmbeddedStore

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def test_load_history_joins_latest_inlet_per_server(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "h.sqlite")
    try:
        points = []
        for i in range(30):
            at = T0 + timedelta(seconds=i)
            for sid, temp in (("a", 50.0 + i), ("b", 60.0)):
                points.append(Point("gpu", {"server_id": sid}, {
                    "hottest_gpu_temp_c": temp, "gpu_power_w": 3000.0, "num_gpus": 8.0, "slowdown_temp_c": 87.0},
                    at))
            if i % 10 == 0:
                points.append(Point("inlet", {"server_id": "a"}, {"inlet_temp_c": 20.0 + i / 10}, at))
        store.write(points)
        df = load_history(store, T0, T0 + timedelta(minutes=1))
    finally:
        store.close()
    a = df[df.server_id == "a"].set_index("at_s")
    assert len(a) == 30 and len(df) == 60
    t0 = T0.timestamp()
    assert a.loc[t0 + 15, "inlet_temp_c"] == pytest.approx(21.0)  # the reading at +10 s, not the one at +20 s
    assert a.loc[t0 + 29, "hottest_gpu_temp_c"] == pytest.approx(79.0)
    assert df[df.server_id == "b"]["inlet_temp_c"].isna().all()


def test_read_history_file_names_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    pd.DataFrame({"server_id": ["s"], "at_s": [1.0], "gpu_power_w": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match="hottest_gpu_temp_c"):
        read_history_file(path)
    with pytest.raises(ConfigError, match="not found"):
        read_history_file(tmp_path / "none.parquet")
