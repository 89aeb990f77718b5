"""Scenarios: what happens to load, cooling and power during a run. Each is deterministic given its seed.

All events start at ``EVENT_START_FRAC`` of the run (40 %: the cluster is in its
diurnal rise and fully warmed up) so every policy meets them in the same state.

* ``normal``: diurnal load only.
* ``load-spike``: demand × ``SPIKE_FACTOR`` (2) for ``SPIKE_S`` (10 min), with 30 s ramps.
* ``cooling-failure``: the air handler of the middle zone (``zone01`` of the default
  cluster) fails; neighbouring handlers carry
  part of its aisle, so its supply temperature rises by ``COOLING_RISE_C`` (6 °C, to
  27 °C: the top of ASHRAE's recommended range) and its cooling capacity drops to
  ``COOLING_CAPACITY_FRAC`` (70 %) — more hot exhaust recirculates, worst at the top of
  the racks — over a 120 s ramp, for ``COOLING_S`` (20 min), then recovers over 120 s.
* ``power-failure``: available power drops to ``POWER_BUDGET_FRAC`` (75 %) of every
  row's budget for ``POWER_S`` (5 min) — the TAPAS paper's power emergency (one UPS lost).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from contracts.errors import ConfigError

F = npt.NDArray[np.float64]

EVENT_START_FRAC = 0.4
SPIKE_FACTOR = 2.0
SPIKE_S = 600.0
SPIKE_RAMP_S = 30.0
COOLING_RISE_C = 6.0
COOLING_CAPACITY_FRAC = 0.7
COOLING_S = 1200.0
COOLING_RAMP_S = 120.0
#: Which air handler fails: ``None`` = the middle zone (``num_zones // 2``), fixed for every policy.
COOLING_ZONE: int | None = None
POWER_BUDGET_FRAC = 0.75
POWER_S = 300.0

SCENARIOS = ("normal", "load-spike", "cooling-failure", "power-failure")


@dataclass(frozen=True)
class Scenario:
    """A scenario instantiated for a run of ``duration_s``."""

    name: str
    duration_s: float
    seed: int

    @property
    def event_start_s(self) -> float:
        """When the scenario's event begins (s)."""
        return EVENT_START_FRAC * self.duration_s

    @property
    def event_window_s(self) -> tuple[float, float] | None:
        """(start, end) of the event, or None for ``normal``."""
        t0 = self.event_start_s
        if self.name == "load-spike":
            return t0, t0 + SPIKE_S
        if self.name == "cooling-failure":
            return t0, t0 + COOLING_S
        if self.name == "power-failure":
            return t0, t0 + POWER_S
        return None

    def load_multiplier(self, t_s: F) -> F:
        """Extra demand factor at times ``t_s``."""
        t = np.asarray(t_s, dtype=np.float64)
        if self.name != "load-spike":
            return np.ones_like(t)
        t0, t1 = self.event_window_s or (0.0, 0.0)
        up = np.clip((t - t0) / SPIKE_RAMP_S, 0.0, 1.0)
        down = np.clip((t1 - t) / SPIKE_RAMP_S, 0.0, 1.0)
        return np.asarray(1.0 + (SPIKE_FACTOR - 1.0) * np.minimum(up, down), dtype=np.float64)

    def supply_rise_c(self, t_s: float, num_zones: int) -> F:
        """Supply-temperature rise of every zone at time ``t_s``."""
        out = np.zeros(num_zones)
        if num_zones > 0:
            out[failed_zone(num_zones)] = COOLING_RISE_C * self._cooling_ramp(t_s)
        return out

    def _cooling_ramp(self, t_s: float) -> float:
        if self.name != "cooling-failure":
            return 0.0
        t0, t1 = self.event_window_s or (0.0, 0.0)
        up = min(max((t_s - t0) / COOLING_RAMP_S, 0.0), 1.0)
        down = min(max((t1 + COOLING_RAMP_S - t_s) / COOLING_RAMP_S, 0.0), 1.0)
        return up * down

    def cooling_capacity_frac(self, t_s: float, num_zones: int) -> F:
        """Fraction of each zone's cooling capacity available at ``t_s``."""
        out = np.ones(num_zones)
        if num_zones > 0:
            out[failed_zone(num_zones)] = 1.0 - (1.0 - COOLING_CAPACITY_FRAC) * self._cooling_ramp(t_s)
        return out

    def budget_frac(self, t_s: float) -> float:
        """Available fraction of every row's budget at time ``t_s``."""
        if self.name == "power-failure":
            t0, t1 = self.event_window_s or (0.0, 0.0)
            if t0 <= t_s < t1:
                return POWER_BUDGET_FRAC
        return 1.0


def failed_zone(num_zones: int) -> int:
    """Index of the zone whose air handler fails in ``cooling-failure``."""
    return (num_zones // 2 if COOLING_ZONE is None else COOLING_ZONE) % max(num_zones, 1)


def make_scenario(name: str, *, duration_s: float, seed: int) -> Scenario:
    """Validate the name and build the scenario."""
    if name not in SCENARIOS:
        raise ConfigError(f"scenario={name!r} unknown; choose from {', '.join(SCENARIOS)}")
    return Scenario(name=name, duration_s=duration_s, seed=seed)
