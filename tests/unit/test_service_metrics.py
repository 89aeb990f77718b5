"""Prometheus gauges: base units, tapas_ prefix, only tapas_endpoint/tapas_instance labels, departed instances removed."""

from __future__ import annotations

import numpy as np

from controller.core.snapshot import RoutingDecision
from controller.metrics import INSTANCE_LABELS, ControllerMetrics


def decision(ids: tuple[str, ...], weights: list[float]) -> RoutingDecision:
    n = len(ids)
    return RoutingDecision(endpoint_id="ep", instance_ids=ids, instance_index=np.arange(n),
                           weights=np.asarray(weights), long_prompt_weights=np.asarray(weights),
                           draining=np.asarray([w == 0 for w in weights]), thermal_headroom_c=np.linspace(2, 9, n),
                           power_headroom_w=np.full(n, 1500.0), capacity_tokens_per_s=np.full(n, 1000.0),
                           reason="r")


def test_gauges_follow_decisions_and_drop_departed_instances() -> None:
    m = ControllerMetrics()
    get = m.registry.get_sample_value
    m.observe_routing(decision(("a", "b", "c"), [0.5, 0.5, 0.0]))
    assert get("tapas_routing_weight", {"tapas_endpoint": "ep", "tapas_instance": "a"}) == 0.5
    assert get("tapas_instance_draining", {"tapas_endpoint": "ep", "tapas_instance": "c"}) == 1.0
    assert get("tapas_endpoint_thermal_headroom_celsius", {"tapas_endpoint": "ep"}) == 2.0  # min over active a, b
    assert get("tapas_endpoint_capacity_tokens_per_second", {"tapas_endpoint": "ep"}) == 3000.0
    m.observe_routing(decision(("a", "b"), [0.25, 0.75]))
    assert get("tapas_routing_weight", {"tapas_endpoint": "ep", "tapas_instance": "c"}) is None
    assert get("tapas_routing_weight", {"tapas_endpoint": "ep", "tapas_instance": "b"}) == 0.75


def test_every_series_is_prefixed_and_low_cardinality() -> None:
    m = ControllerMetrics()
    m.observe_routing(decision(("a",), [1.0]))
    m.commands.labels("set_frequency_cap").inc()
    for family in m.registry.collect():
        assert family.name.startswith("tapas_")
        for sample in family.samples:
            assert set(sample.labels) <= {*INSTANCE_LABELS, "action", "feasible", "step"}, sample
