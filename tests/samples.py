"""One valid example of every contract message (shared by unit and integration tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts import (
    CommandStatus,
    Contract,
    ControlEvent,
    ControllerMode,
    DeadLetter,
    DomainForecast,
    GpuReading,
    GpuSample,
    HorizonForecast,
    InletSample,
    InstanceWeight,
    ModelAnnouncement,
    PduPowerSample,
    PlacementCandidate,
    PlacementHint,
    PlacementRequest,
    ReconfigCommand,
    ReconfigParams,
    RoutingWeights,
    ServerForecast,
    WorkloadContext,
)

T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)


def example_messages() -> list[Contract]:
    hz = HorizonForecast(horizon_s=60, gpu_temp_c=70, gpu_temp_lo_c=68, gpu_temp_hi_c=72,
                         power_w=5000, power_lo_w=4800, power_hi_w=5200)
    return [
        GpuSample(server_id="s1", sampled_at=T0, source="sim",
                  gpus=[GpuReading(gpu_index=i, gpu_temp_c=60 + i, power_usage_w=300, sm_clock_mhz=1410,
                                   gpu_util_pct=80, clocks_event_reasons=0, slowdown_temp_c=87) for i in range(8)],
                  workload=WorkloadContext(prefill_tokens_per_s=2000, decode_tokens_per_s=800, batch_size=16,
                                           config_id="llama2-70b-tp8-fp16-1410")),
        InletSample(server_id="s1", sampled_at=T0, inlet_temp_c=24.5, chassis_power_w=4200),
        PduPowerSample(pdu_id="pdu-r1-a", sampled_at=T0, power_w=21000, current_a=90, server_ids=["s1"]),
        ServerForecast(server_id="s1", issued_at=T0, based_on_sample_at=T0, model_version="thermal-v1",
                       gpu_temp_c=68, power_w=4900, inlet_temp_c=24.5, slowdown_temp_c=87,
                       thermal_headroom_c=15, power_headroom_w=800, horizons=[hz], row_id="r1"),
        DomainForecast(domain_kind="row", domain_id="r1", issued_at=T0, num_servers=10, power_w=50000,
                       power_limit_w=60000, horizons_s=[60], power_forecast_w=[51000], power_forecast_hi_w=[53000]),
        PlacementRequest(request_id="req-1", requested_at=T0, vm_kind="iaas", num_gpus=8),
        PlacementHint(request_id="req-1", issued_at=T0, feasible=True, reason="coolest feasible",
                      candidates=[PlacementCandidate(server_id="s1", rank=1, score=0.4,
                                                     predicted_peak_gpu_temp_c=75, thermal_headroom_c=12,
                                                     row_power_headroom_w=9000, zone_heat_headroom_w=20000,
                                                     free_gpus=8)]),
        RoutingWeights(endpoint_id="llama2-70b", issued_at=T0, valid_until=T0 + timedelta(seconds=5),
                       weights=[InstanceWeight(instance_id="i1", weight=0.25),
                                InstanceWeight(instance_id="i2", weight=0.75)]),
        ReconfigCommand(command_id="cmd-00000001", issued_at=T0, expires_at=T0 + timedelta(minutes=2),
                        server_id="s1", action="set_frequency_cap",
                        params=ReconfigParams(frequency_cap_mhz=1200), reason="thermal headroom 1.5 C",
                        trigger="thermal", headroom=1.5),
        CommandStatus(command_id="cmd-00000001", server_id="s1", reported_at=T0, status="dry_run"),
        ControlEvent(event_id="ev-1", event_kind="power_emergency", severity="critical", occurred_at=T0,
                     domain_kind="row", domain_id="r1", budget_frac=0.75),
        ControllerMode(mode="enforce", changed_at=T0),
        ModelAnnouncement(model_name="thermal", version="v2", promoted_at=T0, artifact_path="thermal/v2/model.json",
                          sha256="0" * 64),
        DeadLetter(source_topic="tapas.telemetry.gpu", received_at=T0, field="gpus.0.gpu_temp_c",
                   reason="out of range", raw_b64="e30="),
    ]
