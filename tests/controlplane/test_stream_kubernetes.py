"""Streams through the operator and the kubernetes runtime, on kwok nodes.

What a cluster gets for a Stream: the managed Kafka cluster as a StatefulSet of the
``apache/kafka`` image behind a headless Service, with a volume claim per node and readiness on
the broker port (dedicated controllers as a second StatefulSet); the collector and each sink as
Deployments with their Services and ConfigMaps; the collector's bearer token mounted from a
Secret. The Stream's own objects carry it as their controller; the cluster's objects carry
every Stream that uses it, so the garbage collector removes them after the last one. kwok runs
no containers, so the operator never reaches the brokers: these tests check what is rendered,
applied, pruned and collected.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import OperatorProcess, running_operator, stream_manifest

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytestmark = pytest.mark.controlplane


def stream(
    name: str,
    *,
    cluster: str | None = None,
    replicas: int = 3,
    controllers: int = 0,
    sinks: bool = True,
    token_secret: bool = True,
) -> str:
    managed = f"replicas: {replicas}, controllers: {controllers}, storage: 5Gi"
    if cluster:
        managed += f", cluster: {cluster}"
    auth = ", auth: {bearerTokenSecret: {name: collector-token, key: token}}" if token_secret else ""
    return stream_manifest(
        name,
        managed=managed,
        topic="partitions: 6, replicationFactor: 3",
        sink_lake='uri: "file:///lake/clicks"' if sinks else None,
        collector=f"replicas: 2{auth}",
    )


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from running_operator(
        cluster, tmp_path, "stk8s", "kubernetes", show="gst", show_wide="all", delete_namespace=True
    )


def container(obj: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0]
    return c


def env(obj: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(obj)["env"]}


def owners(obj: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    return sorted(
        (r["kind"], r["name"], r["uid"], bool(r.get("controller")))
        for r in obj["metadata"].get("ownerReferences", [])
    )


def uid(op: OperatorProcess, name: str) -> str:
    return str(op.get("stream", name)["metadata"]["uid"])


def test_a_stream_renders_a_kafka_statefulset_a_collector_and_a_sink_and_prunes_on_change(
    operator: OperatorProcess,
) -> None:
    op, ns = operator, operator.namespace
    op.cluster.kubectl(
        "create", "secret", "generic", "collector-token", "--from-literal=token=s3cret", "-n", ns
    )
    op.apply(stream("clicks"))

    def rendered() -> tuple[dict[tuple[str, str], Any], dict[tuple[str, str], Any]]:
        kafka, own = op.children("KafkaCluster", "clicks"), op.children("Stream", "clicks")
        assert ("StatefulSet", "clicks-kafka") in kafka, sorted(kafka)
        assert ("Deployment", "clicks-sink-lake") in own, sorted(own)
        return kafka, own

    kafka, own = eventually(rendered, timeout=60)
    me = ("Stream", "clicks", uid(op, "clicks"))

    # The Kafka nodes: apache/kafka, a headless Service, a claim per node, readiness on 9092.
    assert sorted(kafka) == [
        ("ConfigMap", "clicks-kafka-config"),
        ("Service", "clicks-kafka"),
        ("StatefulSet", "clicks-kafka"),
    ]
    sts = kafka[("StatefulSet", "clicks-kafka")]
    c = container(sts)
    assert c["image"] == "apache/kafka:4.4.0"
    assert c["command"][:2] == ["/bin/sh", "-c"]
    assert 'kafka-storage.sh" format --cluster-id' in c["command"][2]
    assert 'exec "${KAFKA_HOME:-/opt/kafka}/bin/kafka-server-start.sh"' in c["command"][2]
    assert c["readinessProbe"]["tcpSocket"] == {"port": "kafka"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"kafka": 9092, "controller": 9093}
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "clicks-kafka"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/var/lib/gyre/kafka", "/etc/gyre/config"}
    e = env(sts)
    peers = [f"clicks-kafka-{i}.clicks-kafka.{ns}.svc" for i in range(3)]
    assert e["GYRE_KAFKA_PEERS"] == ",".join(f"{p}:9092" for p in peers)
    assert e["GYRE_KAFKA_VOTERS"] == ",".join(f"{p}:9093" for p in peers)
    assert e["GYRE_KAFKA_VOTER_COUNT"] == "3"
    index = e["GYRE_REPLICA_INDEX"]["fieldRef"]["fieldPath"]
    assert index == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert e["LOG_DIR"].startswith("/tmp/")
    props = kafka[("ConfigMap", "clicks-kafka-config")]["data"]["server.properties"]
    assert "process.roles=broker,controller\n" in props
    assert "node.id=@NODE_ID@\n" in props
    assert "advertised.listeners=PLAINTEXT://@HOST@:9092,CONTROLLER://@HOST@:9093\n" in props
    assert "offsets.topic.replication.factor=3\n" in props
    svc = kafka[("Service", "clicks-kafka")]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    # The cluster belongs to the Streams using it (not as their controller: it is shared).
    for obj in kafka.values():
        assert owners(obj) == [(*me, False)], obj["metadata"]["name"]

    # The collector: a Deployment of 2 behind a ClusterIP Service, the token from the Secret.
    collector = own[("Deployment", "clicks-collector")]
    assert collector["spec"]["replicas"] == 2
    ce = env(collector)
    assert ce["GYRE_KAFKA_BOOTSTRAP"] == f"clicks-kafka.{ns}.svc:9092"
    volumes = {v["name"]: v for v in collector["spec"]["template"]["spec"]["volumes"]}
    secret = volumes["secret-collector-token"]["secret"]
    assert (secret["secretName"], secret["items"]) == ("collector-token", [{"key": "token", "path": "value"}])
    mounts = {m["name"]: m for m in container(collector)["volumeMounts"]}
    assert mounts["secret-collector-token"]["mountPath"] == "/etc/gyre/secrets/collector-token"
    config = own[("ConfigMap", "clicks-collector-config")]["data"]["config.json"]
    assert '"auth_token_file": "/etc/gyre/secrets/collector-token/value"' in config
    assert own[("Service", "clicks-collector")]["spec"]["ports"][0]["port"] == 8080
    assert env(own[("Deployment", "clicks-sink-lake")])["GYRE_KAFKA_BOOTSTRAP"] == ce["GYRE_KAFKA_BOOTSTRAP"]
    for obj in own.values():
        assert owners(obj) == [(*me, True)], obj["metadata"]["name"]

    def status() -> None:
        st = op.get("stream", "clicks").get("status") or {}
        assert "kafkaCluster" in st, f"no status with the cluster yet: {st}"
        cluster = st["kafkaCluster"]
        assert (cluster["name"], cluster["streams"], cluster["nodes"]) == ("clicks", ["clicks"], 3)
        assert st["bootstrapServers"] == f"clicks-kafka.{ns}.svc:9092"
        # kwok runs no broker, so the Stream waits: for the nodes, or (once kwok calls the pods
        # ready) for a topic on brokers it cannot reach.
        ready = op.condition("stream", "clicks", "Ready")
        assert ready["status"] == "False"
        assert "Kafka cluster clicks kafka (" in ready["message"] or "topic (" in ready["message"]

    eventually(status, timeout=30)

    # A spec change prunes what is no longer wanted and adds dedicated controllers.
    op.apply(stream("clicks", controllers=3, sinks=False))

    def changed() -> dict[tuple[str, str], Any]:
        own, kafka = op.children("Stream", "clicks"), op.children("KafkaCluster", "clicks")
        assert ("Deployment", "clicks-sink-lake") not in own
        assert ("ConfigMap", "clicks-sink-lake-config") not in own
        assert ("Service", "clicks-sink-lake") not in own
        assert ("Deployment", "clicks-collector") in own
        assert ("StatefulSet", "clicks-kafka-controller") in kafka
        return kafka

    kafka = eventually(changed, timeout=60)
    controllers = kafka[("StatefulSet", "clicks-kafka-controller")]
    assert controllers["spec"]["replicas"] == 3
    assert env(controllers)["GYRE_KAFKA_ROLES"] == "controller"
    assert env(controllers)["GYRE_KAFKA_NODE_ID_BASE"] == "100"
    assert [p["name"] for p in container(controllers)["ports"]] == ["controller"]
    assert container(controllers)["readinessProbe"]["tcpSocket"] == {"port": "controller"}
    brokers = env(kafka[("StatefulSet", "clicks-kafka")])
    assert brokers["GYRE_KAFKA_ROLES"] == "broker"
    assert brokers["GYRE_KAFKA_VOTERS"] == ",".join(
        f"clicks-kafka-controller-{i}.clicks-kafka-controller.{ns}.svc:9093" for i in range(3)
    )
    assert brokers["GYRE_KAFKA_VOTER_ID_BASE"] == "100"
    broker_props = kafka[("ConfigMap", "clicks-kafka-config")]["data"]["server.properties"]
    assert "process.roles=broker\n" in broker_props
    ctl_props = kafka[("ConfigMap", "clicks-kafka-controller-config")]["data"]["server.properties"]
    assert "process.roles=controller\n" in ctl_props
    assert "listeners=CONTROLLER://0.0.0.0:9093\n" in ctl_props


def test_streams_share_a_cluster_that_goes_with_the_last_of_them(operator: OperatorProcess) -> None:
    op = operator
    op.apply(stream("a", cluster="shared", token_secret=False))
    op.apply(stream("b", cluster="shared", token_secret=False))
    a, b = uid(op, "a"), uid(op, "b")

    def shared_by(*users: tuple[str, str]) -> None:
        kafka = op.children("KafkaCluster", "shared")
        assert sorted(kafka) == [
            ("ConfigMap", "shared-kafka-config"),
            ("Service", "shared-kafka"),
            ("StatefulSet", "shared-kafka"),
        ]
        for obj in kafka.values():
            assert owners(obj) == sorted(("Stream", n, u, False) for n, u in users)

    eventually(lambda: shared_by(("a", a), ("b", b)), timeout=60)

    def listed(name: str) -> None:
        st = op.get("stream", name).get("status") or {}
        assert (st.get("kafkaCluster") or {}).get("streams") == ["a", "b"], st

    for name in ("a", "b"):
        eventually(lambda: listed(name), timeout=30)  # noqa: B023 (called at once)
        collector = op.children("Stream", name)[("Deployment", f"{name}-collector")]
        assert env(collector)["GYRE_KAFKA_BOOTSTRAP"] == f"shared-kafka.{op.namespace}.svc:9092"

    # A third Stream naming the cluster with other settings uses it as defined, and says so.
    op.apply(stream("c", cluster="shared", replicas=1, token_secret=False))

    def ignored() -> None:
        cond = op.condition("stream", "c", "Degraded")
        assert (cond["status"], cond["reason"]) == ("True", "ClusterSettingsIgnored")
        assert "defined by Stream 'a'" in cond["message"]

    eventually(ignored, timeout=60)
    assert op.children("KafkaCluster", "shared")[("StatefulSet", "shared-kafka")]["spec"]["replicas"] == 3
    op.cluster.kubectl("delete", "stream", "c", "-n", op.namespace)

    # Deleting one user keeps the cluster for the other; deleting the last removes it.
    op.cluster.kubectl("delete", "stream", "a", "-n", op.namespace)
    eventually(lambda: shared_by(("b", b)), timeout=60)
    op.cluster.kubectl("delete", "stream", "b", "-n", op.namespace)

    def gone() -> None:
        assert op.children("KafkaCluster", "shared") == {}

    eventually(gone, timeout=60)
