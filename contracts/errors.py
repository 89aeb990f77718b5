"""The one exception family of TAPAS.

Every error the project raises on purpose derives from :class:`TapasError`, so a
caller can catch the family at a boundary and let programming errors through::

    TapasError
    ├── ContractError     a message failed validation (names the field)
    ├── ConfigError       settings or a cluster file are wrong (names the key)
    ├── SourceError       a collector could not read its device (names the source)
    ├── StoreError        the history store refused or could not be reached
    └── SafetyViolation   a command falls outside the configured safety bounds
"""

from __future__ import annotations


class TapasError(Exception):
    """Base of every deliberate TAPAS error."""


class ContractError(TapasError):
    """A message does not satisfy its contract.

    Attributes:
        field: dotted path of the first offending field ("" when the whole payload is bad).
        reason: human readable reason, suitable for a dead-letter record.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field or '<payload>'}: {reason}")


class ConfigError(TapasError):
    """Settings, a cluster file or a CLI option is invalid."""


class SourceError(TapasError):
    """A telemetry source (NVML, Redfish BMC, SNMP PDU, replay file) failed."""


class StoreError(TapasError):
    """The history store failed to read or write."""


class SafetyViolation(TapasError):
    """A command or hint is outside the configured safety bounds and was refused."""
