"""A Stream on real pods: the chart's operator, a KRaft broker, the collector and the lake sink
all run as containers on the local plane's real node (its only node), from the images
`gyre images` builds.

What this proves beyond the kwok tests: the broker image starts from the command the
kubernetes runtime renders for ``apache/kafka`` and forms its cluster under the headless
Service's names; the node's cluster DNS resolves those names for the pods and for the
operator (host network); the operator creates the topics on that broker, reads each pod's
``/status`` through the API server and reports Ready; events posted through the collector's
Service, from outside (the API server's service proxy) and from a pod (its ClusterIP, routed by
the node's kube-proxy), land as Parquet in the sink's lake and malformed ones in the
dead-letter topic; deleting the Stream removes every pod and object by their owners.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from gyre.controlplane import ControlPlane
from gyre.controlplane.images.podman import (
    KAFKA_IMAGE_REPOSITORY,
    ensure_built,
    kafka_image,
    operator_image,
    stream_runtime_image,
)
from gyre.manifests import repo_root
from operator_harness import owner_selector, stream_manifest

from tests.controlplane.cluster import Cluster
from tests.controlplane.helm import Release, install_on_node, uninstall
from tests.support import eventually, needs_root_and

ROOT = repo_root()
LAKE = "/tmp/lake/clicks"  # in the sink pod (its /tmp is an emptyDir)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.controlplane,
    needs_root_and(
        "containerd", "podman", reason="real pods need root, containerd and podman (make setup installs them)"
    ),
]


@dataclass
class Installed:
    plane: ControlPlane
    cluster: Cluster
    release: Release
    namespace: str


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    plane = ControlPlane(tmp_path_factory.mktemp("gyre-real-pods"), daemon=False, kubelet=True, nodes=())
    try:
        plane.up()
        settings = plane.node_settings()
        assert settings is not None
        runtime = stream_runtime_image(ROOT)
        for image in (operator_image(ROOT), runtime, kafka_image(ROOT)):
            plane.load_image(ensure_built(image, ROOT).archive)
        repository, tag = runtime.name.rsplit(":", 1)
        cluster = Cluster.from_plane(plane)
        release = install_on_node(
            cluster,
            settings.name,
            f"runtime.image.repository={repository}",
            f"runtime.image.tag={tag}",
            "runtime.image.pullPolicy=Never",
            f"integrations.kafka.image.repository={KAFKA_IMAGE_REPOSITORY}",
        )
        namespace = f"real-pods-{uuid.uuid4().hex[:6]}"
        cluster.kubectl("create", "namespace", namespace)
        try:
            yield Installed(plane, cluster, release, namespace)
        finally:
            cluster.kubectl("delete", "namespace", namespace, "--timeout=120s", check=False, timeout=150)
            uninstall(release)
    finally:
        plane.down()


def _stream(cluster: Cluster, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.get_json("stream.gyre.dev", "clicks", "-n", namespace)
    return obj


def _ready(cluster: Cluster, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = _stream(cluster, namespace).get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    assert conditions.get("Ready", {}).get("status") == "True", status
    return status


def _pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json("pods", "-n", namespace)["items"]
    return items


def _in_pod(cluster: Cluster, namespace: str, pod: str, script: str) -> str:
    """Run a Python script in the pod (the runtime image has pyarrow and confluent-kafka)."""
    out = cluster.kubectl(
        "exec", "-n", namespace, pod, "--", "python", "-c", textwrap.dedent(script), timeout=90
    )
    return out.stdout


def _operator_log(installed: Installed) -> str:
    selector = f"app.kubernetes.io/instance={installed.release.name},app.kubernetes.io/component=operator"
    out = installed.cluster.kubectl(
        "logs", "-n", installed.release.namespace, "-l", selector, "--tail=80", check=False
    )
    return out.stdout + out.stderr


def test_stream_runs_on_real_pods_end_to_end(installed: Installed) -> None:
    cluster, ns = installed.cluster, installed.namespace
    manifest = stream_manifest(
        "clicks",
        # What fits beside the operator on a 2-CPU node (the sink asks for its default 500m).
        managed="replicas: 1, storage: 1Gi, resources: {cpu: 500m, memory: 1Gi}",
        topic="partitions: 2, replicationFactor: 1",
        sink_lake=f'uri: "file://{LAKE}", flushInterval: 1s',
        collector="replicas: 1, resources: {cpu: 200m, memory: 512Mi}",
    )
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=manifest)
    try:
        status = eventually(lambda: _ready(cluster, ns), timeout=300, interval=2)
    except AssertionError as e:
        pods = {p["metadata"]["name"]: p["status"].get("containerStatuses") for p in _pods(cluster, ns)}
        raise AssertionError(f"{e}\npods: {json.dumps(pods)[:3000]}\n{_operator_log(installed)}") from e
    assert status["topic"]["name"] == f"{ns}.clicks"
    assert status["bootstrapServers"] == f"clicks-kafka.{ns}.svc:9092"  # the headless Service
    node = installed.plane.node_settings()
    assert node is not None
    pods = _pods(cluster, ns)
    assert {p["spec"]["nodeName"] for p in pods} == {node.name}
    roles = sorted(p["metadata"]["labels"].get("gyre.dev/role", "") for p in pods)
    assert roles == ["broker", "collector", "sink"], roles
    (broker,) = [p for p in pods if p["metadata"]["labels"].get("gyre.dev/role") == "broker"]
    (container,) = broker["spec"]["containers"]
    assert container["image"].startswith(f"{KAFKA_IMAGE_REPOSITORY}:"), container["image"]

    good = [{"user_id": f"u{i}", "ts": 1_700_000_000_000 + i * 1000, "views": i} for i in range(120)]
    bad = [{"user_id": "x", "ts": "yesterday"}, {"user_id": "y", "ts": 1_700_000_000_000, "plan": "gold"}]
    # From outside the cluster: through the API server's service proxy.
    api = installed.plane.api()
    path = f"/api/v1/namespaces/{ns}/services/http:clicks-collector:http/proxy/v1/events"
    answer = api.request("POST", path, good[:60] + bad, timeout=30)
    assert answer.status == 200, answer.body[:500]
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["accepted"] * 60 + ["rejected"] * 2

    # From a pod: the Service's name resolves (CoreDNS) to its ClusterIP, which kube-proxy's
    # rules route to the collector's pod.
    (sink,) = [p["metadata"]["name"] for p in pods if p["metadata"]["labels"].get("gyre.dev/role") == "sink"]
    service = cluster.get_json("service", "clicks-collector", "-n", ns)["spec"]
    (port,) = [p["port"] for p in service["ports"] if p["name"] == "http"]
    out = _in_pod(
        cluster,
        ns,
        sink,
        f"""
        import json, socket, urllib.request
        host = "clicks-collector.{ns}.svc"
        body = {json.dumps(good[60:])!r}.encode()
        req = urllib.request.Request(f"http://{{host}}:{port}/v1/events", data=body,
                                     headers={{"Content-Type": "application/json"}})
        with urllib.request.urlopen(req, timeout=30) as r:
            results = json.loads(r.read())["results"]
        print(json.dumps({{"ip": socket.gethostbyname(host), "statuses": [x["status"] for x in results]}}))
        """,
    )
    inside = json.loads(out)
    assert inside["ip"] == service["clusterIP"], (inside, service)
    assert inside["statuses"] == ["accepted"] * 60

    def in_lake() -> None:
        out = _in_pod(
            cluster,
            ns,
            sink,
            f"""
            import json, os, pyarrow.dataset as ds
            rows = []
            if os.path.isdir("{LAKE}"):
                table = ds.dataset("{LAKE}", format="parquet", partitioning="hive").to_table()
                rows = table.column("user_id").to_pylist()
            print(json.dumps(sorted(rows)))
            """,
        )
        assert json.loads(out) == sorted(e["user_id"] for e in good), out[:300]

    eventually(in_lake, timeout=90, interval=2)
    dead = _in_pod(
        cluster,
        ns,
        sink,
        f"""
        import json, time
        from confluent_kafka import Consumer
        c = Consumer({{"bootstrap.servers": "{status["bootstrapServers"]}", "group.id": "real-pods-dlq",
                      "auto.offset.reset": "earliest"}})
        c.subscribe(["{status["topic"]["deadLetterTopic"]}"])
        got, deadline = [], time.time() + 60
        while len(got) < 2 and time.time() < deadline:
            m = c.poll(1.0)
            if m is not None and not m.error():
                got.append(json.loads(m.value())["reason"])
        c.close()
        print(json.dumps(got))
        """,
    )
    reasons = " | ".join(json.loads(dead))
    assert "ts" in reasons, reasons
    assert "plan" in reasons, reasons

    def figures() -> None:
        st = _stream(cluster, ns).get("status") or {}
        assert st.get("acceptedTotal") == 120, st
        assert st.get("deadLetterCount") == 2, st
        assert st["sinks"][0]["recordsWritten"] == 120, st
        assert st["sinks"][0]["lag"] == 0, st

    eventually(figures, timeout=60, interval=2)

    cluster.kubectl("delete", "stream.gyre.dev", "clicks", "-n", ns, "--wait=true", timeout=120)

    def all_gone() -> None:
        left = [p["metadata"]["name"] for p in _pods(cluster, ns)]
        assert left == [], left
        for kind in ("statefulsets", "deployments", "services", "configmaps"):
            owned = cluster.get_json(kind, "-n", ns, "-l", owner_selector("Stream", "clicks"))["items"]
            assert owned == [], (kind, [o["metadata"]["name"] for o in owned])

    eventually(all_gone, timeout=120, interval=2)
    assert "Traceback" not in _operator_log(installed)
