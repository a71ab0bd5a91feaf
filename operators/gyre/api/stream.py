"""`Stream`: a Kafka topic with a typed schema, an HTTP collector, sinks and a dead-letter topic."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field

from gyre.api._base import (
    ApiModel,
    BaseStatus,
    DnsName,
    Duration,
    FieldName,
    Kind,
    KindInfo,
    Quantity,
    Resources,
    SecretKeyRef,
    Uri,
    age_column,
    cel,
    exactly_one,
    ready_column,
    validations,
)

FieldType = Literal["string", "int", "long", "float", "double", "boolean", "timestamp"]


class ManagedKafka(ApiModel):
    """A KRaft Kafka cluster the operator runs."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.replicas == 1 || self.replicas >= 3",
                "kafka.managed.replicas must be 1 (combined broker+controller) or at least 3",
                ".replicas",
            ),
            cel(
                "!has(self.controllers) || self.controllers == 0 || self.replicas >= 3",
                "kafka.managed.controllers (dedicated controller nodes) needs replicas >= 3; "
                "with fewer brokers, set controllers to 0 (combined broker+controller nodes)",
                ".controllers",
            ),
        )
    )

    cluster: DnsName | None = None
    """Cluster name; Streams of a namespace naming the same cluster share it (the oldest such
    Stream's settings define it). Defaults to the Stream's name."""
    replicas: Annotated[int, Field(ge=1, le=9)] = 1
    """Broker nodes: 1 runs a combined broker+controller; 3 or more run a controller quorum."""
    controllers: Literal[0, 1, 3, 5] = 0
    """Dedicated controller-only nodes (separate roles, replicas >= 3); 0: the first (up to 3)
    brokers are controllers as well."""
    version: Annotated[str, Field(pattern=r"^4\.[0-9]+\.[0-9]+$", max_length=16)] = "4.4.0"
    """Kafka version (4.x, KRaft)."""
    storage: Quantity = "10Gi"
    """Persistent volume size per node."""
    storage_class: DnsName | None = None
    resources: Resources = Resources(cpu="1", memory="2Gi")
    config: Annotated[dict[str, str], Field(max_length=64)] = {}
    """Extra broker settings (server.properties keys)."""


class ExternalKafka(ApiModel):
    """A Kafka cluster the user runs."""

    bootstrap_servers: Annotated[
        list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$", max_length=256)]],
        Field(min_length=1, max_length=16),
    ]
    """host:port of one or more brokers."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"


class KafkaSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra=validations(exactly_one("managed", "external")))

    managed: ManagedKafka | None = None
    external: ExternalKafka | None = None


class TopicSpec(ApiModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$", max_length=249)] | None = None
    """Topic name; defaults to <namespace>.<stream name>."""
    partitions: Annotated[int, Field(ge=1, le=1000)] = 3
    """Partitions; can grow, never shrink."""
    replication_factor: Annotated[int, Field(ge=1, le=9)] = 1
    retention: Duration = "7d"
    """How long records are kept."""
    cleanup_policy: Literal["delete", "compact", "compact,delete"] = "delete"
    config: Annotated[dict[str, str], Field(max_length=64)] = {}
    """Extra topic settings (e.g. max.message.bytes)."""


class SchemaField(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.enum) || self.type == 'string'",
                "enum is only allowed on fields of type string",
                ".enum",
            ),
        )
    )

    name: FieldName
    type: FieldType
    required: bool = False
    enum: (
        Annotated[list[Annotated[str, Field(max_length=256)]], Field(min_length=1, max_length=256)] | None
    ) = None
    """Allowed values (string fields)."""
    description: Annotated[str, Field(max_length=1024)] | None = None


class EventSchema(ApiModel):
    """The typed shape of an event; invalid events go to the dead-letter topic."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.fields.exists(f, f.name == self.key)",
                "schema.key must name one of schema.fields",
                ".key",
            ),
            cel(
                "self.fields.exists(f, f.name == self.timestampField && f.type == 'timestamp')",
                "schema.timestampField must name a field of type timestamp",
                ".timestampField",
            ),
            cel(
                "self.fields.all(f, self.fields.exists_one(g, g.name == f.name))",
                "schema.fields names must be unique",
                ".fields",
            ),
        )
    )

    fields: Annotated[list[SchemaField], Field(min_length=1, max_length=128)]
    key: FieldName
    """Field whose value keys the Kafka record (same key, same partition)."""
    timestamp_field: FieldName
    """Event-time field; partitions the lake by date."""


class CollectorAuth(ApiModel):
    model_config = ConfigDict(json_schema_extra=validations(exactly_one("bearerTokenSecret", "tokenFile")))

    bearer_token_secret: SecretKeyRef | None = None
    """Kubernetes runtime: clients must send `Authorization: Bearer <token>` with this Secret's value."""
    token_file: Annotated[str, Field(max_length=1024)] | None = None
    """Local runtime: a file holding the token."""


