"""The node agent's Prometheus gauges, read from its state at scrape time (``agent_metrics_port``).

``tapas_agent_safe_cap_active`` is what the ``TapasAgentSafeCap`` alert watches: 1 while the
agent has lost the broker and holds every GPU at the safe power cap. The ``tapas_server``
label (the node name on Kubernetes) survives scraping, unlike ``instance``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class NodeAgent(Protocol):
    """What the collector reads of :class:`controller.agent.NodeAgent` (a Protocol, so this module does not
    import the agent, which imports it: no circle)."""

    server_id: str
    safe_mode: bool
    num_applied: int

    @property
    def active(self) -> Sized: ...


class AgentCollector(Collector):
    """Exports one agent's safe-cap state, live commands and applied count."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        a, lab = self.agent, [self.agent.server_id]
        safe = GaugeMetricFamily("tapas_agent_safe_cap_active", "1 while the agent holds the safe power cap "
                                 "(broker unreachable for agent_broker_lost_after_s).", labels=["tapas_server"])
        safe.add_metric(lab, 1.0 if a.safe_mode else 0.0)
        live = GaugeMetricFamily("tapas_agent_active_commands", "Host commands in force on this server.",
                                 labels=["tapas_server"])
        live.add_metric(lab, float(len(a.active)))
        applied = CounterMetricFamily("tapas_agent_commands_applied", "Host commands applied (or dry-run recorded).",
                                      labels=["tapas_server"])
        applied.add_metric(lab, float(a.num_applied))
        yield from (safe, live, applied)


def agent_registry(agent: NodeAgent) -> CollectorRegistry:
    """A registry holding only the agent's collector."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    return registry


def serve_agent_metrics(agent: NodeAgent, port: int, addr: str) -> object:
    """Serve the agent's metrics on ``addr:port``; returns the server (``.shutdown()`` stops it)."""
    server, _thread = start_http_server(port, addr=addr, registry=agent_registry(agent))
    return server
