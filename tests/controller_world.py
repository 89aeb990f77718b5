"""A small live-controller world for tests: topology, catalogue and the messages a cluster sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts import GpuReading, GpuSample, HorizonForecast, ServerForecast, WorkloadContext
from controller.core.catalogue import Catalogue, ConfigOption
from foundation.topology import Topology, default_topology

T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)
ENDPOINT = "chat-70b"
DEFAULT_CONFIG = "70b-tp8-fp16-1410"


def world_topology(num_servers: int = 8) -> Topology:
    return default_topology(num_servers, oversubscription=1.5)


def world_catalogue() -> Catalogue:
    """One endpoint, three frequency caps of the same layout, plus a slower smaller-batch option."""
    opts = []
    for freq, cap in ((1410.0, 12000.0), (1200.0, 10500.0), (1000.0, 9000.0)):
        scale = freq / 1410.0
        opts.append(ConfigOption(f"70b-tp8-fp16-{freq:.0f}", "llama2-70b", 8, "fp16", freq, 64,
                                 capacity_tokens_per_s_at_slo=cap, gpu_idle_w=60.0, gpu_max_w=400.0,
                                 prefill_w_per_token_s=0.03 * scale, decode_w_per_token_s=0.06 * scale,
                                 quality_score=0.689))
    return Catalogue.from_options({ENDPOINT: opts}, {ENDPOINT: DEFAULT_CONFIG})


def forecast(server_id: str, at: datetime, *, temp_c: float = 60.0, hi_c: float = 64.0, power_w: float = 3000.0,
             slowdown_c: float = 87.0, inlet_c: float = 24.0) -> ServerForecast:
    hz = [HorizonForecast(horizon_s=h, gpu_temp_c=temp_c, gpu_temp_lo_c=temp_c - 2, gpu_temp_hi_c=max(hi_c, temp_c),
                          power_w=power_w, power_lo_w=power_w * 0.95, power_hi_w=power_w * 1.05)
          for h in (10.0, 60.0, 300.0)]
    return ServerForecast(server_id=server_id, issued_at=at, based_on_sample_at=at - timedelta(seconds=1),
                          model_version="test", gpu_temp_c=temp_c, power_w=power_w, inlet_temp_c=inlet_c,
                          slowdown_temp_c=slowdown_c, thermal_headroom_c=slowdown_c - hi_c, power_headroom_w=1000.0,
                          horizons=hz)


def gpu_sample(server_id: str, at: datetime, *, config_id: str | None = DEFAULT_CONFIG,
               tokens_per_s: float = 6000.0, instances: list[str] | None = None) -> GpuSample:
    workload = None
    if config_id is not None or instances:
        workload = WorkloadContext(prefill_tokens_per_s=tokens_per_s * 0.3, decode_tokens_per_s=tokens_per_s * 0.7,
                                   batch_size=16, config_id=config_id,
                                   instance_ids=instances if instances is not None else [f"{server_id}-i0"])
    return GpuSample(server_id=server_id, sampled_at=at, source="sim", workload=workload,
                     gpus=[GpuReading(gpu_index=i, gpu_temp_c=60, power_usage_w=250) for i in range(8)])
