"""A small synthetic fleet history for forecasting tests (stand-in until simulator.feed.record_telemetry).

First-order thermal lag toward inlet + R*P + offset, load regimes with phase mix and
frequency-cap changes; one row per server per second, Observation columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_history(num_servers: int = 6, seconds: int = 1800, *, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    r_c_per_w = 0.115 * (1 + 0.06 * rng.standard_normal(num_servers))
    offset_c = rng.uniform(1.0, 7.0, num_servers)
    zone_supply_c = 21.0 + rng.uniform(0, 2, num_servers)
    base_load = rng.uniform(2000, 9000, num_servers)
    temp = np.full(num_servers, 50.0)
    rows = []
    load = base_load.copy()
    prefill_frac = np.full(num_servers, 0.7)
    cap = np.full(num_servers, 1410.0)
    cfg = np.array(["cfg-a"] * num_servers, dtype=object)
    inlet = zone_supply_c.copy()
    for t in range(seconds):
        change = rng.random(num_servers) < 1 / 300
        load = np.where(change, base_load * rng.uniform(0.3, 1.6, num_servers), load)
        prefill_frac = np.where(change, rng.uniform(0.4, 0.9, num_servers), prefill_frac)
        recfg = rng.random(num_servers) < 1 / 900
        cap = np.where(recfg, rng.choice([1410.0, 1200.0, 1000.0], num_servers), cap)
        cfg = np.where(recfg, rng.choice(["cfg-a", "cfg-b"], num_servers), cfg)
        tokens = load * (1 + 0.15 * rng.standard_normal(num_servers)).clip(0.2)
        pre, dec = tokens * prefill_frac, tokens * (1 - prefill_frac)
        util = np.clip(pre / 12000 + dec / 3000, 0, 1)
        pgpu = (60 + 340 * util * (cap / 1410) ** 2) * (1 + 0.03 * rng.standard_normal(num_servers))
        if t % 10 == 0:
            inlet = zone_supply_c + 1.0 * np.sin(2 * np.pi * t / 3600) + 0.1 * rng.standard_normal(num_servers)
        ss = inlet + r_c_per_w * pgpu + offset_c
        temp = ss + (temp - ss) * np.exp(-1 / 30)
        for i in range(num_servers):
            rows.append((f"s{i:03d}", float(t), float(temp[i] + 0.3 * rng.standard_normal()), 8 * pgpu[i],
                         8 * pgpu[i] + 1200 + 400 * util[i], float(inlet[i]) if t % 10 == 0 else np.nan,
                         100 * util[i], pre[i], dec[i], 4 + 60 * util[i], cap[i], cfg[i], 8, 87.0, 6500.0))
    return pd.DataFrame(rows, columns=[
        "server_id", "at_s", "hottest_gpu_temp_c", "gpu_power_w", "server_power_w", "inlet_temp_c",
        "mean_gpu_util_pct", "prefill_tokens_per_s", "decode_tokens_per_s", "batch_size", "frequency_cap_mhz",
        "config_id", "num_gpus", "slowdown_temp_c", "server_peak_w"])
