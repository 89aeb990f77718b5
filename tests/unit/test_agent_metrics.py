"""The agent's safe-cap gauge follows its broker state (what the TapasAgentSafeCap alert watches)."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.agent import DryRunGpuControl, NodeAgent
from controller.agent_metrics import agent_registry
from foundation.settings import ControllerSettings


def _values(registry: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_safe_cap_gauge_follows_broker_state() -> None:
    agent = NodeAgent("gpu-node-07", DryRunGpuControl(num_gpus=2), ControllerSettings())
    registry = agent_registry(agent)
    key = ("tapas_agent_safe_cap_active", (("tapas_server", "gpu-node-07"),))
    assert _values(registry)[key] == 0.0
    now = datetime(2026, 1, 1, tzinfo=UTC)
    agent.broker_lost(now)
    assert _values(registry)[key] == 1.0
    assert _values(registry)[("tapas_agent_commands_applied_total", (("tapas_server", "gpu-node-07"),))] == 0.0
    agent.broker_back(now)
    assert _values(registry)[key] == 0.0
