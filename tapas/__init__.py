"""The `tapas` command line and the one place that builds Kafka, store and collector objects from Settings."""
