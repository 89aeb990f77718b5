"""Turn the latest forecast and state messages plus the topology into a core ``Snapshot``.

:class:`LiveState` keeps, per server, the latest :class:`~contracts.ServerForecast`
(written into preallocated arrays, O(1) per message) and the latest serving-layer
:class:`~contracts.WorkloadContext`; per domain the latest
:class:`~contracts.DomainForecast`. :func:`build_snapshot` reads them at a given
instant and returns the frozen struct-of-arrays the pure core expects. Nothing here
reads a clock or a topic: messages and ``now`` come in as arguments.

Choices an operator should know (documented in the controller README section):

* The decision horizon's forecast-high is the *peak* of the upper bounds over every
  horizon up to ``decision_horizon_s`` (placement and reconfiguration guard the whole
  window, not one instant).
* A server that never sent a forecast is *unknown*: its forecast-high temperature is its
  slowdown temperature (zero headroom, so placement avoids it and routing does not favour
  it) and its power is its idle power.
* SaaS instances come from the workload context of GPU samples: a server whose
  ``config_id`` belongs to an endpoint of the catalogue runs ``len(instance_ids)``
  instances of that configuration (one named after the server when the list is empty),
  sharing its GPUs and load equally. A server with instance ids but no catalogue
  configuration hosts opaque IaaS VMs. A server with neither has all GPUs free.
* HBM comes from the GPU samples: per server the GPU whose memory is nearest its own
  maximum operating temperature (``memory_max_temp_c - memory_temp_c`` smallest) gives
  ``memory_temp_c`` and ``memory_max_temp_c``; NaN where the latest sample reports none
  (the core then reads the HBM as unknown: no limit). A late, older sample never
  overwrites a newer one.
* Endpoint demand is the sum of its instances' load; its forecast-high adds
  ``demand_margin_frac`` (no load forecast is on the wire yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from contracts import DomainForecast, GpuReading, ServerForecast, WorkloadContext
from controller.core.belief import hottest_gpu_c
from controller.core.catalogue import Catalogue
from controller.core.snapshot import FloatArray, IaasVms, IntArray, SaasInstances, Snapshot
from foundation.topology import Topology

#: forecast_age_s reported before any forecast arrived (the core treats it as stale).
NEVER_S = 1.0e9


@dataclass
class ServerWorkload:
    """The latest serving-layer context of one server."""

    workload: WorkloadContext
    gpu_power_w: float | None
    """Mean per-GPU power of the sample that carried it."""
    sampled_at: datetime
    config_since: datetime


@dataclass
class LiveState:
    """The latest forecasts and workloads, indexed like the topology's servers."""

    topology: Topology
    has_forecast: npt.NDArray[np.bool_] = field(init=False)
    issued_at_s: FloatArray = field(init=False)
    gpu_temp_c: FloatArray = field(init=False)
    gpu_temp_hi_c: FloatArray = field(init=False)
    power_w: FloatArray = field(init=False)
    power_hi_w: FloatArray = field(init=False)
    inlet_c: FloatArray = field(init=False)
    slowdown_temp_c: FloatArray = field(init=False)
    memory_temp_c: FloatArray = field(init=False)
    """Per server, the HBM temperature of the GPU nearest its memory limit, °C; NaN when unknown."""
    memory_max_temp_c: FloatArray = field(init=False)
    """That GPU's HBM maximum operating temperature, °C; NaN when unknown."""
    memory_sampled_at_s: FloatArray = field(init=False)
    workloads: dict[str, ServerWorkload] = field(default_factory=dict)
    domains: dict[tuple[str, str], DomainForecast] = field(default_factory=dict)
    newest_forecast_at: datetime | None = None
    last_received_at: datetime | None = None
    """When (on the consumer's clock) the latest forecast arrived; guards against producer clock skew."""
    unknown_server_ids: set[str] = field(default_factory=set)
    decision_horizon_s: float = 60.0

    def __post_init__(self) -> None:
        topo = self.topology
        n = topo.num_servers
        self._index = {sid: i for i, sid in enumerate(topo.server_ids)}
        self.has_forecast = np.zeros(n, dtype=np.bool_)
        self.issued_at_s = np.full(n, -np.inf)
        self.slowdown_temp_c = topo.server_array("sku.slowdown_temp_c")
        idle_gpu_w = topo.server_array("sku.idle_w")
        num_gpus = topo.server_array("num_gpus")
        self.idle_server_w = topo.server_array("base_power_w") + num_gpus * idle_gpu_w
        self.design_inlet_c = topo.zone_supply_c[topo.server_zone] + topo.server_array("inlet_offset_c")
        rth = topo.server_array("thermal_resistance_c_per_w")
        # Constant per-server arrays, read once (Topology.server_array loops in Python).
        self.num_gpus: IntArray = num_gpus.astype(np.int64)
        self.tdp_w: FloatArray = topo.server_array("sku.tdp_w")
        self.idle_gpu_w: FloatArray = idle_gpu_w
        self.rth_c_per_w: FloatArray = rth
        self.max_freq_mhz: FloatArray = topo.server_array("sku.max_freq_mhz")
        self.base_power_w: FloatArray = topo.server_array("base_power_w")
        self.gpu_temp_c = hottest_gpu_c(self.design_inlet_c, 0.0, rth, idle_gpu_w)  # no reading yet: no offset
        self.gpu_temp_hi_c = self.slowdown_temp_c.copy()
        self.power_w = self.idle_server_w.copy()
        self.power_hi_w = self.idle_server_w.copy()
        self.inlet_c = self.design_inlet_c.copy()
        self.memory_temp_c = np.full(n, np.nan)
        self.memory_max_temp_c = np.full(n, np.nan)
        self.memory_sampled_at_s = np.full(n, -np.inf)

    def index_of(self, server_id: str) -> int | None:
        """Position of a server in the topology, or None when the topology does not know it."""
        return self._index.get(server_id)

    def add_server_forecast(self, fc: ServerForecast, *, received_at: datetime | None = None) -> bool:
        """Record a server forecast; False (and the id remembered) when the server is not in the topology."""
        i = self._index.get(fc.server_id)
        if i is None:
            self.unknown_server_ids.add(fc.server_id)
            return False
        if received_at is not None and (self.last_received_at is None or received_at > self.last_received_at):
            self.last_received_at = received_at
        issued_s = fc.issued_at.timestamp()
        if issued_s < self.issued_at_s[i]:
            return True  # an older forecast arriving late never overwrites a newer one
        within = [h for h in fc.horizons if h.horizon_s <= self.decision_horizon_s] or [
            min(fc.horizons, key=lambda h: h.horizon_s)]
        self.has_forecast[i] = True
        self.issued_at_s[i] = issued_s
        self.gpu_temp_c[i] = fc.gpu_temp_c
        self.gpu_temp_hi_c[i] = max(max(h.gpu_temp_hi_c for h in within), fc.gpu_temp_c)
        self.power_w[i] = fc.power_w
        self.power_hi_w[i] = max(max(h.power_hi_w for h in within), fc.power_w)
        if fc.inlet_temp_c is not None:
            self.inlet_c[i] = fc.inlet_temp_c
        self.slowdown_temp_c[i] = fc.slowdown_temp_c
        if self.newest_forecast_at is None or fc.issued_at > self.newest_forecast_at:
            self.newest_forecast_at = fc.issued_at
        return True

    def add_domain_forecast(self, fc: DomainForecast) -> None:
        """Record the latest forecast of a row, PDU, rack or zone (a late older one is ignored)."""
        key = (fc.domain_kind, fc.domain_id)
        old = self.domains.get(key)
        if old is None or fc.issued_at >= old.issued_at:
            self.domains[key] = fc

    def add_workload(self, server_id: str, workload: WorkloadContext | None, *, gpu_power_w: float | None,
                     sampled_at: datetime) -> None:
        """Record what the serving layer reports for a server (from a GPU sample)."""
        if server_id not in self._index:
            self.unknown_server_ids.add(server_id)
            return
        if workload is None:
            self.workloads.pop(server_id, None)
            return
        old = self.workloads.get(server_id)
        if old is not None and sampled_at < old.sampled_at:
            return
        since = old.config_since if old is not None and old.workload.config_id == workload.config_id else sampled_at
        self.workloads[server_id] = ServerWorkload(workload, gpu_power_w, sampled_at, since)

    def add_memory_temps(self, server_id: str, gpus: list[GpuReading], *, sampled_at: datetime) -> None:
        """Record a server's tightest HBM (temperature and threshold) from a GPU sample's readings.

        The tightest is the GPU with the least ``memory_max_temp_c - memory_temp_c``, not merely the
        hottest: thresholds differ per device. Where no GPU reports both, the hottest reported HBM is
        kept with an unknown (NaN) threshold, which the core reads as no limit. The arrays are
        preallocated per server, so memory stays bounded whatever arrives; a server outside the
        topology is remembered in ``unknown_server_ids`` and an older sample arriving late is ignored.
        """
        i = self._index.get(server_id)
        if i is None:
            self.unknown_server_ids.add(server_id)
            return
        t_s = sampled_at.timestamp()
        if t_s < self.memory_sampled_at_s[i]:
            return
        self.memory_sampled_at_s[i] = t_s
        both = [(g.memory_max_temp_c - g.memory_temp_c, g.memory_temp_c, g.memory_max_temp_c) for g in gpus
                if g.memory_temp_c is not None and g.memory_max_temp_c is not None]
        if both:
            _, temp, limit = min(both)
            self.memory_temp_c[i], self.memory_max_temp_c[i] = temp, limit
            return
        temps = [g.memory_temp_c for g in gpus if g.memory_temp_c is not None]
        self.memory_temp_c[i] = max(temps) if temps else np.nan
        self.memory_max_temp_c[i] = np.nan

    def forecast_age_s(self, now: datetime) -> float:
        """Seconds since the newest forecast was issued, or since one last arrived if that is longer.

        ``NEVER_S`` before the first. Taking the larger age keeps a stall visible when the
        producer's clock runs ahead of ours (an accelerated simulator, clock skew).
        """
        if self.newest_forecast_at is None:
            return NEVER_S
        age_s = (now - self.newest_forecast_at).total_seconds()
        if self.last_received_at is not None:  # a producer clock running ahead must not hide a stall
            age_s = max(age_s, (now - self.last_received_at).total_seconds())
        return max(0.0, age_s)


