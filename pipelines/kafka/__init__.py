"""The Kafka broker workload: one KRaft node per process.

``python -m gyre.pipelines.kafka`` formats the node's storage on first start and then execs
the JVM broker; the broker jars come from Maven Central through `gyre.pipelines.kafka.fetch`
and are cached under ``~/.cache/gyre/kafka/<version>/libs/``. Topics are the operator's
business (`gyre.controllers.topics`), not the broker's.
"""
