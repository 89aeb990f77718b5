"""Wire contracts: every message type, the topic table, the error family, JSON Schema export.

Holds no logic beyond validation; every other package imports its messages from here,
and it imports no other TAPAS package (the bottom of the house).
"""

from contracts.errors import ConfigError, ContractError, SafetyViolation, SourceError, StoreError, TapasError
from contracts.messages import (
    ALL_MESSAGES,
    SCHEMA_VERSION,
    ClockEventReason,
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
    PduPhaseReading,
    PduPowerSample,
    PlacementCandidate,
    PlacementHint,
    PlacementRequest,
    ReconfigCommand,
    ReconfigParams,
    RoutingWeights,
    ServerForecast,
    WorkloadContext,
    decode,
    validate_obj,
)
from contracts.topics import TOPICS, TopicSpec, topic_for

__all__ = [
    "ALL_MESSAGES", "SCHEMA_VERSION", "TOPICS", "ClockEventReason", "CommandStatus", "ConfigError", "Contract",
    "ContractError", "ControlEvent", "ControllerMode", "DeadLetter", "DomainForecast", "GpuReading", "GpuSample",
    "HorizonForecast", "InletSample", "InstanceWeight", "ModelAnnouncement", "PduPhaseReading", "PduPowerSample",
    "PlacementCandidate", "PlacementHint", "PlacementRequest", "ReconfigCommand", "ReconfigParams",
    "RoutingWeights", "SafetyViolation", "ServerForecast", "SourceError", "StoreError", "TapasError", "TopicSpec",
    "WorkloadContext", "decode", "topic_for", "validate_obj",
]
