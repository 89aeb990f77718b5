"""The ground floor: settings, topology, the embedded broker and TLS plumbing that every feature package imports.

It imports no feature package (controller, streams, forecasting, simulator, ingest, dashboard, bench) and
not the shell (`tapas`); `.importlinter` keeps it so. It holds no decisions and no physics.
"""
