"""Prometheus gauges the controller exposes, so existing load-aware routers can score on them.

Routers such as the Gateway API Inference Extension or llm-d scrape per-endpoint and
per-instance gauges; these follow the Prometheus naming guide (``tapas_`` prefix, base
units: celsius, watts, seconds, tokens per second) and carry only the ``tapas_endpoint``
and ``tapas_instance`` labels, whose cardinality is that of the deployment (never per
request or per command).

Why not ``endpoint`` and ``instance``: Prometheus sets ``instance`` (and the Prometheus
Operator ``endpoint``) on every scraped series itself, so it renames a target's own
labels of those names to ``exported_instance`` / ``exported_endpoint`` (or overwrites them
with ``honor_labels``); a router querying ``tapas_routing_weight{instance="..."}`` would
then match the scrape target, not the inference instance. Every exporter of these
gauges (this one, a per-endpoint sidecar) takes the names from :data:`INSTANCE_LABELS`.

Every gauge lives in the :class:`ControllerMetrics` object's own registry, so tests
and several controllers in one process never collide; ``serve`` exposes it over HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from controller.core.snapshot import RoutingDecision

#: Label naming the endpoint (model deployment) a series belongs to.
ENDPOINT_LABEL = "tapas_endpoint"
#: Label naming the inference instance a series belongs to.
INSTANCE_LABEL = "tapas_instance"
#: Labels of every per-instance gauge, in this order; per-endpoint gauges carry ``(ENDPOINT_LABEL,)``.
INSTANCE_LABELS = (ENDPOINT_LABEL, INSTANCE_LABEL)
ENDPOINT_LABELS = (ENDPOINT_LABEL,)


class ControllerMetrics:
    """The controller's gauges and counters in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.routing_weight = Gauge("tapas_routing_weight", "Share of the endpoint's requests routed to the instance (0-1).",
                                    INSTANCE_LABELS, registry=r)
        self.long_prompt_weight = Gauge("tapas_long_prompt_routing_weight",
                                        "Share of prefill-heavy (long-prompt) requests routed to the instance (0-1).",
                                        INSTANCE_LABELS, registry=r)
        self.thermal_headroom = Gauge("tapas_thermal_headroom_celsius",
                                      "Slowdown temperature minus forecast-high hottest-GPU temperature of the instance.",
                                      INSTANCE_LABELS, registry=r)
        self.power_headroom = Gauge("tapas_power_headroom_watts",
                                    "Row power budget minus forecast-high row power, for the instance's row.",
                                    INSTANCE_LABELS, registry=r)
        self.capacity = Gauge("tapas_instance_capacity_tokens_per_second",
                              "Tokens/s the instance serves within its SLO in its current configuration.",
                              INSTANCE_LABELS, registry=r)
        self.draining = Gauge("tapas_instance_draining", "1 while the instance is drained (weight 0).",
                              INSTANCE_LABELS, registry=r)
        self.endpoint_thermal_headroom = Gauge("tapas_endpoint_thermal_headroom_celsius",
                                               "Smallest thermal headroom among the endpoint's active instances.",
                                               ENDPOINT_LABELS, registry=r)
        self.endpoint_power_headroom = Gauge("tapas_endpoint_power_headroom_watts",
                                             "Smallest row power headroom among the endpoint's active instances.",
                                             ENDPOINT_LABELS, registry=r)
        self.endpoint_capacity = Gauge("tapas_endpoint_capacity_tokens_per_second",
                                       "Sum of the endpoint's instance capacities at SLO.", ENDPOINT_LABELS, registry=r)
        self.mode_enforce = Gauge("tapas_controller_enforce", "1 in enforce mode, 0 in advisory mode.", registry=r)
        self.forecast_age = Gauge("tapas_controller_forecast_age_seconds", "Age of the newest forecast.", registry=r)
        self.stale = Gauge("tapas_controller_forecasts_stale", "1 while forecasts are stale (safe fallback).",
                           registry=r)
        self.commands = Counter("tapas_controller_commands_total", "Reconfiguration commands published.",
                                ("action",), registry=r)
        self.refused = Counter("tapas_controller_commands_refused_total",
                               "Commands refused by the safety bounds.", registry=r)
        self.not_applied = Counter("tapas_controller_enforce_commands_not_applied_total",
                                   "Enforce commands an agent reported dry_run or failed: the cap does not hold.",
                                   ("status",), registry=r)
        self.placements = Counter("tapas_controller_placement_requests_total", "Placement requests answered.",
                                  ("feasible",), registry=r)
        self.decision_errors = Counter("tapas_controller_decision_errors_total",
                                       "Decision steps that raised (logged; the service kept running).",
                                       ("step",), registry=r)
        self.unknown_forecasts = Counter("tapas_controller_unknown_server_forecasts_total",
                                         "Forecasts for servers not in the inventory (ignored; one "
                                         "unknown_server event per server).", registry=r)
        self.tick_seconds = Gauge("tapas_controller_tick_duration_seconds", "Wall time of the last decision tick.",
                                  registry=r)
        self._instances: dict[str, set[str]] = {}

    def observe_routing(self, decision: RoutingDecision) -> None:
        """Publish one endpoint's weights and headrooms; drop series of instances that left it."""
        ep = decision.endpoint_id
        now = set(decision.instance_ids)
        for gone in self._instances.get(ep, set()) - now:
            for g in (self.routing_weight, self.long_prompt_weight, self.thermal_headroom, self.power_headroom,
                      self.capacity, self.draining):
                g.remove(ep, gone)
        self._instances[ep] = now
        for j, iid in enumerate(decision.instance_ids):
            self.routing_weight.labels(ep, iid).set(float(decision.weights[j]))
            self.long_prompt_weight.labels(ep, iid).set(float(decision.long_prompt_weights[j]))
            self.thermal_headroom.labels(ep, iid).set(float(decision.thermal_headroom_c[j]))
            self.power_headroom.labels(ep, iid).set(float(decision.power_headroom_w[j]))
            self.capacity.labels(ep, iid).set(float(decision.capacity_tokens_per_s[j]))
            self.draining.labels(ep, iid).set(1.0 if decision.draining[j] else 0.0)
        active = [j for j in range(len(decision.instance_ids)) if not decision.draining[j]] or list(
            range(len(decision.instance_ids)))
        self.endpoint_thermal_headroom.labels(ep).set(_min(float(decision.thermal_headroom_c[j]) for j in active))
        self.endpoint_power_headroom.labels(ep).set(_min(float(decision.power_headroom_w[j]) for j in active))
        self.endpoint_capacity.labels(ep).set(float(decision.capacity_tokens_per_s.sum()))

    def serve(self, port: int, addr: str = "127.0.0.1") -> object:
        """Expose the registry over HTTP on ``addr:port``; returns the server (``.shutdown()`` stops it)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server


def _min(values: Iterable[float]) -> float:
    vals = list(values)
    return min(vals) if vals else math.nan
