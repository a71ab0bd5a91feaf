"""Stream → a managed KRaft cluster (shared by name), an HTTP collector and one sink per lake.

Every workload reads its JSON config from its config directory. Kafka nodes find each other
through `PeersRef`s the runtime resolves (loopback ports locally, the pods' stable names on
Kubernetes, where the nodes run the ``apache/kafka`` image); the collector and sinks get the
cluster's bootstrap address as a plain value, since the cluster has an owner of its own.
"""

from __future__ import annotations

from gyre.api._base import Resources as ApiResources
from gyre.api.stream import LakeSink, ManagedKafka, SinkSpec, StreamSpec
from gyre.core.durations import parse_duration
from gyre.core.topics import TopicSpec
from gyre.core.workload import (
    ConfigDirRef,
    EnvValue,
    KubernetesContainer,
    PeersRef,
    Port,
    Readiness,
    Resources,
    RestartPolicy,
    SecretFile,
    Volume,
    VolumePathRef,
    Workload,
    WorkloadKind,
)
from gyre.pipelines._common.schema import FieldSpec, StreamSchema
from gyre.pipelines.collector.config import CollectorConfig
from gyre.pipelines.kafka.broker import server_properties_template
from gyre.pipelines.kafka.config import BrokerConfig, cluster_id_for
from gyre.pipelines.lakesink.config import LakeSinkConfig

BROKER = "kafka"
COLLECTOR = "collector"
CONFIG_FILE = "config.json"
PROPERTIES_FILE = "server.properties"
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


KAFKA_IMAGE = "apache/kafka"
KAFKA_DATA = "/var/lib/gyre/kafka"
CONTROLLERS = "kafka-controller"
CONTROLLER_ID_BASE = 100  # dedicated controllers' node ids; brokers count from 0 (at most 9)

# On Kubernetes the broker runs the `apache/kafka` image: this script (busybox sh) picks the
# node's id and pod host from its index, fills them into the properties the operator rendered,
# formats the volume once and execs the broker. The same environment drives the local
# runtime's `python -m gyre.pipelines.kafka`, so both read one description of the cluster.
_KAFKA_START = r"""set -eu
i="$GYRE_REPLICA_INDEX"
id=$(( ${GYRE_KAFKA_NODE_ID_BASE:-0} + i ))
host=$(echo "$GYRE_KAFKA_PEERS" | tr ',' '\n' | sed -n "$(( i + 1 ))p" | cut -d: -f1)
voters=$(echo "$GYRE_KAFKA_VOTERS" | tr ',' '\n' | head -n "$GYRE_KAFKA_VOTER_COUNT" \
  | awk -v base="${GYRE_KAFKA_VOTER_ID_BASE:-0}" \
      '{ printf "%s%d@%s", (NR > 1 ? "," : ""), base + NR - 1, $0 }')
conf="$GYRE_KAFKA_DATA_DIR/config"
mkdir -p "$conf"
sed -e "s|@NODE_ID@|$id|g" -e "s|@HOST@|$host|g" -e "s|@VOTERS@|$voters|g" \
  "$GYRE_KAFKA_PROPERTIES" > "$conf/server.properties"
"${KAFKA_HOME:-/opt/kafka}/bin/kafka-storage.sh" format --cluster-id "$GYRE_KAFKA_CLUSTER_ID" \
  --config "$conf/server.properties" --ignore-formatted
exec "${KAFKA_HOME:-/opt/kafka}/bin/kafka-server-start.sh" "$conf/server.properties"
"""


def cluster_name(spec: StreamSpec, name: str) -> str | None:
    """The managed cluster a Stream uses (its own name unless it names one), None if external."""
    managed = spec.kafka.managed
    return (managed.cluster or name) if managed else None


