"""Store implementations behind one interface (embedded SQLite, InfluxQL v1 for InfluxDB 1.x/2.x/3.x, Flux for InfluxDB 2.x)."""
