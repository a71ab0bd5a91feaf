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
    """Persistent volume size per node (Kubernetes runtime); default 10Gi."""
    storage_class: DnsName | None = None
    """StorageClass for the nodes' volumes. Not applied yet: volumes use the cluster's default
    StorageClass."""
    resources: Resources = Resources(cpu="1", memory="2Gi")
    """Resources of each Kafka node; default 1 CPU and 2Gi of memory."""
    config: Annotated[dict[str, str], Field(max_length=64)] = {}
    """Extra broker settings (server.properties keys), e.g. {"num.io.threads": "16"}; they
    override Gyre's defaults."""


class ExternalKafka(ApiModel):
    """A Kafka cluster the user runs."""

    bootstrap_servers: Annotated[
        list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$", max_length=256)]],
        Field(min_length=1, max_length=16),
    ]
    """host:port of one or more brokers; clients find the rest of the cluster from them."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How clients connect to the brokers. Only PLAINTEXT (the default) is used today."""


class KafkaSpec(ApiModel):
    """The Kafka cluster that holds the topic: one the operator runs, or one you run (set
    exactly one)."""

    model_config = ConfigDict(json_schema_extra=validations(exactly_one("managed", "external")))

    managed: ManagedKafka | None = None
    external: ExternalKafka | None = None


class TopicSpec(ApiModel):
    """The Kafka topic events are written to; the operator creates it and keeps it converged."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$", max_length=249)] | None = None
    """Topic name; defaults to <namespace>.<stream name>."""
    partitions: Annotated[int, Field(ge=1, le=1000)] = 3
    """Partitions, the unit of consumer parallelism; default 3. Can grow, never shrink (a
    shrink is reported as Degraded)."""
    replication_factor: Annotated[int, Field(ge=1, le=9)] = 1
    """Copies of each partition on different brokers; at most the cluster's broker count.
    Default 1. Also used for the dead-letter topic."""
    retention: Duration = "7d"
    """How long records are kept before Kafka deletes them; default 7d."""
    cleanup_policy: Literal["delete", "compact", "compact,delete"] = "delete"
    """delete (the default): drop records older than retention; compact: keep the newest
    record per key; compact,delete: both."""
    config: Annotated[dict[str, str], Field(max_length=64)] = {}
    """Extra topic settings (e.g. max.message.bytes)."""


class SchemaField(ApiModel):
    """One field of an event."""

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
    """Key of the field in the event JSON and column name in the lake."""
    type: FieldType
    """Value type: string, int and long (integers), float and double, boolean, or timestamp
    (RFC 3339 text or epoch milliseconds). Events of another type are dead-lettered."""
    required: bool = False
    """true: events without this field are dead-lettered; default false (the field may be
    missing or null)."""
    enum: (
        Annotated[list[Annotated[str, Field(max_length=256)]], Field(min_length=1, max_length=256)] | None
    ) = None
    """Allowed values (string fields only); any other value dead-letters the event."""
    description: Annotated[str, Field(max_length=1024)] | None = None
    """Documentation of the field for humans; not checked."""


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
    """The fields the collector checks in each event (names unique); keys not listed are kept
    in the record unchecked, and the lake ignores them."""
    key: FieldName
    """Field whose value keys the Kafka record (same key, same partition)."""
    timestamp_field: FieldName
    """Event-time field; partitions the lake by date."""


class CollectorAuth(ApiModel):
    """Bearer-token authentication of the collector (set exactly one source of the token)."""

    model_config = ConfigDict(json_schema_extra=validations(exactly_one("bearerTokenSecret", "tokenFile")))

    bearer_token_secret: SecretKeyRef | None = None
    """Kubernetes runtime: clients must send `Authorization: Bearer <token>` with this Secret's value."""
    token_file: Annotated[str, Field(max_length=1024)] | None = None
    """Local runtime: a file holding the token."""


class CollectorSpec(ApiModel):
    """The HTTP ingestion endpoint: clients POST JSON events, validated against the schema."""

    enabled: bool = True
    """false runs no collector (producers write to the topic directly); default true."""
    replicas: Annotated[int, Field(ge=1, le=32)] = 1
    """Collector processes (pods) behind one Service; default 1."""
    auth: CollectorAuth | None = None
    """Require a bearer token from clients; unset accepts every request."""
    max_batch: Annotated[int, Field(ge=1, le=100000)] = 1000
    """Most events accepted in one POST (a JSON array); larger requests get 413. Default 1000."""
    max_queue_messages: Annotated[int, Field(ge=1000, le=10000000)] = 100000
    """Events buffered for Kafka per collector; beyond it the collector answers 429 (retry
    later) instead of dropping events. Default 100000."""
    resources: Resources = Resources(cpu="500m", memory="512Mi")
    """Resources of each collector; default 500m CPU and 512Mi of memory."""


