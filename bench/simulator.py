"""``tapas bench simulator``: simulated seconds per wall-clock second for 1,000 servers on one core.

The figure is the median of repeats of a baseline run of the default layout resized to
1,000 servers (``normal`` scenario, the Azure code trace, 1 s ticks), timed after the
setup (arrival and VM draws, initial placement), which is reported separately.
``sim_seconds_per_cpu_second`` divides by the process's CPU time instead: on a shared
machine it is the single-core figure, while the wall-clock one includes waiting for a core.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from foundation.settings import load_settings
from foundation.topology import default_topology
from simulator.engine import Simulation
from simulator.workload import load_trace

TARGET = 60.0


def run(quick: bool = False) -> dict[str, Any]:
    """Time ``ticks`` simulated seconds of a 1,000-server cluster; median over repeats."""
    servers = 1000
    ticks = 120 if quick else 600
    repeats = 1 if quick else 3
    trace = load_trace(load_settings().resolved_trace_file)
    topo = default_topology(servers, oversubscription=1.5)
    rates: list[float] = []
    cpu_rates: list[float] = []
    setups: list[float] = []
    for r in range(repeats):
        t0 = time.perf_counter()
        sim = Simulation(topo, "normal", "baseline", hours=ticks / 3600.0, seed=r, trace=trace)
        t1 = time.perf_counter()
        c1 = time.process_time()
        while not sim.finished:
            sim.step()
        t2 = time.perf_counter()
        c2 = time.process_time()
        setups.append(t1 - t0)
        rates.append(ticks * sim.dt / (t2 - t1))
        cpu_rates.append(ticks * sim.dt / max(c2 - c1, 1e-9))
    rate = statistics.median(rates)
    return {
        "servers": servers,
        "simulated_s": ticks,
        "sim_seconds_per_wall_second": rate,
        "sim_seconds_per_cpu_second": statistics.median(cpu_rates),
        "target_sim_seconds_per_wall_second": TARGET,
        "ratio": rate / TARGET,
        "setup_s": statistics.median(setups),
    }
