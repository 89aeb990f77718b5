"""Store implementations behind one interface (embedded SQLite, InfluxDB 2.x) and the retrying buffer.

``base`` holds the interface and imports none of the stores; choosing one from settings
is the shell's job (``tapas.bootstrap.open_store``). No Kafka, no forecasting.
"""