class LakeSink(ApiModel):
    """Parquet files of the topic's events, committed together with their Kafka offsets."""

    uri: Uri
    """Where Parquet files land, partitioned by event date (from schema.timestampField)."""
    format: Literal["parquet"] = "parquet"
    """File format: parquet, the only one."""
    exactly_once: bool = True
    """Each file is committed with the Kafka offsets it holds, so every accepted event lands
    exactly once, across crashes too. Always on today: false changes nothing."""
    flush_interval: Duration = "10s"
    """Longest time a record waits before its file is committed; default 10s."""
    max_records_per_file: Annotated[int, Field(ge=100, le=10000000)] = 100000
    """A file is committed once it holds this many records (or flushInterval passed);
    default 100000."""


class SinkSpec(ApiModel):
    """A consumer that writes the topic's events somewhere (today: a Parquet lake)."""

    model_config = ConfigDict(json_schema_extra=validations(exactly_one("lake")))

    name: DnsName
    """Names the sink (unique within the Stream): its workload and its consumer group."""
    lake: LakeSink | None = None
    resources: Resources = Resources(cpu="500m", memory="1Gi")
    """Resources of the sink process; default 500m CPU and 1Gi of memory."""


class DeadLetterSpec(ApiModel):
    """The topic that keeps rejected events (malformed JSON, schema violations) with the reason."""

    topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$", max_length=249)] | None = None
    """Name of the dead-letter topic; defaults to <topic name>.dlq."""
    retention: Duration = "14d"
    """How long rejected events are kept; default 14d."""


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
    """Consumers that write the events out (names unique); a TrainingJob reading this Stream
    needs a lake sink."""
    dead_letter: DeadLetterSpec = DeadLetterSpec()


class TopicStatus(ApiModel):
    """The topic as Kafka reports it."""

    model_config = ConfigDict(frozen=False)

    name: str | None = None
    """The topic's name in Kafka."""
    partitions: int | None = None
    """Partitions the topic has now."""
    dead_letter_topic: str | None = None
    """Name of the dead-letter topic."""


class SinkStatus(ApiModel):
    """One sink's progress."""

    model_config = ConfigDict(frozen=False)

    name: str
    """The sink's name in spec.sinks."""
    ready: bool = False
    """Whether the sink's process is up and consuming."""
    lag: Annotated[int, Field(ge=0)] | None = None
    """Records in the topic the sink has not committed yet, over all partitions."""
    records_written: Annotated[int, Field(ge=0)] | None = None
    """Records committed to the lake since the sink started."""
    files_committed: Annotated[int, Field(ge=0)] | None = None
    """Parquet files committed since the sink started."""


class FieldStatus(ApiModel):
    """A field of the Stream's events, as published for the resources that read them."""

    model_config = ConfigDict(frozen=False)

    name: str
    """Column name in the lake."""
    type: str
    """Its schema type (string, int, long, float, double, boolean, timestamp)."""


class KafkaClusterStatus(ApiModel):
    """The managed Kafka cluster this Stream uses."""

    model_config = ConfigDict(frozen=False)

    name: str
    """The cluster's name (spec.kafka.managed.cluster, or the first Stream's name)."""
    streams: Annotated[list[str], Field(max_length=256)] = []
    """Streams of the namespace that use this managed cluster."""
    ready_nodes: Annotated[int, Field(ge=0)] | None = None
    """Kafka nodes ready now."""
    nodes: Annotated[int, Field(ge=0)] | None = None
    """Kafka nodes the cluster runs."""


class StreamStatus(BaseStatus):
    """The Stream's conditions, its cluster and topic, the collector's address and the flow."""

    bootstrap_servers: str | None = None
    """Comma-separated host:port of the brokers, for Kafka clients."""
    kafka_cluster: KafkaClusterStatus | None = None
    """The managed cluster in use (absent for external Kafka)."""
    topic: TopicStatus | None = None
    collector_url: str | None = None
    """Where clients POST events (the collector's /v1/events endpoint)."""
    accepted_per_second: float | None = None
    """Events accepted per second between the last two samples."""
    rejected_per_second: float | None = None
    """Events rejected (dead-lettered) per second between the last two samples."""
    accepted_total: Annotated[int, Field(ge=0)] | None = None
    """Events the collectors accepted since they started."""
    rejected_total: Annotated[int, Field(ge=0)] | None = None
    """Events the collectors rejected since they started."""
    sampled_at: float | None = None
    """Unix time the totals were read (rates are computed between two samples)."""
    dead_letter_count: Annotated[int, Field(ge=0)] | None = None
    """Records in the dead-letter topic."""
    sinks: Annotated[list[SinkStatus], Field(max_length=8)] = []
    """Progress of each sink."""
    max_sink_lag: Annotated[int, Field(ge=0)] | None = None
    """The largest lag of any sink, in records."""
    lake_uri: str | None = None
    """Where the lake sink writes Parquet: what TrainingJobs and FeatureJobs reading this
    Stream read (absent without a lake sink)."""
    schema_fields: Annotated[list[FieldStatus], Field(max_length=512)] = []
    """The events' fields and types, for the resources that read the lake."""


StreamSpec.STATUS = StreamStatus
