"""The controller: a pure decision core (controller.core) and the thin live service and node agent around it.

Imports only ``foundation`` and ``contracts``: Kafka clients and the buffered output
producer are injected by the shell (``run_service(..., clients=, producer=)``,
``run_agent(..., clients=)``). No physics, no storage, no simulator.
"""