def build_kafka_cluster(managed: ManagedKafka, namespace: str, cluster: str) -> list[Workload]:
    """The nodes of a managed KRaft cluster: one workload of combined broker+controller nodes,
    or brokers plus a workload of dedicated controllers (``managed.controllers`` > 0)."""
    cluster_id = cluster_id_for(f"{namespace}/{cluster}")
    replication = str(min(managed.replicas, 3))
    properties = {
        "offsets.topic.replication.factor": replication,
        "transaction.state.log.replication.factor": replication,
        **managed.config,
    }
    dedicated = managed.controllers > 0
    brokers = _kafka_node(
        BROKER,
        BrokerConfig(
            cluster_id=cluster_id,
            nodes=managed.replicas,
            roles="broker" if dedicated else None,
            listen_host="0.0.0.0",
            kafka_port=KAFKA_PORT,
            controller_port=CONTROLLER_PORT,
            version=managed.version,
            properties=properties,
        ),
        managed,
        voters=PeersRef("controller", CONTROLLERS if dedicated else None),
        voter_count=managed.controllers if dedicated else min(managed.replicas, 3),
        voter_id_base=CONTROLLER_ID_BASE if dedicated else 0,
    )
    if not dedicated:
        return [brokers]
    controllers = _kafka_node(
        CONTROLLERS,
        BrokerConfig(
            cluster_id=cluster_id,
            nodes=managed.controllers,
            roles="controller",
            node_id_base=CONTROLLER_ID_BASE,
            node_id=CONTROLLER_ID_BASE,
            listen_host="0.0.0.0",
            kafka_port=KAFKA_PORT,
            controller_port=CONTROLLER_PORT,
            version=managed.version,
            properties=dict(managed.config),
        ),
        managed,
        voters=PeersRef("controller"),
        voter_count=managed.controllers,
        voter_id_base=CONTROLLER_ID_BASE,
    )
    return [controllers, brokers]


def _kafka_node(
    name: str,
    config: BrokerConfig,
    managed: ManagedKafka,
    voters: PeersRef,
    voter_count: int,
    voter_id_base: int,
) -> Workload:
    controller_only = config.roles == "controller"
    env: dict[str, EnvValue] = {
        "GYRE_CONFIG": ConfigDirRef(CONFIG_FILE),
        "GYRE_KAFKA_DATA_DIR": VolumePathRef("data"),
        "GYRE_KAFKA_PEERS": PeersRef("controller" if controller_only else "kafka"),
        "GYRE_KAFKA_VOTERS": voters,
        "GYRE_KAFKA_VOTER_ID_BASE": str(voter_id_base),
        "GYRE_KAFKA_VOTER_COUNT": str(voter_count),
        "GYRE_KAFKA_NODE_ID_BASE": str(config.node_id_base),
    }
    if config.roles:
        env["GYRE_KAFKA_ROLES"] = config.roles
    ports = (
        (Port("controller", CONTROLLER_PORT),)
        if controller_only
        else (
            Port("kafka", KAFKA_PORT),
            Port("controller", CONTROLLER_PORT),
        )
    )
    return Workload(
        name=name,
        role="kafka-controller" if controller_only else "broker",
        kind=WorkloadKind.STATEFUL,
        command=("python", "-m", "gyre.pipelines.kafka"),
        replicas=config.nodes,
        env=env,
        ports=ports,
        resources=Resources(cpu=managed.resources.cpu, memory=managed.resources.memory),
        restart_policy=RestartPolicy.ALWAYS,
        readiness=Readiness(port=ports[0].name, period_s=1.0),
        volumes=(Volume(name="data", mount_path=KAFKA_DATA, size=managed.storage),),
        config_files={
            CONFIG_FILE: config.to_json(),
            PROPERTIES_FILE: server_properties_template(config, f"{KAFKA_DATA}/kraft"),
        },
        on_kubernetes=KubernetesContainer(
            image=f"{KAFKA_IMAGE}:{managed.version}",
            command=("/bin/sh", "-c", _KAFKA_START),
            env={
                "GYRE_KAFKA_CLUSTER_ID": config.cluster_id,
                "GYRE_KAFKA_PROPERTIES": ConfigDirRef(PROPERTIES_FILE),
                "KAFKA_HEAP_OPTS": f"-Xmx{config.heap} -Xms{config.heap}",
                # The image's scripts write logs under LOG_DIR; the root filesystem is read-only.
                "LOG_DIR": "/tmp/kafka-logs",
            },
        ),
    )


