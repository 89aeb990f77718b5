"""Benchmarks, one module each, all reachable from `tapas bench`.

Sits between the shell and the features: imports features, ``foundation`` and
``contracts``, never ``tapas``. A benchmark builds its own Kafka clients with the
tuning it measures (batch sizes, fetch limits) rather than from settings. Holds no
product logic and no figures of its own: each run prints its baseline beside its result.
"""
