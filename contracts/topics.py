"""The topic table: every Kafka topic TAPAS uses, its message, key and partitions.

This table is the single source for topic creation (``tapas broker``), for the
README's topic table and for who-produces/who-consumes documentation.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.messages import (
    CommandStatus,
    Contract,
    ControlEvent,
    ControllerMode,
    DeadLetter,
    DomainForecast,
    GpuSample,
    InletSample,
    ModelAnnouncement,
    PduPowerSample,
    PlacementHint,
    PlacementRequest,
    ReconfigCommand,
    RoutingWeights,
    ServerForecast,
)


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name, the contract it carries and how it is keyed."""

    name: str
    message: type[Contract]
    key: str
    partitions: int
    producers: str
    consumers: str
    compacted: bool = False


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("tapas.telemetry.gpu", GpuSample, "server_id", 8, "ingest (nvml, sim, replay)", "streams worker"),
    TopicSpec("tapas.telemetry.inlet", InletSample, "server_id", 8, "ingest (redfish, sim, replay)", "streams worker"),
    TopicSpec("tapas.telemetry.pdu", PduPowerSample, "pdu_id", 4, "ingest (snmp, sim, replay)", "streams worker"),
    TopicSpec("tapas.forecasts.server", ServerForecast, "server_id", 8, "streams worker",
              "controller, dashboard, downstream schedulers"),
    TopicSpec("tapas.forecasts.domain", DomainForecast, "domain_id", 4, "streams worker",
              "controller, dashboard, power manager"),
    TopicSpec("tapas.placement.requests", PlacementRequest, "request_id", 4, "VM allocator", "controller"),
    TopicSpec("tapas.placement.hints", PlacementHint, "request_id", 4, "controller", "VM allocator, dashboard"),
    TopicSpec("tapas.routing.weights", RoutingWeights, "endpoint_id", 4, "controller",
              "inference router, dashboard", compacted=True),
    TopicSpec("tapas.control.commands", ReconfigCommand, "server_id", 8, "controller",
              "tapas agent, serving layer, dashboard"),
    TopicSpec("tapas.control.status", CommandStatus, "server_id", 4, "tapas agent", "controller, dashboard"),
    TopicSpec("tapas.control.mode", ControllerMode, "mode", 1, "operator (tapas controller mode)", "controller",
              compacted=True),
    TopicSpec("tapas.events", ControlEvent, "domain_id", 4, "controller, simulator, operators",
              "controller, dashboard"),
    TopicSpec("tapas.models", ModelAnnouncement, "model_name", 1, "tapas models promote", "streams worker",
              compacted=True),
    TopicSpec("tapas.deadletter", DeadLetter, "original key", 4, "every consumer", "operators"),
)

TOPIC_BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPICS}
TOPIC_BY_MESSAGE: dict[type[Contract], TopicSpec] = {t.message: t for t in TOPICS}


def topic_for(message: type[Contract]) -> str:
    """Name of the topic carrying ``message``."""
    return TOPIC_BY_MESSAGE[message].name


def markdown_table() -> str:
    """The README's topic table, generated so it cannot drift from the code."""
    lines = [
        "| topic | message | key | partitions | produced by | consumed by |",
        "|---|---|---|---|---|---|",
    ]
    for t in TOPICS:
        lines.append(
            f"| `{t.name}` | [`{t.message.message_name}`](docs/contracts/{t.message.message_name}.json) "
            f"| `{t.key}` | {t.partitions} | {t.producers} | {t.consumers} |"
        )
    return "\n".join(lines)
