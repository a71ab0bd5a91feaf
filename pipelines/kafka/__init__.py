"""The Kafka broker workload (one KRaft node per process) and the topic admin the operator calls.

``python -m gyre.pipelines.kafka`` formats the node's storage on first start and then execs
the JVM broker; `gyre.pipelines.kafka.topics` converges topics to a `TopicSpec`; the broker
jars come from Maven Central through `gyre.pipelines.kafka.fetch` and are cached under
``~/.cache/gyre/kafka/<version>/libs/``.
"""
