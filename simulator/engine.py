"""The closed-loop, discrete-time cluster simulator (1 s ticks, vectorised over servers with NumPy).

Run one scenario programmatically::

    from simulator.engine import run
    result = run(topology, "normal", "baseline", hours=2.0, seed=1, trace_path=path)
    result.metrics["slo_attainment"]

``policy`` is a registry name (``simulator.policies.POLICIES``) or any object with the
``controller.core.snapshot.Policy`` protocol (``place(snapshot, request)`` and
``tick(snapshot, emergencies)``). A policy whose ``perfect_forecasts`` attribute is
True (``oracle``) receives the true future demand and margin-free temperature/power
forecasts in its snapshots.

What one tick does (order matters; each step is documented in PARAMETERS.md):

1. IaaS VMs that reached their lifetime leave; new VMs ask ``policy.place``.
2. Every ``decision_interval_s`` the policy gets a ``Snapshot`` and returns routing
   weights, configuration changes and caps (``TickActions``), applied at once.
3. SaaS requests that arrive in the tick are routed: by the policy's weights when it
   gave some for the endpoint (long prompts by its long-prompt weights), otherwise by
   least outstanding work (water-filling over instances' queued prefill seconds).
4. Serving: a per-instance FIFO admits requests while batch slots are free and the
   prefill lane (``replicas`` parallel lanes) starts them within the tick; TTFT =
   start + prefill(P) − arrival. Decode advances a per-instance step counter by
   ``dt / TBT(batch, f)``; a request finishes after ``G − 1`` steps past its first token;
   its TBT is its mean time between tokens (``(finish − first token)/(G − 1)``).
5. Power: SaaS GPUs from the busy shares of prefill and decode at the effective clock;
   IaaS GPUs from their utilisation profile, clock and power limit; idle GPUs at idle.
6. Heat: zone heat → inlet (recirculation) → GPU temperature lag → hardware thermal
   slowdown of GPUs at their slowdown temperature.
7. The reactive power manager samples rows every 2 s and caps rows over budget.
8. Metrics and the down-sampled time series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.core.snapshot import (
    Emergency,
    IaasVms,
    PlacementDecision,
    PlacementRequest,
    Policy,
    RoutingDecision,
    SaasInstances,
    Snapshot,
    TickActions,
)
from foundation.topology import Topology
from simulator.catalogue import DEFAULT_ENDPOINTS, EndpointSpec, build_catalogue
from simulator.metrics import LatencyHistogram, MetricsAccumulator
from simulator.physics import power as pw
from simulator.physics import thermal as th
from simulator.physics.perf import (
    DECODE_COMPUTE_FRAC,
    POWER_FREQ_EXP,
    decode_power_frac_at_batch,
    freq_time_factor,
    gpu_power_w,
    prefill_time_s,
    tbt_s,
)
from simulator.scenarios import Scenario, make_scenario
from simulator.workload import Arrivals, Trace, generate_arrivals, generate_vms, load_trace, vm_util

F = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SimParams:
    """Knobs of a run; defaults are the calibrated ones documented in PARAMETERS.md."""

    tick_s: float = 1.0
    decision_interval_s: float = 2.0
    saas_server_frac: float = 0.5
    """Share of servers that host SaaS instances (one 8-GPU instance each)."""
    target_saas_util: float = 0.85
    """Peak-hour SaaS demand as a fraction of the instances' capacity at SLO (default configuration)."""
    iaas_fill: float = 0.85
    """Share of the remaining GPUs that IaaS VMs keep busy in steady state."""
    start_hour: float = 10.0
    stretch: float = 1.0
    ttft_slo_factor: float = 5.0
    ttft_slo_min_s: float = 0.5
    tbt_slo_factor: float = 2.5
    tbt_slo_min_s: float = 0.05
    chunked_prefill_tbt_penalty: float = 0.5
    """Decode steps take this much longer while a replica is prefilling (chunked prefill piggybacking)."""
    forecast_margin_c: float = 1.5
    power_forecast_decay_s: float = 60.0
    debounce_s: float = 30.0
    timeseries_every_s: float = 10.0
    endpoints: tuple[EndpointSpec, ...] = DEFAULT_ENDPOINTS


@dataclass
class RunResult:
    """Metrics (the JSON keys of ``tapas simulate``), time series for plots, and what was run."""

    policy: str
    scenario: str
    seed: int
    hours: float
    num_servers: int
    oversubscription: float
    metrics: dict[str, float]
    timeseries: dict[str, list[float] | list[list[float]]]
    info: dict[str, Any] = field(default_factory=dict)


def _fsum(index: I64, weights: F, n: int) -> F:
    """Sum ``weights`` into ``n`` bins by ``index`` (a typed ``np.bincount``)."""
    return np.asarray(np.bincount(index, weights=weights, minlength=n), dtype=np.float64)


