"""Synthetic snapshots and catalogues for tests and benchmarks of the decision core.

Plausible but invented numbers (H100-class 8-GPU servers, a Llama-2-70B-like endpoint);
the simulator builds its real catalogue from measured performance data instead.
"""

from __future__ import annotations

import numpy as np

from controller.core.catalogue import Catalogue, ConfigOption
from controller.core.snapshot import IaasVms, SaasInstances, Snapshot

FREQS_MHZ = (1980.0, 1755.0, 1530.0, 1305.0, 1080.0)
"""Frequency caps of the synthetic catalogue (H100 SXM range)."""


def synthetic_catalogue(endpoint_ids: tuple[str, ...] = ("ep0",)) -> Catalogue:
    """A catalogue with two weight layouts (70B fp16 TP8, 70B fp8 TP8) × five frequency caps × two batch sizes."""
    per: dict[str, list[ConfigOption]] = {}
    defaults: dict[str, str] = {}
    for e in endpoint_ids:
        opts: list[ConfigOption] = []
        for precision, quality, speed, w_scale, switch_s in (("fp16", 0.689, 1.0, 1.0, 0.0), ("fp8", 0.680, 1.5, 0.8, 90.0)):
            for f in FREQS_MHZ:
                fr = f / FREQS_MHZ[0]
                for batch, bscale in ((64, 1.0), (32, 0.8)):
                    cap = 12000.0 * speed * (0.25 + 0.75 * fr) * bscale
                    dyn = 610.0 * w_scale * fr**2.5 * (0.9 + 0.1 * bscale)
                    opts.append(
                        ConfigOption(
                            config_id=f"{e}-70b-tp8-{precision}-{int(f)}-b{batch}",
                            model_variant="llama2-70b",
                            tensor_parallelism=8,
                            precision=precision,
                            frequency_cap_mhz=f,
                            max_batch=batch,
                            capacity_tokens_per_s_at_slo=cap,
                            gpu_idle_w=90.0,
                            gpu_max_w=90.0 + dyn,
                            prefill_w_per_token_s=dyn * 0.6 / cap,
                            decode_w_per_token_s=dyn * 1.1 / cap,
                            quality_score=quality,
                            switch_cost_s=switch_s,
                            slow_knob=precision != "fp16",
                        )
                    )
        per[e] = opts
        defaults[e] = opts[0].config_id
    return Catalogue.from_options(per, defaults)


