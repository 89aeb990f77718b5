"""Edge validation: sentinel and impossible readings become ``null`` plus a name in ``invalid_fields``.

Devices report "no reading" in many ways: NVML returns 0xFFFFFFFF, BMCs send
-127 °C or 0xFFFF, SNMP agents return 2^31-1, and drivers can hand back NaN or a
negative power. Those must neither be dropped (the stream worker needs to know the
sensor is broken) nor passed on as good numbers (a -127 °C inlet would make every
forecast optimistic). Every source converts a raw reading with :func:`check`, which
applies the sentinel test in the *device's* units before scaling, then the physical
range of the contract field after scaling. The ranges here are never wider than the
contract's own, so a flagged-or-good reading always validates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Raw values devices use for "no reading" (checked before any unit conversion).
SENTINELS: frozenset[float] = frozenset(
    {-127.0, -128.0, 0xFFFF, 0x7FFF, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFE, -32768.0, -2147483648.0}
)


@dataclass(frozen=True)
class Range:
    """The physically possible interval of one contract field, in the field's unit."""

    lo: float
    hi: float


#: Ranges per contract field name; equal to or inside the contract's own checks.
RANGES: Mapping[str, Range] = {
    "gpu_temp_c": Range(-40.0, 150.0),
    "memory_temp_c": Range(-40.0, 150.0),
    "slowdown_temp_c": Range(40.0, 150.0),
    "memory_max_temp_c": Range(40.0, 150.0),
    "power_usage_w": Range(0.0, 2000.0),
    "power_limit_w": Range(0.0, 2000.0),
    "sm_clock_mhz": Range(0.0, 5000.0),
    "mem_clock_mhz": Range(0.0, 20000.0),
    "gpu_util_pct": Range(0.0, 100.0),
    "fb_used_mib": Range(0.0, 1.0e7),
    "total_energy_mj": Range(0.0, 1.0e19),
    "power_violation_us": Range(0.0, 1.0e19),
    "thermal_violation_us": Range(0.0, 1.0e19),
    "inlet_temp_c": Range(-20.0, 80.0),
    "chassis_power_w": Range(0.0, 100_000.0),
    "pdu_power_w": Range(0.0, 5_000_000.0),
    "pdu_current_a": Range(0.0, 10_000.0),
    "phase_power_w": Range(0.0, 1_000_000.0),
    "phase_current_a": Range(0.0, 1000.0),
    "energy_kwh": Range(0.0, 1.0e12),
}


@dataclass(frozen=True)
class Checked:
    """A reading after the edge rules: ``value`` is None when absent or invalid; ``invalid`` says which."""

    value: float | None
    invalid: bool


ABSENT = Checked(None, False)


def is_sentinel(raw: float) -> bool:
    """True for NaN, infinities and the raw "no reading" codes of :data:`SENTINELS`.

    Examples:
        >>> is_sentinel(-127), is_sentinel(float("nan")), is_sentinel(0xFFFF), is_sentinel(23.5)
        (True, True, True, False)
    """
    return not math.isfinite(raw) or raw in SENTINELS


def check(raw: float | int | str | None, field: str, *, scale: float = 1.0, offset: float = 0.0,
          sentinel_check: bool = True) -> Checked:
    """Apply the edge rules to one raw reading and convert it to the contract unit.

    Args:
        raw: the device's value in its own unit (None when the device does not report it).
        field: key of :data:`RANGES` giving the physical interval after conversion.
        scale: multiplier from the device unit to the contract unit (e.g. 10 for
            APC's hundredths of kW to W, 0.001 for NVML's mW to W).
        offset: added after scaling (e.g. -273.15 for Kelvin).
        sentinel_check: set False where a sentinel code is a legal value in device units.

    Returns:
        ``Checked(value, invalid)``; an absent reading is neither a value nor invalid.

    Examples:
        >>> check(-127, "inlet_temp_c")
        Checked(value=None, invalid=True)
        >>> check(402, "pdu_power_w", scale=10.0)
        Checked(value=4020.0, invalid=False)
        >>> check(-5.0, "power_usage_w")
        Checked(value=None, invalid=True)
        >>> check(None, "gpu_temp_c")
        Checked(value=None, invalid=False)
        >>> check(10**400, "chassis_power_w"), check("text", "inlet_temp_c")
        (Checked(value=None, invalid=True), Checked(value=None, invalid=True))
    """
    if raw is None:
        return ABSENT
    try:
        number = float(raw)
    except (TypeError, ValueError, OverflowError):  # text, a list, an int beyond float range (10**400)
        return Checked(None, True)
    if sentinel_check and is_sentinel(number):
        return Checked(None, True)
    if not math.isfinite(number):
        return Checked(None, True)
    value = round(number * scale + offset, 9)  # 38 * 0.1 is 3.8000000000000003, not the 3.8 the device meant
    bounds = RANGES[field]
    if not bounds.lo <= value <= bounds.hi:
        return Checked(None, True)
    return Checked(value, False)


class FieldChecker:
    """Collects checked fields of one message and the names of those that were invalid.

    Examples:
        >>> fc = FieldChecker()
        >>> fc.take("inlet_temp_c", check(-127, "inlet_temp_c")), fc.invalid_fields
        (None, ['inlet_temp_c'])
    """

    def __init__(self) -> None:
        self.invalid_fields: list[str] = []

    def take(self, name: str, checked: Checked) -> float | None:
        """Return the checked value, recording ``name`` as invalid when it was."""
        if checked.invalid:
            self.invalid_fields.append(name)
        return checked.value


def brief(value: Any) -> str:
    """A bad raw value for an error message: its repr, cut to 40 characters (huge ints cannot even be printed)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def count_invalid(message: object) -> int:
    """Number of invalid fields a contract message carries (nested GPU readings included)."""
    total = len(getattr(message, "invalid_fields", []) or [])
    for gpu in getattr(message, "gpus", []) or []:
        total += len(gpu.invalid_fields)
    return total
