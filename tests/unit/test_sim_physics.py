"""Simulator physics against hand-computed cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from simulator.physics import perf, power, thermal


def test_steady_state_temperature_is_inlet_plus_resistance_times_power() -> None:
    # 24 °C inlet, 0.115 °C/W, 350 W, slot offset 2.5 °C → 24 + 40.25 + 2.5
    got = thermal.steady_gpu_temp_c(np.array([24.0]), np.array([0.115]), np.array([350.0]), 2.5)
    assert got[0] == pytest.approx(66.75)


def test_lag_reaches_63_percent_after_one_time_constant() -> None:
    temp = np.array([40.0])
    target = np.array([80.0])
    # 30 one-second steps with τ = 30 s equal one exact step of 30 s: 40 + 40·(1 − e⁻¹)
    for _ in range(30):
        temp = thermal.lag_step(temp, target, 1.0, 30.0)
    assert temp[0] == pytest.approx(40.0 + 40.0 * (1.0 - math.exp(-1.0)), abs=1e-9)
    assert temp[0] == pytest.approx(65.28, abs=0.01)


def test_thermal_slowdown_drops_clock_and_recovers_below_hysteresis() -> None:
    clock = np.array([1.0])
    for _ in range(3):
        clock = thermal.thermal_clock_step(clock, np.array([88.0]), 87.0, 1.0)
    assert clock[0] == pytest.approx(1.0 - 3 * thermal.THROTTLE_STEP_FRAC)
    held = thermal.thermal_clock_step(clock, np.array([86.0]), 87.0, 1.0)  # within hysteresis: hold
    assert held[0] == clock[0]
    up = thermal.thermal_clock_step(clock, np.array([84.0]), 87.0, 1.0)
    assert up[0] == pytest.approx(clock[0] + thermal.RECOVER_STEP_FRAC)


def test_inlet_recirculation_starts_at_onset() -> None:
    supply = np.array([21.0, 21.0])
    got = thermal.inlet_temp_c(supply, np.array([1.0, 1.0]), np.array([1.0, 1.0]), np.array([0.5, 0.95]))
    assert got[0] == pytest.approx(22.0)
    assert got[1] == pytest.approx(22.0 + thermal.RECIRC_GAIN_C * (0.95 - thermal.RECIRC_ONSET_FRAC))


def test_gpu_power_prefill_at_tdp_decode_below_and_frequency_scaling() -> None:
    one = np.array([1.0])
    zero = np.array([0.0])
    assert perf.gpu_power_w(60.0, 400.0, one, zero, np.array([0.44]), one)[0] == pytest.approx(400.0)
    # decode at 0.44 TDP = 176 W
    assert perf.gpu_power_w(60.0, 400.0, zero, one, np.array([0.44]), one)[0] == pytest.approx(176.0)
    # at 70 % clock the dynamic part scales by 0.7² : 60 + 340·0.49
    assert perf.gpu_power_w(60.0, 400.0, one, zero, np.array([0.44]), np.array([0.7]))[0] == pytest.approx(226.6)


def test_prefill_slows_with_clock_more_than_decode() -> None:
    f = np.array([0.5])
    pre = perf.freq_time_factor(f, perf.PREFILL_COMPUTE_FRAC)[0]
    dec = perf.freq_time_factor(f, perf.DECODE_COMPUTE_FRAC)[0]
    assert pre == pytest.approx(0.1 + 0.9 * 2.0)
    assert dec == pytest.approx(0.7 + 0.3 * 2.0)


def test_row_cap_brings_power_to_target() -> None:
    # Row at 120 kW against a 100 kW budget; 60 kW of it is GPU dynamic power.
    cap = power.cap_needed_frac(np.array([120e3]), np.array([60e3]), np.array([100e3]), np.array([1.0]))[0]
    after = 120e3 - 60e3 + 60e3 * cap**perf.POWER_FREQ_EXP
    assert after == pytest.approx(power.PM_TARGET_FRAC * 100e3)
    # under budget: unchanged
    same = power.cap_needed_frac(np.array([90e3]), np.array([60e3]), np.array([100e3]), np.array([0.8]))[0]
    assert same == 0.8


def test_committed_fits_match_the_splitwise_measurements(data_dir: Path) -> None:
    fit = perf.fit_llama70b_a100(data_dir / "splitwise-perf" / "perf_model.csv")
    for tp in (2, 4, 8):
        assert fit["prefill_ms"][tp] == pytest.approx(perf.LLAMA70B_A100_PREFILL_MS[tp], rel=1e-3, abs=1e-5)
        assert fit["decode_ms"][tp] == pytest.approx(perf.LLAMA70B_A100_DECODE_MS[tp], rel=1e-3, abs=1e-4)
    # TP8, 2048-token prompt: measured ≈ 274 ms; the quadratic over 128..8192 tokens is within 10 % here
    c0, c1, c2 = perf.LLAMA70B_A100_PREFILL_MS[8]
    assert c0 + c1 * 2048 + c2 * 2048**2 == pytest.approx(274.2, rel=0.10)
