"""Telemetry sources, one module each."""
