"""Features, thermal/power/seasonal models, online corrections, backtesting and the model registry. No Kafka I/O beyond the model topic."""
