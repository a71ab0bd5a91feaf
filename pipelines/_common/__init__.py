"""Helpers shared by the stream workloads: config loading, the event schema, a metrics server,
a Kafka record log."""
