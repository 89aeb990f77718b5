"""Store implementations behind one interface (embedded SQLite, InfluxQL v1 for InfluxDB 1.x/2.x/3.x,
Flux for InfluxDB 2.x) and the retrying buffer.

``base`` holds the interface and imports none of the stores; choosing one from settings
is the shell's job (``tapas.bootstrap.open_store``). No Kafka, no forecasting.
"""
