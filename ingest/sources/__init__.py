"""One module per telemetry source; each turns device readings into contract messages.

Every source exposes ``read() -> list[Contract]`` (one round) so the same loop in
:mod:`ingest.run` publishes or prints any of them. Device I/O is injected
(a requests session, an SNMP target, an NVML-like module) so tests point it at the
DMTF mockup, snmpsim or a fake handle.
"""
