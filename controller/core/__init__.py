"""Pure decision core: snapshot in, decisions with reasons out. No Kafka, no store, no clock reads."""
