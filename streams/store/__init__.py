"""Store implementations behind one interface (embedded SQLite, InfluxDB 2.x)."""
