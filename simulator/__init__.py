"""Closed-loop cluster simulator: topology, workload, physics, scenarios, policies, metrics.

Imports the controller core (the decisions it evaluates), ``foundation`` and
``contracts``; holds none of the core's logic and does no Kafka or store I/O
(``ingest.sources.sim`` and ``forecasting.history`` read its feed).
"""
