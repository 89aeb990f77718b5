"""Collectors that turn GPUs, BMCs, PDUs, recorded files and the simulator into contract messages on Kafka.

Holds the sources (``ingest.sources``: nvml, redfish, snmp, replay, sim), the edge
validation rules (``ingest.validate``) and the buffered, retrying producer
(``ingest.producer``). Does no modelling and takes no decisions: a reading leaves
here either as a good value or flagged in ``invalid_fields``, never altered.
Imports ``simulator`` (the sim source), ``foundation`` and ``contracts`` only; the shell
builds each collector's producer (``tapas.bootstrap.collector_producer``).
"""