def _endpoint_of_config(catalogue: Catalogue) -> dict[str, str]:
    return {o.config_id: ep for ep, opts in catalogue.options.items() for o in opts}


def build_tenants(state: LiveState, catalogue: Catalogue, *, now_s: float,
                  demand_margin_frac: float) -> tuple[SaasInstances, IaasVms, np.ndarray, tuple[str, ...],
                                                      FloatArray, FloatArray]:
    """SaaS instances, IaaS VMs, free GPUs per server and endpoint demand from the workloads."""
    cfg_endpoint = _endpoint_of_config(catalogue)
    free = state.num_gpus.copy()
    inst: dict[str, list[object]] = {k: [] for k in (
        "ids", "eps", "srv", "gpus", "cfg", "load", "pf", "cap", "pw", "since")}
    vm: dict[str, list[object]] = {k: [] for k in ("ids", "srv", "gpus", "pw", "exp")}
    tdp = state.tdp_w
    for sid, sw in sorted(state.workloads.items()):
        i = state._index[sid]
        wl = sw.workload
        n_gpus = int(free[i])
        ids = list(wl.instance_ids)
        per_gpu_w = sw.gpu_power_w if sw.gpu_power_w is not None else float(
            (state.power_w[i] - state.base_power_w[i]) / max(n_gpus, 1))
        endpoint = cfg_endpoint.get(wl.config_id or "")
        if endpoint is not None and wl.config_id is not None:
            ids = ids or [sid]
            k = len(ids)
            total = wl.prefill_tokens_per_s + wl.decode_tokens_per_s
            cap = catalogue.option(wl.config_id).capacity_tokens_per_s_at_slo
            for iid in ids:
                inst["ids"].append(iid)
                inst["eps"].append(endpoint)
                inst["srv"].append(i)
                inst["gpus"].append(max(n_gpus // k, 1))
                inst["cfg"].append(wl.config_id)
                inst["load"].append(total / k)
                inst["pf"].append(wl.prefill_tokens_per_s / total if total > 0 else 0.0)
                inst["cap"].append(cap)
                inst["pw"].append(per_gpu_w)
                inst["since"].append(sw.config_since.timestamp())
            free[i] = 0
        elif ids:
            k = len(ids)
            for vid in ids:
                vm["ids"].append(vid)
                vm["srv"].append(i)
                vm["gpus"].append(max(n_gpus // k, 1))
                vm["pw"].append(per_gpu_w)
                vm["exp"].append(float(tdp[i]))
            free[i] = 0
    f64, i64 = np.float64, np.int64
    n_inst = len(inst["ids"])
    instances = SaasInstances(
        instance_ids=tuple(str(x) for x in inst["ids"]),
        endpoint_ids=tuple(str(x) for x in inst["eps"]),
        server_index=np.asarray(inst["srv"], dtype=i64),
        num_gpus=np.asarray(inst["gpus"], dtype=i64),
        config_ids=tuple(str(x) for x in inst["cfg"]),
        load_tokens_per_s=np.asarray(inst["load"], dtype=f64),
        prefill_frac=np.asarray(inst["pf"], dtype=f64),
        capacity_tokens_per_s_at_slo=np.asarray(inst["cap"], dtype=f64),
        gpu_power_w=np.asarray(inst["pw"], dtype=f64),
        draining=np.zeros(n_inst, dtype=np.bool_),
        config_since_s=np.asarray(inst["since"], dtype=f64),
        busy_until_s=np.full(n_inst, now_s - 1.0),
    )
    vms = IaasVms(
        vm_ids=tuple(str(x) for x in vm["ids"]),
        server_index=np.asarray(vm["srv"], dtype=i64),
        num_gpus=np.asarray(vm["gpus"], dtype=i64),
        gpu_power_w=np.asarray(vm["pw"], dtype=f64),
        expected_gpu_power_w=np.asarray(vm["exp"], dtype=f64),
        power_limit_w=np.full(len(vm["ids"]), np.nan),
    )
    endpoint_ids = tuple(catalogue.endpoint_ids)
    demand = np.zeros(len(endpoint_ids))
    for e, load in zip(instances.endpoint_ids, instances.load_tokens_per_s, strict=True):
        demand[endpoint_ids.index(e)] += load
    return instances, vms, free, endpoint_ids, demand, demand * (1.0 + demand_margin_frac)


def build_snapshot(state: LiveState, catalogue: Catalogue, *, now: datetime,
                   demand_margin_frac: float = 0.10) -> Snapshot:
    """The core's view of the cluster at ``now`` from the latest messages in ``state``.

    Row power and its forecast-high come from the row's DomainForecast when one exists
    (its budget too, when it carries a limit), else from the sum of its servers; zone
    heat is the sum of its servers' power (all electrical power ends up as heat).
    """
    topo = state.topology
    now_s = now.timestamp()
    instances, vms, free, endpoint_ids, demand, demand_hi = build_tenants(
        state, catalogue, now_s=now_s, demand_margin_frac=demand_margin_frac)
    num_rows = len(topo.rows)
    row_power = np.bincount(topo.server_row, weights=state.power_w, minlength=num_rows).astype(np.float64)
    row_power_hi = np.bincount(topo.server_row, weights=state.power_hi_w, minlength=num_rows).astype(np.float64)
    row_budget = topo.row_budget_w.copy()
    for r, row_id in enumerate(topo.row_ids):
        dom = state.domains.get(("row", row_id))
        if dom is None:
            continue
        row_power[r] = dom.power_w
        row_power_hi[r] = max([dom.power_w, *dom.power_forecast_hi_w, row_power_hi[r]])
        if dom.power_limit_w is not None and dom.power_limit_w > 0:
            row_budget[r] = dom.power_limit_w
    num_zones = len(topo.zones)
    zone_heat = np.bincount(topo.server_zone, weights=state.power_w, minlength=num_zones).astype(np.float64)
    zone_heat_hi = np.bincount(topo.server_zone, weights=state.power_hi_w, minlength=num_zones).astype(np.float64)
    return Snapshot(
        now_s=now_s,
        forecast_age_s=state.forecast_age_s(now),
        horizon_s=state.decision_horizon_s,
        server_ids=topo.server_ids,
        server_row=topo.server_row,
        server_rack=topo.server_rack,
        server_zone=topo.server_zone,
        server_pdu=topo.server_pdu,
        num_gpus=state.num_gpus.copy(),
        free_gpus=free,
        gpu_tdp_w=state.tdp_w.copy(),
        gpu_idle_power_w=state.idle_gpu_w.copy(),
        slowdown_temp_c=state.slowdown_temp_c.copy(),
        gpu_temp_c=state.gpu_temp_c.copy(),
        gpu_temp_hi_c=state.gpu_temp_hi_c.copy(),
        inlet_c=state.inlet_c.copy(),
        inlet_hi_c=state.inlet_c.copy(),
        server_power_w=state.power_w.copy(),
        server_power_hi_w=state.power_hi_w.copy(),
        server_idle_power_w=state.idle_server_w.copy(),
        thermal_resistance_c_per_w=state.rth_c_per_w.copy(),
        row_ids=topo.row_ids,
        row_budget_w=row_budget,
        row_power_w=row_power,
        row_power_hi_w=row_power_hi,
        zone_ids=topo.zone_ids,
        zone_capacity_w=topo.zone_capacity_w.copy(),
        zone_heat_w=zone_heat,
        zone_heat_hi_w=zone_heat_hi,
        instances=instances,
        vms=vms,
        endpoint_ids=endpoint_ids,
        endpoint_demand_tokens_per_s=demand,
        endpoint_demand_hi_tokens_per_s=demand_hi,
        gpu_max_freq_mhz=state.max_freq_mhz.copy(),
        memory_temp_c=state.memory_temp_c.copy(),
        memory_max_temp_c=state.memory_max_temp_c.copy(),
    )