def synthetic_snapshot(
    rng: np.random.Generator,
    *,
    num_servers: int = 64,
    num_instances: int = 32,
    num_vms: int = 16,
    endpoint_ids: tuple[str, ...] = ("ep0",),
    servers_per_row: int = 16,
    oversubscription: float = 1.3,
    now_s: float = 0.0,
    forecast_age_s: float = 1.0,
    load_frac: float = 0.6,
) -> Snapshot:
    """A random but self-consistent cluster: instances and VMs on distinct servers, powers and temps from a linear model."""
    s = num_servers
    num_rows = max(1, -(-s // servers_per_row))
    row = np.arange(s) // servers_per_row
    zone = row // 2
    num_zones = int(zone.max()) + 1
    gpus = np.full(s, 8, dtype=np.int64)
    tdp = np.full(s, 700.0)
    idle_gpu = np.full(s, 90.0)
    base = np.full(s, 1500.0)
    r_th = rng.uniform(0.055, 0.075, s)
    inlet = rng.uniform(20.0, 30.0, s)
    inlet_hi = inlet + rng.uniform(0.5, 2.0, s)
    slowdown = np.full(s, 87.0)
    cat = synthetic_catalogue(endpoint_ids)

    order = rng.permutation(s)
    ni = min(num_instances, s)
    nv = min(num_vms, s - ni)
    inst_srv = order[:ni].astype(np.int64)
    vm_srv = order[ni : ni + nv].astype(np.int64)
    gpu_power = idle_gpu.copy()
    free = gpus.copy()

    eps = tuple(endpoint_ids[i % len(endpoint_ids)] for i in range(ni))
    cfg = tuple(cat.defaults[e] for e in eps)
    cap = np.asarray([cat.option(c).capacity_tokens_per_s_at_slo for c in cfg])
    load = cap * load_frac * rng.uniform(0.6, 1.2, ni)
    pf = rng.uniform(0.2, 0.8, ni)
    ipower = np.asarray(
        [cat.option(c).gpu_power_w(load[i] * pf[i], load[i] * (1 - pf[i])) for i, c in enumerate(cfg)]
    )
    gpu_power[inst_srv] = ipower
    free[inst_srv] = 0
    vpower = rng.uniform(250.0, 650.0, nv)
    gpu_power[vm_srv] = vpower
    free[vm_srv] = 0

    temp = inlet + r_th * gpu_power
    temp_hi = inlet_hi + r_th * gpu_power * 1.05
    server_power = base + gpus * gpu_power
    server_idle = base + gpus * idle_gpu
    row_power = np.bincount(row, weights=server_power, minlength=num_rows).astype(np.float64)
    nameplate = np.bincount(row, weights=base + gpus * tdp, minlength=num_rows)
    budget = nameplate / oversubscription
    zone_heat = np.bincount(zone, weights=server_power, minlength=num_zones).astype(np.float64)
    zone_cap = np.bincount(zone, weights=base + gpus * tdp, minlength=num_zones) / 1.2

    demand = np.asarray([load[[i for i in range(ni) if eps[i] == e]].sum() for e in endpoint_ids])
    instances = SaasInstances(
        instance_ids=tuple(f"inst-{i}" for i in range(ni)),
        endpoint_ids=eps,
        server_index=inst_srv,
        num_gpus=np.full(ni, 8, dtype=np.int64),
        config_ids=cfg,
        load_tokens_per_s=load,
        prefill_frac=pf,
        capacity_tokens_per_s_at_slo=cap,
        gpu_power_w=ipower,
        draining=np.zeros(ni, dtype=np.bool_),
        config_since_s=np.full(ni, now_s - 1000.0),
        busy_until_s=np.full(ni, now_s - 1.0),
    )
    vms = IaasVms(
        vm_ids=tuple(f"vm-{i}" for i in range(nv)),
        server_index=vm_srv,
        num_gpus=np.full(nv, 8, dtype=np.int64),
        gpu_power_w=vpower,
        expected_gpu_power_w=np.minimum(vpower * 1.1, 700.0),
        power_limit_w=np.full(nv, np.nan),
    )
    return Snapshot(
        now_s=now_s,
        forecast_age_s=forecast_age_s,
        horizon_s=60.0,
        server_ids=tuple(f"srv-{i:05d}" for i in range(s)),
        server_row=row.astype(np.int64),
        server_rack=(np.arange(s) // 8).astype(np.int64),
        server_zone=zone.astype(np.int64),
        server_pdu=row.astype(np.int64),
        num_gpus=gpus,
        free_gpus=free,
        gpu_tdp_w=tdp,
        gpu_idle_power_w=idle_gpu,
        slowdown_temp_c=slowdown,
        gpu_temp_c=temp,
        gpu_temp_hi_c=temp_hi,
        inlet_c=inlet,
        inlet_hi_c=inlet_hi,
        server_power_w=server_power,
        server_power_hi_w=server_power * 1.03,
        server_idle_power_w=server_idle,
        thermal_resistance_c_per_w=r_th,
        row_ids=tuple(f"row-{i}" for i in range(num_rows)),
        row_budget_w=budget,
        row_power_w=row_power,
        row_power_hi_w=(row_power * 1.03).astype(np.float64),
        zone_ids=tuple(f"zone-{i}" for i in range(num_zones)),
        zone_capacity_w=zone_cap,
        zone_heat_w=zone_heat,
        zone_heat_hi_w=(zone_heat * 1.03).astype(np.float64),
        instances=instances,
        vms=vms,
        endpoint_ids=endpoint_ids,
        endpoint_demand_tokens_per_s=demand,
        endpoint_demand_hi_tokens_per_s=demand * 1.1,
    )