def build_collector(spec: StreamSpec, namespace: str, name: str, bootstrap: str) -> Workload:
    c = spec.collector
    auth_file = None
    secrets: tuple[SecretFile, ...] = ()
    if c.auth and c.auth.token_file:
        auth_file = c.auth.token_file
    elif c.auth and c.auth.bearer_token_secret:
        ref = c.auth.bearer_token_secret
        token = SecretFile(name="collector-token", secret=ref.name, key=ref.key)
        secrets = (token,)
        auth_file = token.path  # the collector re-reads it when the Secret changes
    config = CollectorConfig(
        topic=topic_name(spec, namespace, name),
        schema=build_schema(spec),
        dead_letter_topic=dead_letter_name(spec, namespace, name),
        auth_token_file=auth_file,
        port=HTTP_PORT,
        max_events_per_request=c.max_batch,
        max_queued_events=max(c.max_queue_messages, c.max_batch),
    )
    return _pipeline_service(
        COLLECTOR,
        "collector",
        "gyre.pipelines.collector",
        HTTP_PORT,
        config.to_json(),
        bootstrap,
        replicas=c.replicas,
        resources=c.resources,
        secrets=secrets,
    )


def build_lake_sink(
    spec: StreamSpec, namespace: str, name: str, sink: SinkSpec, lake: LakeSink, bootstrap: str
) -> Workload:
    config = LakeSinkConfig(
        topic=topic_name(spec, namespace, name),
        schema=build_schema(spec),
        lake_uri=lake.uri,
        group_id=f"gyre-{namespace}-{name}-{sink.name}",
        flush_records=lake.max_records_per_file,
        flush_interval_s=parse_duration(lake.flush_interval),
        port=SINK_PORT,
    )
    return _pipeline_service(
        sink_workload_name(sink),
        "sink",
        "gyre.pipelines.lakesink",
        SINK_PORT,
        config.to_json(),
        bootstrap,
        resources=sink.resources,
    )


def _pipeline_service(
    name: str,
    role: str,
    module: str,
    port: int,
    config_json: str,
    bootstrap: str,
    *,
    resources: ApiResources,
    replicas: int = 1,
    secrets: tuple[SecretFile, ...] = (),
) -> Workload:
    """A Kafka client behind an HTTP port: its JSON config, the cluster address, /healthz and
    /status on that port."""
    return Workload(
        name=name,
        role=role,
        kind=WorkloadKind.SERVICE,
        command=("python", "-m", module),
        replicas=replicas,
        env={"GYRE_CONFIG": ConfigDirRef(CONFIG_FILE), "GYRE_KAFKA_BOOTSTRAP": bootstrap},
        ports=(Port("http", port),),
        resources=Resources(cpu=resources.cpu, memory=resources.memory),
        readiness=Readiness(port="http", http_path="/healthz", period_s=1.0),
        config_files={CONFIG_FILE: config_json},
        secrets=secrets,
        status_port="http",
    )


def build_stream(spec: StreamSpec, namespace: str, name: str, bootstrap: str | None) -> list[Workload]:
    """The Stream's own workloads, collector and sinks (they retry until the topic exists).

    A managed cluster is not among them: several Streams may share it (`build_kafka_cluster`,
    under a shared owner); ``bootstrap`` is the address of the cluster in use, managed or not.
    """
    if not bootstrap:
        raise ValueError("the Kafka cluster's bootstrap address is needed to build the collector and sinks")
    out: list[Workload] = []
    if spec.collector.enabled:
        out.append(build_collector(spec, namespace, name, bootstrap))
    for sink in spec.sinks:
        if sink.lake:
            out.append(build_lake_sink(spec, namespace, name, sink, sink.lake, bootstrap))
    return out
