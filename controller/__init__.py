"""The controller: a pure decision core (controller.core) and the thin live service and node agent around it. No physics, no storage."""
