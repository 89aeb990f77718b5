"""The simulator's view of the policy registry: re-exported from ``controller.core.policy``, where it lives.

Kept so ``simulator.policies.POLICIES`` / ``make_policy`` keep working; there is no second
definition of any policy here.
"""

from __future__ import annotations

from controller.core.policy import POLICIES, BaselinePolicy, make_policy

__all__ = ["POLICIES", "BaselinePolicy", "make_policy"]
