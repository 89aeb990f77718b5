"""TAPAS client for downstream schedulers (VM allocators, inference routers, power managers).

Holds the wire contracts (the platform's own ``contracts`` package, shipped in this
wheel), the topic table, typed watchers of ``tapas.forecasts.server`` and
``tapas.routing.weights`` (kafka-python) and a client of the controller's HTTP
placement API. Holds nothing of the platform itself: no Dash, Faust, statsmodels or
broker binary.
"""

from contracts import (
    TOPICS,
    ContractError,
    PlacementHint,
    PlacementRequest,
    RoutingWeights,
    ServerForecast,
    TopicSpec,
    decode,
    topic_for,
)
from tapas_client.placement import PlacementClient, PlacementError
from tapas_client.watch import Watcher, watch_forecasts, watch_weights

__all__ = ["TOPICS", "ContractError", "PlacementClient", "PlacementError", "PlacementHint", "PlacementRequest",
           "RoutingWeights", "ServerForecast", "TopicSpec", "Watcher", "decode", "topic_for", "watch_forecasts",
           "watch_weights"]
