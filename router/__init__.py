"""Router adapters: what consumes ``tapas.routing.weights`` and makes a real router follow it.

Holds the pure rules that turn weights into a router's settings (:mod:`router.weights`,
stale weights fail safe to equal weights), the HAProxy runtime API client
(:mod:`router.haproxy`), the Kafka feed of the latest weights (:mod:`router.feed`) and
the two services (:mod:`router.service`): the HAProxy adapter and the per-endpoint
sidecar exporter for endpoint pickers that scrape each pod (llm-d, Gateway API
Inference Extension). Holds no decisions: the weights come from the controller.
"""
