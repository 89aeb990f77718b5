"""The ground floor every package imports: settings, topology, the embedded broker, TLS and Kafka plumbing.

Holds ``settings.py`` (the one Settings object, each field documented), ``topology.py``
(the cluster inventory), ``broker.py`` (the embedded Tansu broker, topic creation),
``tls.py`` (test PKI, a TLS-terminated broker) and ``kafka.py`` (the client seams features
take, ``KafkaClients``/``Publisher``, and the one assign/seek helper ``assign_all``).

It imports only ``contracts``: no feature package (controller, streams, forecasting,
simulator, ingest, dashboard), not ``bench`` and not the shell (``tapas``);
``.importlinter`` keeps it so. It builds no service's clients (``tapas.bootstrap`` does)
and holds no decisions, physics or models.
"""
