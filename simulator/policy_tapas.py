"""Re-export of the TAPAS policy family, which lives in ``controller.core.policy`` (shared with the live service)."""

from __future__ import annotations

from controller.core.policy import PolicyKnobs, TapasKnobs, TapasPolicy

__all__ = ["PolicyKnobs", "TapasKnobs", "TapasPolicy"]
