"""Stream → a KRaft Kafka node (when managed), an HTTP collector and one sink per lake.

Every workload reads its JSON config from its config directory; addresses between them are
`EndpointRef`s the runtime resolves (loopback ports locally, Service names on Kubernetes).
"""

from __future__ import annotations

from gyre.api.stream import LakeSink, SinkSpec, StreamSpec
from gyre.core.durations import parse_duration
from gyre.core.workload import (
    ConfigDirRef,
    EndpointRef,
    EnvValue,
    Port,
    Readiness,
    Resources,
    RestartPolicy,
    Volume,
    VolumePathRef,
    Workload,
    WorkloadKind,
)
from gyre.pipelines._common.schema import FieldSpec, StreamSchema
from gyre.pipelines.collector.config import CollectorConfig
from gyre.pipelines.kafka.config import BrokerConfig, cluster_id_for
from gyre.pipelines.kafka.topics import TopicSpec
from gyre.pipelines.lakesink.config import LakeSinkConfig

BROKER = "kafka"
COLLECTOR = "collector"
CONFIG_FILE = "config.json"
KAFKA_PORT = 9092
CONTROLLER_PORT = 9093
HTTP_PORT = 8080
SINK_PORT = 8081


def topic_name(spec: StreamSpec, namespace: str, name: str) -> str:
    return spec.topic.name or f"{namespace}.{name}"


def dead_letter_name(spec: StreamSpec, namespace: str, name: str) -> str:
    return spec.dead_letter.topic or f"{topic_name(spec, namespace, name)}.dlq"


def sink_workload_name(sink: SinkSpec) -> str:
    return f"sink-{sink.name}"


def build_topic_spec(spec: StreamSpec, namespace: str, name: str) -> TopicSpec:
    t = spec.topic
    return TopicSpec(
        name=topic_name(spec, namespace, name),
        partitions=t.partitions,
        replication_factor=t.replication_factor,
        retention_ms=int(parse_duration(t.retention) * 1000),
        cleanup_policy=t.cleanup_policy,
        config=dict(t.config),
    )


def build_dead_letter_spec(spec: StreamSpec, namespace: str, name: str) -> TopicSpec:
    return TopicSpec(
        name=dead_letter_name(spec, namespace, name),
        partitions=1,
        replication_factor=spec.topic.replication_factor,
        retention_ms=int(parse_duration(spec.dead_letter.retention) * 1000),
    )


def build_schema(spec: StreamSpec) -> StreamSchema:
    s = spec.schema_
    return StreamSchema(
        fields=tuple(
            FieldSpec(name=f.name, type=f.type, required=f.required, enum=tuple(f.enum) if f.enum else None)
            for f in s.fields
        ),
        key_field=s.key,
        timestamp_field=s.timestamp_field,
    )


def bootstrap_env(spec: StreamSpec) -> EnvValue:
    if spec.kafka.external:
        return ",".join(spec.kafka.external.bootstrap_servers)
    return EndpointRef("kafka", BROKER)


def build_broker(spec: StreamSpec, namespace: str, name: str) -> Workload:
    managed = spec.kafka.managed
    assert managed is not None
    cluster = managed.cluster or name
    config = BrokerConfig(
        cluster_id=cluster_id_for(f"{namespace}/{cluster}"),
        nodes=managed.replicas,
        listen_host="0.0.0.0",
        kafka_port=KAFKA_PORT,
        controller_port=CONTROLLER_PORT,
        version=managed.version,
        properties={
            "offsets.topic.replication.factor": str(min(managed.replicas, 3)),
            "transaction.state.log.replication.factor": str(min(managed.replicas, 3)),
            **managed.config,
        },
    )
    return Workload(
        name=BROKER,
        role="broker",
        kind=WorkloadKind.STATEFUL,
        command=("python", "-m", "gyre.pipelines.kafka"),
        replicas=managed.replicas,
        env={
            "GYRE_CONFIG": ConfigDirRef(CONFIG_FILE),
            "GYRE_KAFKA_DATA_DIR": VolumePathRef("data"),
            "GYRE_KAFKA_ADVERTISED": EndpointRef("kafka"),
        },
        ports=(Port("kafka", KAFKA_PORT), Port("controller", CONTROLLER_PORT)),
        resources=Resources(cpu=managed.resources.cpu, memory=managed.resources.memory),
        restart_policy=RestartPolicy.ALWAYS,
        readiness=Readiness(port="kafka", period_s=1.0),
        volumes=(_data_volume(managed.storage),),
        config_files={CONFIG_FILE: config.to_json()},
    )


def _data_volume(size: str) -> Volume:
    return Volume(name="data", mount_path="/var/lib/gyre/kafka", size=size)


def build_collector(spec: StreamSpec, namespace: str, name: str) -> Workload:
    c = spec.collector
    auth_file = None
    if c.auth and c.auth.token_file:
        auth_file = c.auth.token_file
    config = CollectorConfig(
        topic=topic_name(spec, namespace, name),
        schema=build_schema(spec),
        dead_letter_topic=dead_letter_name(spec, namespace, name),
        auth_token_file=auth_file,
        port=HTTP_PORT,
        max_events_per_request=c.max_batch,
        max_queued_events=max(c.max_queue_messages, c.max_batch),
    )
    return Workload(
        name=COLLECTOR,
        role="collector",
        kind=WorkloadKind.SERVICE,
        command=("python", "-m", "gyre.pipelines.collector"),
        replicas=c.replicas,
        env={"GYRE_CONFIG": ConfigDirRef(CONFIG_FILE), "GYRE_KAFKA_BOOTSTRAP": bootstrap_env(spec)},
        ports=(Port("http", HTTP_PORT),),
        resources=Resources(cpu=c.resources.cpu, memory=c.resources.memory),
        readiness=Readiness(port="http", http_path="/healthz", period_s=1.0),
        config_files={CONFIG_FILE: config.to_json()},
    )


def build_lake_sink(spec: StreamSpec, namespace: str, name: str, sink: SinkSpec, lake: LakeSink) -> Workload:
    config = LakeSinkConfig(
        topic=topic_name(spec, namespace, name),
        schema=build_schema(spec),
        lake_uri=lake.uri,
        group_id=f"gyre-{namespace}-{name}-{sink.name}",
        flush_records=lake.max_records_per_file,
        flush_interval_s=parse_duration(lake.flush_interval),
        port=SINK_PORT,
    )
    return Workload(
        name=sink_workload_name(sink),
        role="sink",
        kind=WorkloadKind.SERVICE,
        command=("python", "-m", "gyre.pipelines.lakesink"),
        env={"GYRE_CONFIG": ConfigDirRef(CONFIG_FILE), "GYRE_KAFKA_BOOTSTRAP": bootstrap_env(spec)},
        ports=(Port("http", SINK_PORT),),
        resources=Resources(cpu=sink.resources.cpu, memory=sink.resources.memory),
        readiness=Readiness(port="http", http_path="/healthz", period_s=1.0),
        config_files={CONFIG_FILE: config.to_json()},
    )


def build_stream(spec: StreamSpec, namespace: str, name: str) -> list[Workload]:
    """Broker (when managed), collector and sinks; the latter retry until the topic exists."""
    out: list[Workload] = []
    if spec.kafka.managed:
        out.append(build_broker(spec, namespace, name))
    if spec.collector.enabled:
        out.append(build_collector(spec, namespace, name))
    for sink in spec.sinks:
        if sink.lake:
            out.append(build_lake_sink(spec, namespace, name, sink, sink.lake))
    return out
