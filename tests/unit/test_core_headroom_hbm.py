"""HBM temperature against its own threshold in the thermal headroom (controller.core.headroom)."""

from __future__ import annotations

import doctest
from dataclasses import replace

import numpy as np

import controller.core.headroom as headroom
from controller.core.headroom import hbm_headroom_c, thermal_headroom_c
from controller.core.synthetic import synthetic_snapshot


def snap(n: int = 4):  # type: ignore[no-untyped-def]
    s = synthetic_snapshot(np.random.default_rng(3), num_servers=n, num_instances=1, num_vms=1)
    return replace(s, slowdown_temp_c=np.full(n, 87.0), gpu_temp_hi_c=np.array([70.0, 80.0, 60.0, 75.0])[:n])


def test_hot_hbm_on_a_cool_die_sets_the_headroom() -> None:
    s = replace(snap(), memory_temp_c=np.array([80.0, 70.0, 93.5, np.nan]),
                memory_max_temp_c=np.array([95.0, 95.0, 95.0, 95.0]))
    die = s.slowdown_temp_c - s.gpu_temp_hi_c  # 17, 7, 27, 12
    assert hbm_headroom_c(s).tolist() == [15.0, 25.0, 1.5, np.inf]
    got = thermal_headroom_c(s)
    assert got.tolist() == [15.0, 7.0, 1.5, 12.0]  # server 2: 27 °C of die margin, 1.5 °C of HBM margin
    assert np.all(got <= die)


def test_the_hbm_threshold_is_its_own_not_the_dies() -> None:
    s = replace(snap(2), memory_temp_c=np.array([90.0, 90.0]), memory_max_temp_c=np.array([95.0, 105.0]))
    assert hbm_headroom_c(s).tolist() == [5.0, 15.0]  # same HBM temperature, different devices' limits


def test_without_hbm_readings_headroom_is_the_die_margin() -> None:
    s = snap()
    assert s.memory_temp_c.size == 0
    assert np.array_equal(thermal_headroom_c(s), s.slowdown_temp_c - s.gpu_temp_hi_c)
    unknown_limit = replace(s, memory_temp_c=np.full(4, 99.0), memory_max_temp_c=np.full(4, np.nan))
    assert np.array_equal(thermal_headroom_c(unknown_limit), s.thermal_headroom_hi_c)


def test_doctests() -> None:
    assert doctest.testmod(headroom).failed == 0
