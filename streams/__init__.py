"""The Faust stream app: validation, per-server joins and state, aggregation, forecast publication, store writer. No training, no decisions."""