class CollectorSpec(ApiModel):
    enabled: bool = True
    replicas: Annotated[int, Field(ge=1, le=32)] = 1
    auth: CollectorAuth | None = None
    max_batch: Annotated[int, Field(ge=1, le=100000)] = 1000
    """Most events accepted in one POST."""
    max_queue_messages: Annotated[int, Field(ge=1000, le=10000000)] = 100000
    """Producer queue bound; beyond it the collector answers 429 instead of dropping."""
    resources: Resources = Resources(cpu="500m", memory="512Mi")


class LakeSink(ApiModel):
    uri: Uri
    """Where Parquet files land, partitioned by event date."""
    format: Literal["parquet"] = "parquet"
    exactly_once: bool = True
    flush_interval: Duration = "10s"
    """Longest time a record waits before its file is committed."""
    max_records_per_file: Annotated[int, Field(ge=100, le=10000000)] = 100000


class SinkSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra=validations(exactly_one("lake")))

    name: DnsName
    lake: LakeSink | None = None
    resources: Resources = Resources(cpu="500m", memory="1Gi")


class DeadLetterSpec(ApiModel):
    topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$", max_length=249)] | None = None
    """Defaults to <topic>.dlq."""
    retention: Duration = "14d"


class StreamSpec(Kind):
    """A Kafka topic with a typed schema, an HTTP collector, sinks and a dead-letter topic."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.sinks) || self.sinks.all(s, self.sinks.exists_one(t, t.name == s.name))",
                "sinks names must be unique",
                ".sinks",
            ),
        )
    )

    INFO: ClassVar[KindInfo] = KindInfo(
        kind="Stream",
        plural="streams",
        singular="stream",
        short_names=["gst", "gstream"],
        printer_columns=[
            *ready_column(),
            {"name": "Topic", "type": "string", "jsonPath": ".status.topic.name"},
            {"name": "Partitions", "type": "integer", "jsonPath": ".status.topic.partitions"},
            {"name": "Accepted/s", "type": "number", "jsonPath": ".status.acceptedPerSecond"},
            {"name": "DLQ", "type": "integer", "jsonPath": ".status.deadLetterCount"},
            {"name": "Lag", "type": "integer", "jsonPath": ".status.maxSinkLag"},
            {"name": "Cluster", "type": "string", "jsonPath": ".status.kafkaCluster.name", "priority": 1},
            {"name": "Bootstrap", "type": "string", "jsonPath": ".status.bootstrapServers", "priority": 1},
            age_column(),
        ],
    )

    kafka: KafkaSpec
    topic: TopicSpec = TopicSpec()
    schema_: Annotated[EventSchema, Field(alias="schema")]
    collector: CollectorSpec = CollectorSpec()
    sinks: Annotated[list[SinkSpec], Field(max_length=8)] = []
    dead_letter: DeadLetterSpec = DeadLetterSpec()


class TopicStatus(ApiModel):
    model_config = ConfigDict(frozen=False)

    name: str | None = None
    partitions: int | None = None
    dead_letter_topic: str | None = None


class SinkStatus(ApiModel):
    model_config = ConfigDict(frozen=False)

    name: str
    ready: bool = False
    lag: Annotated[int, Field(ge=0)] | None = None
    records_written: Annotated[int, Field(ge=0)] | None = None
    files_committed: Annotated[int, Field(ge=0)] | None = None


class KafkaClusterStatus(ApiModel):
    model_config = ConfigDict(frozen=False)

    name: str
    streams: Annotated[list[str], Field(max_length=256)] = []
    """Streams of the namespace that use this managed cluster."""
    ready_nodes: Annotated[int, Field(ge=0)] | None = None
    nodes: Annotated[int, Field(ge=0)] | None = None


class StreamStatus(BaseStatus):
    bootstrap_servers: str | None = None
    kafka_cluster: KafkaClusterStatus | None = None
    """The managed cluster in use (absent for external Kafka)."""
    topic: TopicStatus | None = None
    collector_url: str | None = None
    accepted_per_second: float | None = None
    rejected_per_second: float | None = None
    accepted_total: Annotated[int, Field(ge=0)] | None = None
    rejected_total: Annotated[int, Field(ge=0)] | None = None
    sampled_at: float | None = None
    """Unix time the totals were read (rates are computed between two samples)."""
    dead_letter_count: Annotated[int, Field(ge=0)] | None = None
    sinks: Annotated[list[SinkStatus], Field(max_length=8)] = []
    max_sink_lag: Annotated[int, Field(ge=0)] | None = None


StreamSpec.STATUS = StreamStatus