def _lexsort_groups(keys: I64) -> tuple[I64, I64]:
    """For sorted ``keys``: index of the first element of each element's group, and the group's first index."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    gid = np.cumsum(np.r_[True, keys[1:] != keys[:-1]]) - 1
    return starts[gid], starts


def water_fill_probs(outstanding_s: F, new_work_s: float) -> F:
    """Least-outstanding-work routing of a batch: shares that level the instances' queues.

    Examples:
        >>> water_fill_probs(np.array([0.0, 1.0, 5.0]), 3.0).round(3).tolist()
        [0.667, 0.333, 0.0]
    """
    n = len(outstanding_s)
    if n == 0:
        return np.zeros(0)
    if new_work_s <= 0:
        p = (outstanding_s == outstanding_s.min()).astype(float)
        return np.asarray(p / p.sum(), dtype=np.float64)
    w = np.sort(outstanding_s)
    csum = np.cumsum(w)
    k = np.arange(1, n + 1)
    levels = (new_work_s + csum) / k
    ok = levels >= w
    kk = int(np.flatnonzero(ok)[-1]) + 1
    level = levels[kk - 1]
    fill = np.maximum(level - outstanding_s, 0.0)
    return np.asarray(fill / fill.sum(), dtype=np.float64)


def weighted_water_fill_probs(outstanding_s: F, rel_speed: F, new_work_s: float) -> F:
    """Least-outstanding-work routing that honours routing weights: level ``outstanding / rel_speed``.

    A load-aware router scoring instances by queue *and* by the controller's weights (the
    Gateway API Inference Extension / llm-d pattern the weights are published for) sends an
    instance with twice the weight twice the work when queues are equal, and still avoids a
    long queue. ``rel_speed`` = weight × number of instances (1 = a uniform share); zero
    weight gets nothing.

    Examples:
        >>> weighted_water_fill_probs(np.zeros(2), np.array([2.0, 1.0]), 3.0).round(3).tolist()
        [0.667, 0.333]
        >>> weighted_water_fill_probs(np.array([0.0, 4.0]), np.array([1.0, 1.0]), 2.0).round(3).tolist()
        [1.0, 0.0]
    """
    n = len(outstanding_s)
    out = np.zeros(n)
    ok = rel_speed > 1e-12
    if not ok.any():
        return water_fill_probs(outstanding_s, new_work_s)
    r = rel_speed[ok]
    o = outstanding_s[ok] / r
    if new_work_s <= 0:
        p = (o == o.min()).astype(float) * r
    else:
        order = np.argsort(o, kind="stable")
        os_, rs = o[order], r[order]
        levels = (new_work_s + np.cumsum(rs * os_)) / np.cumsum(rs)
        kk = int(np.flatnonzero(levels >= os_)[-1]) + 1
        p = r * np.maximum(levels[kk - 1] - o, 0.0)
    out[ok] = p / p.sum()
    return out


class Simulation:
    """One closed-loop run; ``step()`` advances one tick, ``result()`` summarises. Used by ``run`` and the feed."""

    def __init__(
        self,
        topology: Topology,
        scenario: str | Scenario,
        policy: str | Policy,
        *,
        hours: float,
        seed: int,
        trace_path: Path | str | None = None,
        trace: Trace | None = None,
        params: SimParams | None = None,
        knobs: Mapping[str, Any] | None = None,
    ) -> None:
        self.p = params or SimParams()
        self.knobs = dict(knobs or {})
        """Policy knob overrides by name (``controller.core.policy.PolicyKnobs``), for a registry-named policy."""
        self.topo = topology
        self.seed = seed
        self.duration_s = float(hours) * 3600.0
        self.dt = self.p.tick_s
        self.num_ticks = int(math.ceil(self.duration_s / self.dt))
        self.scenario = scenario if isinstance(scenario, Scenario) else make_scenario(
            scenario, duration_s=self.duration_s, seed=seed)
        if trace is None:
            if trace_path is None:
                from foundation.settings import load_settings

                trace_path = load_settings().resolved_trace_file
            trace = load_trace(trace_path)
        self.trace = trace
        ss = np.random.SeedSequence(seed)
        r_work, r_vm, r_route, r_misc = (np.random.default_rng(s) for s in ss.spawn(4))
        self.rng_route = r_route
        self._build_cluster()
        self._build_catalogue()
        self.policy: Policy = self._resolve_policy(policy)
        self.policy_name = str(getattr(self.policy, "name", policy if isinstance(policy, str) else "custom"))
        self.perfect = bool(getattr(self.policy, "perfect_forecasts", False))
        self.tick_index = 0
        self._init_state()
        self._place_saas()
        self._build_workload(r_work, r_vm)
        del r_misc
        self.tick_index = 0

    # ------------------------------------------------------------------ setup
    def _build_cluster(self) -> None:
        t = self.topo
        self.N = t.num_servers
        self.G = max(s.num_gpus for s in t.servers)
        self.R = len(t.rows)
        self.Z = len(t.zones)
        self.srv_row = t.server_row
        self.srv_zone = t.server_zone
        self.base_w = t.server_array("base_power_w")
        self.rth = t.server_array("thermal_resistance_c_per_w")
        self.inlet_off = t.server_array("inlet_offset_c")
        self.recirc_w = t.server_array("recirculation_weight")
        self.slowdown = t.server_array("sku.slowdown_temp_c")
        self.tdp = t.server_array("sku.tdp_w")
        self.idle = t.server_array("sku.idle_w")
        self.maxf = t.server_array("sku.max_freq_mhz")
        self.slot_off = np.resize(th.SLOT_OFFSETS_C, self.G)
        self.budget_w = t.row_budget_w.copy()
        self.zone_cap = t.zone_capacity_w.copy()
        self.zone_supply = t.zone_supply_c.copy()
        self.server_ids = t.server_ids

    def _build_catalogue(self) -> None:
        sku = self.topo.servers[0].sku
        tr = self.trace
        self.catalogue = build_catalogue(
            sku, endpoints=self.p.endpoints, mean_prompt=float(tr.prompt_tokens.mean()),
            mean_output=float(tr.output_tokens.mean()), gpus_per_server=self.G)
        self.endpoint_ids = tuple(e.endpoint_id for e in self.p.endpoints)
        self.E = len(self.endpoint_ids)
        self.cfg_ids: list[str] = []
        self.cfg_endpoint: list[int] = []
        for ei, ep in enumerate(self.endpoint_ids):
            for opt in self.catalogue.options[ep]:
                self.cfg_ids.append(opt.config_id)
                self.cfg_endpoint.append(ei)
        self.cfg_index = {c: i for i, c in enumerate(self.cfg_ids)}
        sp = [self.catalogue.option(c) for c in self.cfg_ids]
        a = np.asarray
        self.c_c0 = a([s.prefill_time_s[0] for s in sp])
        self.c_c1 = a([s.prefill_time_s[1] for s in sp])
        self.c_c2 = a([s.prefill_time_s[2] for s in sp])
        self.c_d0 = a([s.decode_step_s[0] for s in sp])
        self.c_d1 = a([s.decode_step_s[1] for s in sp])
        self.c_d2 = a([s.decode_step_s[2] for s in sp])
        self.c_dpf = a([s.decode_power_frac for s in sp])
        self.c_ppf = a([s.prefill_power_frac for s in sp])
        self.c_rep = a([float(s.replicas) for s in sp])
        self.c_maxb = a([float(s.max_batch) for s in sp])
        self.c_ffrac = a([s.frequency_cap_mhz / sku.max_freq_mhz for s in sp])
        self.c_quality = a([self.catalogue.option(c).quality_score for c in self.cfg_ids])
        self.c_capacity = a([self.catalogue.option(c).capacity_tokens_per_s_at_slo for c in self.cfg_ids])
        self.c_switch = a([s.switch_cost_s for s in sp])
        self.c_endpoint = a(self.cfg_endpoint, dtype=np.int64)
        self.ep_default_cfg = a([self.cfg_index[self.catalogue.defaults[e]] for e in self.endpoint_ids], dtype=np.int64)
        self.ep_quality = self.c_quality[self.ep_default_cfg]
        d = self.ep_default_cfg
        one = np.ones(self.E)
        iso_tbt = tbt_s(one, self.c_d0[d], self.c_d1[d], self.c_d2[d], one)
        self.ep_tbt_slo = np.maximum(self.p.tbt_slo_factor * iso_tbt, self.p.tbt_slo_min_s)

    def _resolve_policy(self, policy: str | Policy) -> Policy:
        if not isinstance(policy, str):
            return policy
        from controller.core.policy import knobs_for, make_policy

        return make_policy(policy, topology=self.topo, catalogue=self.catalogue, seed=self.seed,
                           knobs=knobs_for(policy, self.knobs))

    def _init_state(self) -> None:
        N, G, R = self.N, self.G, self.R
        self.gpu_temp = np.zeros((N, G))
        self.gpu_clock = np.ones((N, G))  # hardware thermal slowdown factor
        self.gpu_power = np.repeat(self.idle[:, None], G, axis=1)
        self.pol_fcap = np.ones((N, G))  # policy frequency caps (fraction of max clock)
        self.pol_plimit = np.full((N, G), np.inf)  # policy power limits, W per GPU
        self.cap_expires = np.full(N, np.inf)
        self.inlet = self.zone_supply[self.srv_zone] + self.inlet_off
        self.server_power = self.base_w + self.idle * G
        self.server_power_hi = self.server_power.copy()
        self.row_power = np.zeros(R)
        self.row_power_hi = np.zeros(R)
        self.zone_heat = np.zeros(self.Z)
        self.zone_heat_hi = np.zeros(self.Z)
        self.pm_cap = np.ones(R)
        self.pm_pending = np.full(R, np.nan)
        self.pm_apply_at = np.full(R, np.inf)
        self.pm_under_since = np.zeros(R)
        self.row_over_since = np.full(R, np.nan)
        self.gpu_vm = np.full((N, G), -1, dtype=np.int64)
        self.srv_inst = np.full(N, -1, dtype=np.int64)
        self.initialised = False
        self.in_use_gpu_s = 0.0
        self._start_rolled = False
        self._start_dirty: list[int] = []
        """Servers placed on before the first tick whose start power is not yet accounted (``_running_power_at_start``)."""
        self._power_parts_w = np.zeros(4)
        """Summed over ticks: servers' base, CPU/fan dynamic, GPUs of non-SaaS servers, GPUs of SaaS servers."""
        self._power_ticks = 0
        self._id_cache: dict[str, tuple[npt.NDArray[Any], tuple[str, ...]]] = {}
        self.routing: dict[str, RoutingDecision] = {}
        self.demand_ewma = np.zeros(self.E)
        self.demand_by_sec = np.zeros((self.E, self.num_ticks + 1))
        self.vms = generate_vms(iaas_gpus=0, iaas_fill=0.0, duration_s=0.0, rng=np.random.default_rng(0))
        self.vm_server = np.zeros(0, dtype=np.int64)
        self.vm_active = np.zeros(0, dtype=bool)
        self.vm_ids: tuple[str, ...] = ()
        # SaaS instances (filled by _place_saas)
        self.inst_server = np.zeros(0, dtype=np.int64)
        self.inst_endpoint = np.zeros(0, dtype=np.int64)
        self.inst_cfg = np.zeros(0, dtype=np.int64)
        self.inst_ids: tuple[str, ...] = ()
        self.metrics = MetricsAccumulator(N, G, R, self.p.debounce_s)
        self.ttft_hist = LatencyHistogram()
        self.tbt_hist = LatencyHistogram()
        self.events: list[dict[str, Any]] = []
        self.ts: dict[str, list[Any]] = {k: [] for k in (
            "t_s", "max_gpu_temp_c", "mean_hottest_gpu_temp_c", "max_inlet_c", "row_power_frac",
            "thermal_throttled_gpus", "power_throttled_gpus", "min_row_cap_frac", "demand_tokens_per_s",
            "served_tokens_per_s", "available_budget_frac")}

    def _snapshot_place(self) -> Snapshot:
        return self.snapshot()

    def _place_one(self, req: PlacementRequest) -> int:
        """Ask the policy; take the first candidate that really fits. Returns the server index or -1."""
        if not self.initialised:
            self._running_power_at_start()
        decision: PlacementDecision = self.policy.place(self.snapshot(), req)
        free = self._free_gpus()
        for cand in decision.candidates:
            s = int(cand.server_index)
            if 0 <= s < self.N and free[s] >= req.num_gpus and (req.vm_kind == "iaas" or free[s] == self.G):
                if self.srv_inst[s] < 0:
                    return s
        self.metrics.rejected_placements += 1
        return -1

    def _running_power_at_start(self) -> None:
        """Power of the population placed so far, as if already running: the initial population is present at t = 0.

        Without it every initial placement would see an idle cluster (no tick has run), and a power-aware
        policy could not spread the initial VMs by power. SaaS instances draw their placement request's
        expected power; IaaS VMs their utilisation at t = 0. Only the servers placed on since the last call
        (``_start_dirty``) are recomputed, then the row and zone sums: start-up stays linear in the cluster.
        """
        if not self._start_rolled:
            self._set_power(np.repeat(self.idle[:, None], self.G, axis=1), np.zeros(self.N))
            self._start_rolled = True
        for s in self._start_dirty:
            gp_s = np.full(self.G, self.idle[s])
            busy_s = 0.0
            vm = self.gpu_vm[s]
            held = vm >= 0
            if held.any():
                u = vm_util(0.0, self.vms.util_mean[vm[held]], self.vms.osc_period_s[vm[held]], self.vms.osc_phase[vm[held]])
                gp_s[held] = self.idle[s] + (self.tdp[s] - self.idle[s]) * u
                for x in u / self.G:  # summed in GPU order, as the tick does
                    busy_s += float(x)
            i = int(self.srv_inst[s])
            if i >= 0:
                gp_s[:] = max(float(self.inst_power[i]), float(self.idle[s]))
                busy_s = self.p.target_saas_util
            self.gpu_power[s] = gp_s
            self.server_power[s] = pw.server_power_w(self.base_w[s: s + 1], np.asarray([busy_s]),
                                                     self.gpu_power[s: s + 1].sum(axis=1))[0]
        self._start_dirty.clear()
        self.row_power = pw.row_power_w(self.server_power, self.srv_row, self.R)
        self.zone_heat = _fsum(self.srv_zone, self.server_power, self.Z)
        self.server_power_hi = self.server_power.copy()
        self.row_power_hi = self.row_power.copy()
        self.zone_heat_hi = self.zone_heat.copy()

    def _vm_gpus(self, t: float) -> tuple[npt.NDArray[np.bool_], I64, F]:
        """The GPUs IaaS VMs hold (mask), their servers (in mask order) and their VMs' utilisation at ``t``."""
        has_vm = self.gpu_vm >= 0
        v = self.gpu_vm[has_vm]
        rows, _ = np.nonzero(has_vm)
        u = vm_util(t, self.vms.util_mean[v], self.vms.osc_period_s[v], self.vms.osc_phase[v]) if v.size else np.zeros(0)
        return has_vm, rows.astype(np.int64), u

    def _set_power(self, gp: F, busy: F) -> F:
        """Per-GPU power and CPU busy share -> server, row and zone power (the forecast-high envelopes aside).

        Returns each server's GPU power sum.
        """
        self.gpu_power = gp
        gsum: F = gp.sum(axis=1)
        self.server_power = pw.server_power_w(self.base_w, busy, gsum)
        self.row_power = pw.row_power_w(self.server_power, self.srv_row, self.R)
        self.zone_heat = _fsum(self.srv_zone, self.server_power, self.Z)
        return gsum

    def _free_gpus(self) -> I64:
        used = (self.gpu_vm >= 0).sum(axis=1) + np.where(self.srv_inst >= 0, self.G, 0)
        return np.asarray(self.G - used, dtype=np.int64)

    def _place_saas(self) -> None:
        n_saas = max(self.E, int(round(self.p.saas_server_frac * self.N)))
        shares = np.asarray([e.share for e in self.p.endpoints])
        need = shares / self.c_capacity[self.ep_default_cfg]
        counts = np.maximum(1, np.floor(n_saas * need / need.sum()).astype(int))
        counts[0] += n_saas - counts.sum()
        servers, eps, powers = [], [], []
        exp_power = [self.catalogue.default(e).gpu_power_w(
            self.catalogue.default(e).capacity_tokens_per_s_at_slo * 0.98,
            self.catalogue.default(e).capacity_tokens_per_s_at_slo * 0.02) for e in self.endpoint_ids]
        self.inst_server = np.zeros(0, dtype=np.int64)
        self.inst_endpoint = np.zeros(0, dtype=np.int64)
        self.inst_cfg = np.zeros(0, dtype=np.int64)
        self._resize_instances(0)
        k = 0
        for ei, c in enumerate(counts):
            for _ in range(int(c)):
                req = PlacementRequest(request_id=f"saas-{k}", vm_kind="saas", num_gpus=self.G,
                                       gpu_power_w=exp_power[ei], vm_class=self.endpoint_ids[ei],
                                       expected_lifetime_s=30 * 86400.0, endpoint_id=self.endpoint_ids[ei])
                k += 1
                s = self._place_one(req)
                if s < 0:
                    continue
                servers.append(s)
                eps.append(ei)
                powers.append(exp_power[ei])
                self.srv_inst[s] = len(servers) - 1
                self._start_dirty.append(s)
                self.inst_server = np.asarray(servers, dtype=np.int64)
                self.inst_endpoint = np.asarray(eps, dtype=np.int64)
                self.inst_cfg = self.ep_default_cfg[self.inst_endpoint]
                self._resize_instances(len(servers))
                self.inst_power = np.asarray(powers, dtype=np.float64)
                self.inst_ids = tuple(f"{self.endpoint_ids[e]}-i{i:04d}" for i, e in enumerate(eps))
        self.I = len(servers)
        # A policy may deploy its instances in another configuration than the endpoint default (e.g. TAPAS's
        # efficient home layout): runs then start as a cluster that has been under that policy for a while.
        initial = getattr(self.policy, "initial_config", None)
        if callable(initial) and self.I:
            for ei, ep in enumerate(self.endpoint_ids):
                c = self.cfg_index.get(str(initial(ep)), -1)
                if c >= 0 and self.c_endpoint[c] == ei:
                    self.inst_cfg[self.inst_endpoint == ei] = c

    def _resize_instances(self, n: int) -> None:
        self.I = n
        self.inst_D = np.zeros(n)
        self.inst_free_at = np.zeros(n)
        self.inst_reload_until = np.zeros(n)
        self.inst_config_since = np.zeros(n)
        self.inst_draining = np.zeros(n, dtype=bool)
        self.inst_load = np.zeros(n)
        self.inst_prefill_share = np.full(n, 0.98)
        self.inst_freq = np.ones(n)
        self.inst_busy_pre = np.zeros(n)
        self.inst_power = np.zeros(n)
        self.inst_prefill_tps = np.zeros(n)
        self.inst_decode_tps = np.zeros(n)
        self.inst_batch = np.zeros(n)

    def _build_workload(self, r_work: np.random.Generator, r_vm: np.random.Generator) -> None:
        tr = self.trace
        mean_tokens = float((tr.prompt_tokens + tr.output_tokens).mean())
        # Demand follows the default configuration's capacity whatever the policy deployed, so every policy
        # serves the same requests.
        default_cfg = self.ep_default_cfg[self.inst_endpoint]
        cap_tokens = float(self.c_capacity[default_cfg].sum()) if self.I else 1.0
        self.load_scale = self.p.target_saas_util * cap_tokens / (tr.rate_per_s * mean_tokens)
        shares = np.asarray([e.share for e in self.p.endpoints])
        # Endpoint shares follow the instances actually placed, so every endpoint sees the same utilisation.
        cap_by_ep = np.bincount(self.inst_endpoint, weights=self.c_capacity[default_cfg], minlength=self.E)
        if cap_by_ep.sum() > 0:
            shares = cap_by_ep / cap_by_ep.sum()
        self._r_work = r_work
        self._arr_shares = shares
        z0 = np.zeros(0)
        self.arr = Arrivals(z0, z0, z0, np.zeros(0, dtype=np.int64))
        self.arr_ttft_slo = z0
        self.arr_ptr = 0
        self.arr_until_s = 0.0
        self.n_arrivals = 0
        self.demand_by_sec = np.zeros((self.E, self.num_ticks + 1))
        self._ensure_arrivals(ARRIVAL_LOOKAHEAD_S)
        self.demand_ewma = self.demand_by_sec[:, : min(60, self.num_ticks)].mean(axis=1)
        # pending and active request tables
        z = np.zeros(0)
        zi = np.zeros(0, dtype=np.int64)
        self.q_inst, self.q_arr, self.q_P, self.q_G, self.q_slo = zi, z, z, z, z
        self.a_inst, self.a_finD, self.a_first, self.a_G, self.a_P, self.a_ok, self.a_qloss = zi, z, z, z, z, np.zeros(0, bool), z
        # IaaS VMs
        iaas_gpus = int(self._free_gpus().sum())
        self.vms = generate_vms(iaas_gpus=iaas_gpus, iaas_fill=self.p.iaas_fill, duration_s=self.duration_s, rng=r_vm)
        nv = len(self.vms)
        self.vm_server = np.full(nv, -1, dtype=np.int64)
        self.vm_end = self.vms.arrival_s.clip(0.0) + self.vms.lifetime_s
        self.vm_active = np.zeros(nv, dtype=bool)
        self.vm_ids = tuple(f"vm-{i:05d}" for i in range(nv))
        self.vm_index = {v: i for i, v in enumerate(self.vm_ids)}
        self.vm_ptr = 0
        self._vm_arrivals(0.0)

    def _ensure_arrivals(self, until_s: float) -> None:
        """Draw request arrivals in chunks so a week-long feed never holds a week of requests."""
        while self.arr_until_s < min(until_s, self.duration_s):
            t0 = self.arr_until_s
            t1 = min(t0 + ARRIVAL_CHUNK_S, self.duration_s)
            new = generate_arrivals(
                self.trace, duration_s=t1, start_s=t0, scale=self.load_scale, rng=self._r_work, num_endpoints=self.E,
                endpoint_shares=self._arr_shares, start_hour=self.p.start_hour, stretch=self.p.stretch,
                multiplier_fn=self.scenario.load_multiplier)
            d = self.ep_default_cfg[new.endpoint]
            iso = prefill_time_s(new.prompt_tokens, self.c_c0[d], self.c_c1[d], self.c_c2[d], np.ones(len(d)))
            slo = np.maximum(self.p.ttft_slo_factor * iso, self.p.ttft_slo_min_s)
            sec = np.minimum(new.arrival_s.astype(np.int64), self.num_ticks)
            np.add.at(self.demand_by_sec, (new.endpoint, sec), new.prompt_tokens + new.output_tokens)
            lo = self.arr_ptr
            a = self.arr
            self.arr = Arrivals(
                np.concatenate([a.arrival_s[lo:], new.arrival_s]),
                np.concatenate([a.prompt_tokens[lo:], new.prompt_tokens]),
                np.concatenate([a.output_tokens[lo:], new.output_tokens]),
                np.concatenate([a.endpoint[lo:], new.endpoint]),
            )
            self.arr_ttft_slo = np.concatenate([self.arr_ttft_slo[lo:], slo])
            self.arr_ptr = 0
            self.n_arrivals += len(new)
            self.arr_until_s = t1

    # ------------------------------------------------------------------ VMs
    def _vm_arrivals(self, t: float) -> None:
        nv = len(self.vms)
        while self.vm_ptr < nv and self.vms.arrival_s[self.vm_ptr] <= t:
            i = self.vm_ptr
            self.vm_ptr += 1
            n = int(self.vms.num_gpus[i])
            req = PlacementRequest(request_id=self.vm_ids[i], vm_kind="iaas", num_gpus=n, gpu_power_w=None,
                                   vm_class=f"iaas-{n}gpu", expected_lifetime_s=float(self.vms.lifetime_s[i]))
            s = self._place_one(req)
            if s < 0:
                continue
            slots = np.flatnonzero(self.gpu_vm[s] < 0)[:n]
            self.gpu_vm[s, slots] = i
            self.vm_server[i] = s
            self.vm_active[i] = True
            if not self.initialised:
                self._start_dirty.append(s)

    def _vm_departures(self, t: float) -> None:
        gone = self.vm_active & (self.vm_end <= t)
        if gone.any():
            self.vm_active[gone] = False
            mask = np.isin(self.gpu_vm, np.flatnonzero(gone))
            self.gpu_vm[mask] = -1

    # ------------------------------------------------------------------ snapshot
    def emergencies(self, t: float) -> list[Emergency]:
        """Emergencies active at ``t`` (what a policy is told)."""
        sc = self.scenario
        win = sc.event_window_s
        if win is None or not (win[0] <= t < win[1]):
            return []
        if sc.name == "power-failure":
            return [Emergency(event_id=f"power-failure-{r}", kind="power", domain_kind="row", domain_index=r,
                              started_at_s=win[0], ends_at_s=win[1], budget_frac=sc.budget_frac(t))
                    for r in range(self.R)]
        if sc.name == "cooling-failure":
            from simulator.scenarios import COOLING_RISE_C, failed_zone

            return [Emergency(event_id="cooling-failure", kind="cooling", domain_kind="zone",
                              domain_index=failed_zone(self.Z), started_at_s=win[0], ends_at_s=win[1],
                              supply_temp_rise_c=COOLING_RISE_C)]
        return []

    def _cached(self, key: str, arr: npt.NDArray[Any], build: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
        """Rebuild a tuple of ids only when the integer array behind it changed."""
        hit = self._id_cache.get(key)
        if hit is not None and hit[0].shape == arr.shape and np.array_equal(hit[0], arr):
            return hit[1]
        value = build()
        self._id_cache[key] = (arr.copy(), value)
        return value

    def snapshot(self) -> Snapshot:
        """The state as the decision core sees it (forecasts per ``perfect_forecasts``)."""
        t = self.tick_index * self.dt
        hottest = self.gpu_temp.max(axis=1)
        hot_p = self.gpu_power.max(axis=1)
        ss = self.inlet + self.rth * hot_p + self.slot_off.max()
        margin = 0.0 if self.perfect else self.p.forecast_margin_c
        temp_hi = np.maximum(hottest, ss) + margin
        horizon = 60.0
        if self.perfect:
            t0 = min(int(t), self.num_ticks)
            demand_hi = self.demand_by_sec[:, t0: t0 + int(horizon)].mean(axis=1) if t0 < self.num_ticks else self.demand_ewma
            p_hi, row_hi, zone_hi = self.server_power, self.row_power, self.zone_heat
        else:
            demand_hi = self.demand_ewma * 1.1
            p_hi, row_hi, zone_hi = self.server_power_hi, self.row_power_hi, self.zone_heat_hi
        free = self._free_gpus()
        n_inst = self.I
        inst_f = self.inst_freq / np.maximum(self.c_ffrac[self.inst_cfg], 1e-6)
        cap = self.c_capacity[self.inst_cfg] * np.minimum(inst_f, 1.0)
        instances = SaasInstances(
            instance_ids=self.inst_ids,
            endpoint_ids=self._cached("inst_ep", self.inst_endpoint,
                                      lambda: tuple(self.endpoint_ids[e] for e in self.inst_endpoint)),
            server_index=self.inst_server,
            num_gpus=np.full(n_inst, self.G, dtype=np.int64),
            config_ids=self._cached("inst_cfg", self.inst_cfg, lambda: tuple(self.cfg_ids[c] for c in self.inst_cfg)),
            load_tokens_per_s=self.inst_load.copy(),
            prefill_frac=self.inst_prefill_share.copy(),
            capacity_tokens_per_s_at_slo=cap,
            gpu_power_w=self.gpu_power[self.inst_server, 0] if n_inst else np.zeros(0),
            # Held out of service by something other than the router (here: reloading weights). The router's own
            # drains are its output, not its input: feeding them back would latch an instance drained for good.
            draining=self.inst_reload_until > t,
            config_since_s=self.inst_config_since.copy(),
            busy_until_s=self.inst_reload_until.copy(),
        )
        act = np.flatnonzero(self.vm_active)
        vs = self.vm_server[act]
        nv = len(self.vm_active)
        has = self.gpu_vm >= 0
        owner = self.gpu_vm[has]
        sums = _fsum(owner, self.gpu_power[has], nv)
        cnt = np.bincount(owner, minlength=nv)
        vm_gpu_p = sums[act] / np.maximum(cnt[act], 1)
        lim_all = np.full(nv, np.inf)
        np.minimum.at(lim_all, owner, self.pol_plimit[has])
        limits = lim_all[act]
        tdp_v = self.tdp[vs]
        idle_v = self.idle[vs]
        exp_p = idle_v + (tdp_v - idle_v) * np.minimum(self.vms.util_mean[act] + 0.15, 1.0)
        vms = IaasVms(
            vm_ids=self._cached("vm_act", act, lambda: tuple(self.vm_ids[i] for i in act)),
            server_index=vs,
            num_gpus=self.vms.num_gpus[act],
            gpu_power_w=vm_gpu_p,
            expected_gpu_power_w=exp_p,
            power_limit_w=np.where(np.isfinite(limits), limits, np.nan),
        )
        bf = self.scenario.budget_frac(t)
        return Snapshot(
            now_s=t,
            forecast_age_s=0.0,
            horizon_s=horizon,
            server_ids=self.server_ids,
            server_row=self.srv_row,
            server_rack=self.topo.server_rack,
            server_zone=self.srv_zone,
            server_pdu=self.topo.server_pdu,
            num_gpus=np.full(self.N, self.G, dtype=np.int64),
            free_gpus=free,
            gpu_tdp_w=self.tdp,
            gpu_idle_power_w=self.idle,
            slowdown_temp_c=self.slowdown,
            gpu_temp_c=hottest,
            gpu_temp_hi_c=temp_hi,
            inlet_c=self.inlet.copy(),
            inlet_hi_c=self.inlet + (0.0 if self.perfect else 0.5),
            server_power_w=self.server_power.copy(),
            server_power_hi_w=np.asarray(p_hi, dtype=np.float64).copy(),
            server_idle_power_w=self.base_w + self.idle * self.G,
            thermal_resistance_c_per_w=self.rth,
            row_ids=self.topo.row_ids,
            row_budget_w=self.budget_w * bf,
            row_power_w=self.row_power.copy(),
            row_power_hi_w=np.asarray(row_hi, dtype=np.float64).copy(),
            zone_ids=self.topo.zone_ids,
            zone_capacity_w=self.zone_cap * self.scenario.cooling_capacity_frac(t, self.Z),
            zone_heat_w=self.zone_heat.copy(),
            zone_heat_hi_w=np.asarray(zone_hi, dtype=np.float64).copy(),
            instances=instances,
            vms=vms,
            endpoint_ids=self.endpoint_ids,
            endpoint_demand_tokens_per_s=self.demand_ewma.copy(),
            endpoint_demand_hi_tokens_per_s=np.asarray(demand_hi, dtype=np.float64),
            gpu_max_freq_mhz=self.maxf,
        )

    # ------------------------------------------------------------------ actions
    def _apply(self, actions: TickActions, t: float) -> None:
        self.routing = dict(actions.routing)
        drain = np.zeros(self.I, dtype=bool)
        for dec in self.routing.values():
            idx = np.asarray(dec.instance_index, dtype=np.int64)
            ok = (idx >= 0) & (idx < self.I)
            drain[idx[ok]] = np.asarray(dec.draining, dtype=bool)[ok]
        self.inst_draining = drain
        changes = list(actions.changes)
        caps = list(actions.caps)
        for plan in actions.plans:
            changes.extend(plan.changes)
            caps.extend(plan.caps)
        for ch in changes:
            i = int(ch.instance_index)
            c = self.cfg_index.get(ch.to_config_id, -1)
            if not (0 <= i < self.I) or c < 0 or self.c_endpoint[c] != self.inst_endpoint[i]:
                self.metrics.invalid_actions += 1
                continue
            if c == self.inst_cfg[i]:
                continue
            old = self.inst_cfg[i]
            slow = (self.c_rep[c] != self.c_rep[old]) or self.c_switch[c] != self.c_switch[old] or \
                self.catalogue.is_slow_switch(self.cfg_ids[old], self.cfg_ids[c])
            if slow:
                self.inst_reload_until[i] = t + max(self.c_switch[c], self.c_switch[old], 1.0)
                self.metrics.slow_switches += 1
            else:
                self.metrics.fast_switches += 1
            self.inst_cfg[i] = c
            self.inst_config_since[i] = t
        for s in actions.released_caps:
            if 0 <= s < self.N:
                self.pol_fcap[s] = 1.0
                self.pol_plimit[s] = np.inf
                self.cap_expires[s] = np.inf
        for cap in caps:
            s = int(cap.server_index)
            if not 0 <= s < self.N:
                self.metrics.invalid_actions += 1
                continue
            if cap.vm_id is not None:
                vi = self.vm_index.get(cap.vm_id, -1)
                mask = self.gpu_vm[s] == vi
            else:
                mask = np.ones(self.G, dtype=bool)
            if cap.frequency_cap_mhz is not None:
                self.pol_fcap[s, mask] = min(cap.frequency_cap_mhz / self.maxf[s], 1.0)
            if cap.power_limit_w is not None:
                self.pol_plimit[s, mask] = cap.power_limit_w
            self.cap_expires[s] = cap.expires_at_s
            self.metrics.caps_applied += 1

    # ------------------------------------------------------------------ tick
    def step(self) -> None:
        """Advance one tick."""
        k = self.tick_index
        t = k * self.dt
        dt = self.dt
        sc = self.scenario
        win = sc.event_window_s
        in_window = win is None or (win[0] <= t < win[1])
        self._vm_departures(t)
        if k > 0:
            self._vm_arrivals(t)
        expired = self.cap_expires <= t
        if expired.any():
            self.pol_fcap[expired] = 1.0
            self.pol_plimit[expired] = np.inf
            self.cap_expires[expired] = np.inf
        every = max(1, int(round(self.p.decision_interval_s / dt)))
        if k % every == 0:
            actions = self.policy.tick(self.snapshot(), self.emergencies(t))
            self._apply(actions, t)

        # ---- effective clocks
        row_cap = self.pm_cap[self.srv_row]
        gpu_f = np.minimum(np.minimum(self.gpu_clock, self.pol_fcap), row_cap[:, None])
        n_inst = self.I
        srv_min_f = gpu_f.min(axis=1)
        inst_f = np.minimum(srv_min_f[self.inst_server], self.c_ffrac[self.inst_cfg]) if n_inst else np.zeros(0)
        if n_inst:
            # a power limit on an instance's GPUs lowers its clock (power capping acts through DVFS): the clock
            # that would have met the limit last tick, from the f² law
            lim = self.pol_plimit[self.inst_server].min(axis=1)
            idle_i = self.idle[self.inst_server]
            dyn_prev = np.maximum(self.inst_power - idle_i, 1e-9)
            over = np.isfinite(lim) & (self.inst_power > lim)
            if over.any():
                f_lim = self.inst_freq * np.sqrt(np.clip((lim - idle_i) / dyn_prev, 0.0, 1.0))
                inst_f = np.where(over, np.minimum(inst_f, np.maximum(f_lim, 0.1)), inst_f)
        self.inst_freq = inst_f
        serving = self.inst_reload_until <= t

        # ---- requests queued on an instance that stopped serving (reloading weights) go back to the router
        if len(self.q_inst):
            stuck = np.flatnonzero(~serving[self.q_inst])
            if len(stuck):
                moved = self._route(self.inst_endpoint[self.q_inst[stuck]], self.q_P[stuck], t, serving)
                ok = moved >= 0
                self.q_inst[stuck[ok]] = moved[ok]
                self.metrics.rerouted_requests += int(ok.sum())

        # ---- arrivals and routing
        self._ensure_arrivals(t + ARRIVAL_LOOKAHEAD_S)
        lo = self.arr_ptr
        hi = int(np.searchsorted(self.arr.arrival_s, t + dt, side="left"))
        self.arr_ptr = hi
        demand_now = np.zeros(self.E)
        if hi > lo:
            ep = self.arr.endpoint[lo:hi]
            P = self.arr.prompt_tokens[lo:hi]
            Gt = self.arr.output_tokens[lo:hi]
            np.add.at(demand_now, ep, P + Gt)
            inst = self._route(ep, P, t, serving)
            ok = inst >= 0
            self.metrics.dropped_requests += int((~ok).sum())
            self.q_inst = np.concatenate([self.q_inst, inst[ok]])
            self.q_arr = np.concatenate([self.q_arr, self.arr.arrival_s[lo:hi][ok]])
            self.q_P = np.concatenate([self.q_P, P[ok]])
            self.q_G = np.concatenate([self.q_G, Gt[ok]])
            self.q_slo = np.concatenate([self.q_slo, self.arr_ttft_slo[lo:hi][ok]])
        self.demand_ewma += (demand_now / dt - self.demand_ewma) * (dt / 60.0)

        # ---- serving
        served_tokens = self._serve(t, dt, inst_f, serving)

        # ---- power
        cfg = self.inst_cfg
        if n_inst:
            active = np.bincount(self.a_inst, minlength=n_inst).astype(float)
            batch = active / self.c_rep[cfg]
            dec_busy = np.where((active > 0) & serving, 1.0 - self.inst_busy_pre, 0.0)
            dpf = decode_power_frac_at_batch(self.c_dpf[cfg], batch, self.c_maxb[cfg])
            srv = self.inst_server
            p_inst = gpu_power_w(self.idle[srv], self.tdp[srv], self.inst_busy_pre, dec_busy, dpf, inst_f, self.c_ppf[cfg])
            p_inst = np.minimum(p_inst, self.pol_plimit[srv].min(axis=1))
            self.inst_power = p_inst
        gp = np.repeat(self.idle[:, None], self.G, axis=1)
        busy = np.zeros(self.N)
        has_vm, rows, u = self._vm_gpus(t)
        if rows.size:
            f_vm = gpu_f[has_vm]
            lim = self.pol_plimit[has_vm]
            idle_v = self.idle[rows]
            dyn = (self.tdp[rows] - idle_v) * u
            # power limit: DVFS lowers the clock until power fits
            f_lim = np.sqrt(np.clip((lim - idle_v) / np.maximum(dyn, 1e-9), 0.0, 1.0))
            f_eff = np.minimum(f_vm, f_lim)
            gp[has_vm] = idle_v + dyn * np.power(f_eff, POWER_FREQ_EXP)
            np.add.at(busy, rows, u / self.G)
            self.metrics.add_iaas(f_eff, in_window)
        if n_inst:
            gp[self.inst_server] = self.inst_power[:, None]
            busy[self.inst_server] = np.clip(self.inst_busy_pre + np.where(serving, dec_busy, 0.0), 0, 1)
        gsum = self._set_power(gp, busy)
        on_saas = self.srv_inst >= 0
        self._power_parts_w += (float(self.base_w.sum()), float((self.server_power - self.base_w - gsum).sum()),
                                float(gsum[~on_saas].sum()), float(gsum[on_saas].sum()))
        self._power_ticks += 1
        decay = dt / self.p.power_forecast_decay_s
        self.server_power_hi = np.maximum(self.server_power, self.server_power_hi - (self.server_power_hi - self.server_power) * decay)
        self.row_power_hi = np.maximum(self.row_power, self.row_power_hi - (self.row_power_hi - self.row_power) * decay)
        self.zone_heat_hi = np.maximum(self.zone_heat, self.zone_heat_hi - (self.zone_heat_hi - self.zone_heat) * decay)

        # ---- heat
        supply = self.zone_supply + sc.supply_rise_c(t, self.Z)
        heat_frac = self.zone_heat / (self.zone_cap * sc.cooling_capacity_frac(t, self.Z))
        inlet_target = th.inlet_temp_c(supply[self.srv_zone], self.inlet_off, self.recirc_w, heat_frac[self.srv_zone])
        gpu_target = th.steady_gpu_temp_c(inlet_target[:, None] if not self.initialised else self.inlet[:, None],
                                          self.rth[:, None], gp, self.slot_off[None, :])
        if not self.initialised:
            self.inlet = inlet_target
            self.gpu_temp = gpu_target
            self.initialised = True
        else:
            self.inlet = th.lag_step(self.inlet, inlet_target, dt, th.INLET_TAU_S)
            self.gpu_temp = th.lag_step(self.gpu_temp, gpu_target, dt, th.GPU_TAU_S)
        self.gpu_clock = th.thermal_clock_step(self.gpu_clock, self.gpu_temp, self.slowdown[:, None], dt)

        # ---- reactive power manager
        eff_budget = self.budget_w * sc.budget_frac(t)
        self._power_manager(t, eff_budget)

        # ---- metrics
        in_use = has_vm.copy()
        if n_inst:
            in_use[self.inst_server] = True
        self.in_use_gpu_s += float(in_use.sum()) * dt
        th_thr = (self.gpu_clock < 0.999) & in_use
        pw_thr = (self.pm_cap[self.srv_row][:, None] < 0.999) & in_use
        saas_perf = self._saas_speed_factor(inst_f, serving) if n_inst else np.zeros(0)
        self.metrics.tick(t, dt, self.gpu_temp, th_thr, pw_thr, self.pm_cap < 0.999, self.row_power / self.budget_w,
                          self.row_power > eff_budget, in_window, saas_perf, self.events, self.topo)
        if k % max(1, int(round(self.p.timeseries_every_s / dt))) == 0:
            hottest = self.gpu_temp.max(axis=1)
            self.ts["t_s"].append(t)
            self.ts["max_gpu_temp_c"].append(float(hottest.max()))
            self.ts["mean_hottest_gpu_temp_c"].append(float(hottest.mean()))
            self.ts["max_inlet_c"].append(float(self.inlet.max()))
            self.ts["row_power_frac"].append([float(x) for x in self.row_power / self.budget_w])
            self.ts["thermal_throttled_gpus"].append(int(th_thr.sum()))
            self.ts["power_throttled_gpus"].append(int(pw_thr.sum()))
            self.ts["min_row_cap_frac"].append(float(self.pm_cap.min()))
            self.ts["demand_tokens_per_s"].append(float(demand_now.sum() / dt))
            self.ts["served_tokens_per_s"].append(float(served_tokens / dt))
            self.ts["available_budget_frac"].append(float(sc.budget_frac(t)))
        self.tick_index += 1

    def _saas_speed_factor(self, inst_f: F, serving: npt.NDArray[np.bool_]) -> F:
        """Prefill speed of each instance relative to its endpoint's default configuration at full clock (≤ 1)."""
        P = float(self.trace.prompt_tokens.mean())
        cfg = self.inst_cfg
        d = self.ep_default_cfg[self.inst_endpoint]
        ones = np.ones(self.I)
        t_def = prefill_time_s(np.full(self.I, P), self.c_c0[d], self.c_c1[d], self.c_c2[d], ones) / self.c_rep[d]
        t_now = prefill_time_s(np.full(self.I, P), self.c_c0[cfg], self.c_c1[cfg], self.c_c2[cfg], inst_f) / self.c_rep[cfg]
        return np.asarray(np.where(serving, np.minimum(t_def / t_now, 1.0), 0.0), dtype=np.float64)

    def _route(self, ep: I64, P: F, t: float, serving: npt.NDArray[np.bool_]) -> I64:
        out = np.full(len(ep), -1, dtype=np.int64)
        for e in range(self.E):
            sel = np.flatnonzero(ep == e)
            if len(sel) == 0:
                continue
            dec = self.routing.get(self.endpoint_ids[e])
            if dec is not None and len(dec.instance_index) > 0:
                idx = np.asarray(dec.instance_index, dtype=np.int64)
                w = np.asarray(dec.weights, dtype=np.float64) * serving[idx]
                lw = np.asarray(dec.long_prompt_weights, dtype=np.float64) * serving[idx]
                if w.sum() > 0:
                    long = P[sel] >= LONG_PROMPT_TOKENS
                    work = self._outstanding_s(idx, t)
                    cfg = self.inst_cfg[idx]
                    for mask, ww in ((~long, w), (long, lw if lw.sum() > 0 else w)):
                        m = sel[mask]
                        if len(m):
                            pt = prefill_time_s(P[m], self.c_c0[cfg[0]], self.c_c1[cfg[0]], self.c_c2[cfg[0]],
                                                np.ones(len(m)))
                            probs = weighted_water_fill_probs(work, ww * len(ww) / ww.sum(),
                                                              float(pt.sum() / self.c_rep[cfg].mean()))
                            out[m] = idx[self.rng_route.choice(len(idx), size=len(m), p=probs)]
                    continue
            cand = np.flatnonzero((self.inst_endpoint == e) & serving & ~self.inst_draining)
            if len(cand) == 0:
                cand = np.flatnonzero((self.inst_endpoint == e) & serving)
            if len(cand) == 0:
                continue
            work = self._outstanding_s(cand, t)
            cfg = self.inst_cfg[cand]
            mean_pt = prefill_time_s(P[sel], self.c_c0[cfg[0]], self.c_c1[cfg[0]], self.c_c2[cfg[0]], np.ones(len(sel)))
            probs = water_fill_probs(work, float(mean_pt.sum() / self.c_rep[cfg].mean()))
            out[sel] = cand[self.rng_route.choice(len(cand), size=len(sel), p=probs)]
        return out

    def _outstanding_s(self, cand: I64, t: float) -> F:
        """Queued prefill seconds (per lane) plus the lane's remaining busy time, per instance."""
        n_inst = self.I
        cfg = self.inst_cfg
        if len(self.q_inst):
            c = cfg[self.q_inst]
            pt = prefill_time_s(self.q_P, self.c_c0[c], self.c_c1[c], self.c_c2[c], self.inst_freq[self.q_inst])
            q = _fsum(self.q_inst, pt / self.c_rep[c], n_inst)
        else:
            q = np.zeros(n_inst)
        return np.asarray((q + np.maximum(self.inst_free_at - t, 0.0))[cand], dtype=np.float64)

    def _serve(self, t: float, dt: float, inst_f: F, serving: npt.NDArray[np.bool_]) -> float:
        n_inst = self.I
        if n_inst == 0:
            return 0.0
        cfg = self.inst_cfg
        rep = self.c_rep[cfg]
        active_n = np.bincount(self.a_inst, minlength=n_inst)
        free_slots = self.c_maxb[cfg] * rep - active_n
        D_prev = self.inst_D.copy()
        busy_in_tick = np.clip(self.inst_free_at - t, 0.0, dt)  # prefill work spilled over from earlier ticks
        self.inst_prefill_tps = np.zeros(n_inst)
        served = 0.0
        if len(self.q_inst):
            order = np.lexsort((self.q_arr, self.q_inst))
            for name in ("q_inst", "q_arr", "q_P", "q_G", "q_slo"):
                setattr(self, name, getattr(self, name)[order])
            qi = self.q_inst
            c = cfg[qi]
            pt = prefill_time_s(self.q_P, self.c_c0[c], self.c_c1[c], self.c_c2[c], inst_f[qi])
            work = pt / rep[qi]
            cw = np.cumsum(work)
            first, _ = _lexsort_groups(qi)
            before = cw - work - (cw[first] - work[first])
            rank = np.arange(len(qi)) - first
            lane = np.maximum(self.inst_free_at[qi], t)
            start = np.maximum(lane + before, self.q_arr)
            admit = serving[qi] & (rank < free_slots[qi]) & (start < t + dt)
            if admit.any():
                ai = qi[admit]
                first_tok = start[admit] + pt[admit]
                ttft = first_tok - self.q_arr[admit]
                self.ttft_hist.add(ttft)
                ok = ttft <= self.q_slo[admit]
                np.maximum.at(self.inst_free_at, ai, start[admit] + work[admit])
                end_in_tick = np.minimum(start[admit] + work[admit], t + dt)
                busy_in_tick += _fsum(ai, np.maximum(end_in_tick - start[admit], 0.0), n_inst)
                Gq = self.q_G[admit]
                qloss = (self.ep_quality[self.inst_endpoint[ai]] - self.c_quality[cfg[ai]]) / self.ep_quality[self.inst_endpoint[ai]]
                self.a_inst = np.concatenate([self.a_inst, ai])
                self.a_finD = np.concatenate([self.a_finD, D_prev[ai] + np.maximum(Gq - 1.0, 0.0)])
                self.a_first = np.concatenate([self.a_first, first_tok])
                self.a_G = np.concatenate([self.a_G, Gq])
                self.a_P = np.concatenate([self.a_P, self.q_P[admit]])
                self.a_ok = np.concatenate([self.a_ok, ok])
                self.a_qloss = np.concatenate([self.a_qloss, qloss])
                tokens_in = _fsum(ai, self.q_P[admit] + Gq, n_inst)
                pre_in = _fsum(ai, self.q_P[admit], n_inst)
                self.inst_prefill_tps = pre_in / dt
                self.inst_load += (tokens_in / dt - self.inst_load) * (dt / 30.0)
                share = np.where(tokens_in > 0, pre_in / np.maximum(tokens_in, 1e-9), self.inst_prefill_share)
                self.inst_prefill_share = share
                keep = ~admit
                for name in ("q_inst", "q_arr", "q_P", "q_G", "q_slo"):
                    setattr(self, name, getattr(self, name)[keep])
            else:
                self.inst_load -= self.inst_load * (dt / 30.0)
        else:
            self.inst_load -= self.inst_load * (dt / 30.0)
        self.inst_busy_pre = np.where(serving, np.clip(busy_in_tick / dt, 0.0, 1.0), 0.0)
        # decode
        active_n = np.bincount(self.a_inst, minlength=n_inst).astype(float)
        batch = active_n / rep
        step_s = tbt_s(batch, self.c_d0[cfg], self.c_d1[cfg], self.c_d2[cfg], inst_f) * (
            1.0 + self.p.chunked_prefill_tbt_penalty * self.inst_busy_pre)
        steps = np.where((active_n > 0) & serving, dt / step_s, 0.0)
        self.inst_D = D_prev + steps
        self.inst_decode_tps = steps * active_n / dt
        self.inst_batch = batch
        if len(self.a_inst):
            done = self.a_finD <= self.inst_D[self.a_inst]
            if done.any():
                di = self.a_inst[done]
                frac = np.where(steps[di] > 0, (self.a_finD[done] - D_prev[di]) / np.maximum(steps[di], 1e-12), 0.0)
                fin = t + np.clip(frac, 0.0, 1.0) * dt
                Gd = self.a_G[done]
                fin = np.maximum(fin, self.a_first[done] + (Gd - 1.0) * step_s[di])
                tbt = (fin - self.a_first[done]) / np.maximum(Gd - 1.0, 1.0)
                self.tbt_hist.add(tbt)
                tbt_ok = tbt <= self.ep_tbt_slo[self.inst_endpoint[di]]
                met = self.a_ok[done] & tbt_ok
                tokens = self.a_P[done] + Gd
                served = float(tokens.sum())
                self.metrics.add_requests(met, tokens, self.a_qloss[done])
                keep = ~done
                for name in ("a_inst", "a_finD", "a_first", "a_G", "a_P", "a_ok", "a_qloss"):
                    setattr(self, name, getattr(self, name)[keep])
        return served

    def _power_manager(self, t: float, eff_budget: F) -> None:
        over = self.row_power > eff_budget
        # deadline accounting: a row over budget longer than the UPS deadline is a violation
        start = np.isnan(self.row_over_since) & over
        self.row_over_since[start] = t
        self.row_over_since[~over] = np.nan
        late = over & (t - self.row_over_since >= pw.PM_DEADLINE_S)
        self.metrics.deadline_violation_s += float(late.sum()) * self.dt
        # apply pending caps whose actuation delay has passed
        due = self.pm_apply_at <= t
        if due.any():
            self.pm_cap[due] = self.pm_pending[due]
            self.pm_pending[due] = np.nan
            self.pm_apply_at[due] = np.inf
        k = self.tick_index
        if k % max(1, int(round(pw.PM_SAMPLE_S / self.dt))) != 0:
            return
        in_use_dyn = _fsum(self.srv_row, (self.gpu_power - self.idle[:, None]).sum(axis=1), self.R)
        ref = np.where(np.isnan(self.pm_pending), self.pm_cap, self.pm_pending)
        need = pw.cap_needed_frac(self.row_power, in_use_dyn, eff_budget, ref)
        lower = over & (need < ref - 1e-6)
        newly = lower & np.isnan(self.pm_pending)
        self.pm_apply_at[newly] = t + pw.PM_ACTUATION_S
        self.pm_pending[lower] = need[lower]
        # release: under PM_RELEASE_FRAC for the hold time → raise the cap stepwise
        under = self.row_power < pw.PM_RELEASE_FRAC * eff_budget
        self.pm_under_since = np.where(under, self.pm_under_since + pw.PM_SAMPLE_S, 0.0)
        rel = under & (self.pm_under_since >= pw.PM_RELEASE_HOLD_S) & (self.pm_cap < 1.0) & np.isnan(self.pm_pending)
        self.pm_cap[rel] = np.minimum(self.pm_cap[rel] + pw.PM_RELEASE_STEP_FRAC, 1.0)

    # ------------------------------------------------------------------ run
    @property
    def finished(self) -> bool:
        """True when every tick has run."""
        return self.tick_index >= self.num_ticks

    def result(self) -> RunResult:
        """Summarise the run."""
        t_end = self.tick_index * self.dt
        overdue = (t_end - self.q_arr) > self.q_slo
        if overdue.any():
            self.ttft_hist.add(t_end - self.q_arr[overdue])
            self.metrics.add_requests(np.zeros(int(overdue.sum()), dtype=bool), np.zeros(int(overdue.sum())),
                                      np.zeros(int(overdue.sum())))
        m = self.metrics.summary(t_end, self.ttft_hist, self.tbt_hist, iaas_loss_window=self.scenario.event_window_s)
        m["max_gpu_temp_c"] = float(self.metrics.max_temp)
        info = {
            "load_scale": self.load_scale,
            "saas_instances": self.I,
            "vms_placed": int((self.vm_server >= 0).sum()),
            "requests": self.n_arrivals,
            "ttft_slo_factor": self.p.ttft_slo_factor,
            "tbt_slo_s": {e: float(x) for e, x in zip(self.endpoint_ids, self.ep_tbt_slo, strict=True)},
            "event_window_s": self.scenario.event_window_s,
            "slowdown_temp_c": float(self.slowdown.min()),
            "in_use_gpu_seconds": self.in_use_gpu_s,
            "trace": self.trace.path,
            # Where a row's power goes, on average: what bounds how many servers a budget can hold.
            "mean_row_power_w": dict(zip(("base", "cpu", "non_saas_gpus", "saas_gpus"),
                                         (self._power_parts_w / max(self._power_ticks * self.R, 1)).round(1).tolist(),
                                         strict=True)),
            "mean_saas_gpu_power_w": round(float(self._power_parts_w[3] / max(self._power_ticks * self.I * self.G, 1)), 1),
        }
        return RunResult(policy=self.policy_name, scenario=self.scenario.name, seed=self.seed,
                         hours=self.duration_s / 3600.0, num_servers=self.N,
                         oversubscription=self.topo.oversubscription, metrics=m,
                         timeseries=dict(self.ts), info=info)


#: Arrivals are drawn this many seconds at a time, and at least this far ahead (oracle's horizon).
ARRIVAL_CHUNK_S = 1800.0
ARRIVAL_LOOKAHEAD_S = 120.0

#: Prompts at least this long count as prefill-heavy for routing (≈ top quartile of the Azure code trace).
LONG_PROMPT_TOKENS = 2800.0


def run(
    topology: Topology,
    scenario: str | Scenario,
    policy: str | Policy,
    *,
    hours: float,
    seed: int,
    trace_path: Path | str | None = None,
    trace: Trace | None = None,
    params: SimParams | None = None,
    knobs: Mapping[str, Any] | None = None,
) -> RunResult:
    """Run one scenario with one policy to the end and return its metrics and time series."""
    sim = Simulation(topology, scenario, policy, hours=hours, seed=seed, trace_path=trace_path, trace=trace, params=params,
                     knobs=knobs)
    while not sim.finished:
        sim.step()
    return sim.result()


def compare(
    topology: Topology,
    scenario: str,
    policies: Sequence[str],
    *,
    hours: float,
    seed: int,
    trace_path: Path | str | None = None,
    params: SimParams | None = None,
) -> dict[str, RunResult]:
    """Run several policies on the same topology, trace, scenario and seed."""
    trace = load_trace(trace_path) if trace_path is not None else None
    return {name: run(topology, scenario, name, hours=hours, seed=seed, trace_path=trace_path, trace=trace, params=params)
            for name in policies}


__all__ = ["DECODE_COMPUTE_FRAC", "RunResult", "SimParams", "Simulation", "compare", "freq_time_factor", "run",
           "water_fill_probs"]
