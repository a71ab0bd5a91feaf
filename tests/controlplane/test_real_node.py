"""The local plane's real node: a kubelet on containerd runs real containers beside the kwok
nodes, and `down` leaves nothing of it on the host.

One plane with a real node for the module (one kwok node beside it). The last test stops it
and compares the host with a snapshot taken before the plane started: processes, mounts,
bridges, iptables chains, cgroups and directories, each checked on its own, from the host's
own tools rather than from the node module's bookkeeping.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gyre.controlplane import K8S_VERSION, ControlPlane, ControlPlaneError, FakeNode
from gyre.controlplane.images import HELLO, HELLO_IMAGE, ensure_image
from gyre.controlplane.images.podman import ensure_built, operator_image
from gyre.controlplane.node import HOST_DIRS
from gyre.controlplane.plane import KWOK_NODE_ANNOTATION
from gyre.manifests import repo_root
from operator_harness import owner_selector, stream_manifest

from tests.controlplane.cluster import Cluster
from tests.controlplane.helm import install_on_node, uninstall, values_of
from tests.support import eventually, free_port, needs_root_and

ROOT = repo_root()

pytestmark = [
    pytest.mark.integration,
    pytest.mark.controlplane,
    needs_root_and("containerd", reason="a real node needs root and containerd (make setup installs it)"),
]


def _iptables_chains() -> set[str]:
    """Every chain of IPv4 and IPv6 (kube-proxy writes both)."""
    chains = set()
    for tool in ("iptables-save", "ip6tables-save"):
        for table in ("filter", "nat", "mangle", "raw"):
            out = subprocess.run([tool, "-t", table], capture_output=True, text=True).stdout
            chains |= {f"{tool} {table}/{ln[1:].split()[0]}" for ln in out.splitlines() if ln.startswith(":")}
    return chains


def _bridges() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show", "type", "bridge"], capture_output=True, text=True)
    return {link["ifname"] for link in json.loads(out.stdout or "[]")}


def _cgroups() -> set[str]:
    """Top-level cgroups of every hierarchy, and any kubepods cgroup anywhere."""
    found = set()
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if hierarchy.is_dir():
            found |= {str(p) for p in hierarchy.iterdir() if p.is_dir()}
            found |= {str(p) for p in hierarchy.glob("**/kubepods") if p.is_dir()}
    return found


def _netns() -> set[str]:
    netns = Path("/run/netns")
    return {str(p) for p in netns.iterdir()} if netns.is_dir() else set()


def _processes_under(root: Path) -> list[str]:
    """Processes whose command line, working directory or root filesystem is under ``root``
    (a container's root is its rootfs in containerd's state directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            places = [os.readlink(f"/proc/{entry}/cwd"), os.readlink(f"/proc/{entry}/root"), cmdline]
        except OSError:
            continue
        if any(str(root) in p for p in places):
            found.append(f"{entry}: {cmdline[:120]}")
    return found


@dataclass(frozen=True)
class HostSnapshot:
    chains: set[str]
    bridges: set[str]
    cgroups: set[str]
    netns: set[str]
    absent_dirs: set[str]

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls(
            _iptables_chains(),
            _bridges(),
            _cgroups(),
            _netns(),
            {str(d) for d in (*HOST_DIRS, Path("/run/netns")) if not d.exists()},
        )


@dataclass
class RealNode:
    plane: ControlPlane
    cluster: Cluster
    before: HostSnapshot
    name: str


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    before = HostSnapshot.take()
    plane = ControlPlane(
        tmp_path_factory.mktemp("gyre-real-node"),
        daemon=False,
        kubelet=True,
        nodes=(FakeNode("kwok-node-0"),),
    )
    try:
        plane.up()
        settings = plane.node_settings()
        assert settings is not None
        plane.load_image(ensure_image(HELLO))
        yield RealNode(plane, Cluster.from_plane(plane), before, settings.name)
    finally:
        plane.down()


def _pod(
    name: str,
    node: str,
    *,
    args: list[str] | None = None,
    memory: str | None = None,
    host_port: int | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": HELLO_IMAGE, "imagePullPolicy": "Never"}
    if args:
        container["args"] = args
    if memory:
        container["resources"] = {"limits": {"memory": memory, "cpu": "100m"}}
    if host_port:
        # On loopback only; nothing connects to it (the chains it adds are what is tested).
        container["ports"] = [{"containerPort": 8080, "hostPort": host_port, "hostIP": "127.0.0.1"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


def _pod_status(real: RealNode, name: str) -> dict[str, Any]:
    status: dict[str, Any] = real.cluster.get_json("pod", name, "-n", "default")["status"]
    return status


def test_real_node_is_ready_beside_kwok_and_kwok_leaves_it_alone(real: RealNode) -> None:
    nodes = {n["metadata"]["name"]: n for n in real.cluster.get_json("nodes")["items"]}
    assert set(nodes) == {real.name, "kwok-node-0"}
    node = nodes[real.name]
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    # The kubelet's own heartbeat, not kwok's: kwok would have set its own reason.
    assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")
    assert KWOK_NODE_ANNOTATION not in node["metadata"].get("annotations", {})
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == K8S_VERSION
    assert info["containerRuntimeVersion"].startswith("containerd://")


def test_pod_runs_on_the_real_node_with_logs_and_exec(real: RealNode) -> None:
    name = f"hello-{uuid.uuid4().hex[:6]}"
    real.cluster.kubectl("apply", "-f", "-", input=json.dumps(_pod(name, real.name)))
    status = eventually(lambda: (s := _pod_status(real, name))["phase"] == "Running" and s, timeout=60)
    settings = real.plane.node_settings()
    assert settings is not None
    prefix = settings.subnet.rsplit(".", 1)[0] + "."
    assert status["podIP"].startswith(prefix), status["podIP"]
    # The API server fetches the log from the kubelet with its client certificate.
    logs = eventually(
        lambda: (out := real.cluster.kubectl("logs", name, check=False)).returncode == 0 and out.stdout,
        timeout=30,
    )
    assert logs == "hello from gyre\n"
    # exec goes the same way, API server to kubelet, then the kubelet's stream to containerd.
    exec_out = real.cluster.kubectl("exec", name, "--", "/hello", "once", timeout=30)
    assert exec_out.stdout == "hello from gyre\n"
    real.cluster.kubectl("delete", "pod", name, "--wait=true", timeout=60)


def test_memory_limit_kills_an_allocating_container(real: RealNode) -> None:
    name = f"alloc-{uuid.uuid4().hex[:6]}"
    real.cluster.kubectl(
        "apply", "-f", "-", input=json.dumps(_pod(name, real.name, args=["alloc"], memory="32Mi"))
    )

    def terminated() -> dict[str, Any]:
        statuses = _pod_status(real, name).get("containerStatuses") or []
        assert statuses, "no container status yet"
        assert "terminated" in statuses[0]["state"], statuses
        state: dict[str, Any] = statuses[0]["state"]["terminated"]
        return state

    state = eventually(terminated, timeout=60)
    assert (state["reason"], state["exitCode"]) == ("OOMKilled", 137)
    real.cluster.kubectl("delete", "pod", name, "--wait=true", timeout=60)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def test_helm_installed_operator_runs_on_the_real_node_and_reconciles(real: RealNode) -> None:
    """The chart's operator Deployment on the real node, from the image `gyre images` built:
    Ready through its /healthz probe, as its least-privilege ServiceAccount and uid 65532,
    reaching the API server (host network: this plane has no kube-proxy) and reconciling;
    the chart's runtime image, pull policy and Kafka values reach what it renders."""
    real.plane.load_image(ensure_built(operator_image(ROOT), ROOT).archive)
    release = install_on_node(
        real.cluster,
        real.name,
        "runtime.image.repository=gyre.local/runtime-probe",
        "runtime.image.tag=probe",
        "runtime.image.pullPolicy=Never",
        "integrations.kafka.enabled=false",
    )
    metrics = values_of(release)["operator"]["metrics"]["port"]
    namespace = f"real-helm-{uuid.uuid4().hex[:6]}"
    try:
        selector = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=operator"
        (pod,) = real.cluster.get_json("pods", "-n", release.namespace, "-l", selector)["items"]
        # helm --wait returned: the kubelet's readiness probe got 200 from /healthz.
        assert pod["spec"]["nodeName"] == real.name
        assert pod["spec"]["serviceAccountName"] == release.operator
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"], status
        assert "running" in status["state"], status
        assert status["restartCount"] == 0, status
        uid = real.cluster.kubectl(
            "exec", "-n", release.namespace, pod["metadata"]["name"], "--",
            "python", "-c", "import os; print(os.getuid())",
        ).stdout  # fmt: skip
        assert uid == "65532\n"
        assert "# TYPE gyre_reconciles_total counter" in _get(f"http://127.0.0.1:{metrics}/metrics")

        real.cluster.kubectl("create", "namespace", namespace)
        topic = "partitions: 1, replicationFactor: 1"
        managed = stream_manifest("managed", managed="replicas: 1, storage: 1Gi", topic=topic)
        # Nothing listens on loopback's port 9: the topic cannot be made, the collector is.
        external = stream_manifest(
            "external", external="bootstrapServers: ['127.0.0.1:9']", topic=topic, collector="replicas: 1"
        )
        for manifest in (managed, external):
            real.cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)

        def refused() -> str:
            stream = real.cluster.get_json("stream.gyre.dev", "managed", "-n", namespace)
            messages = " ".join(c.get("message", "") for c in stream.get("status", {}).get("conditions", []))
            assert "integrations.kafka.enabled is false" in messages, stream.get("status")
            return messages

        eventually(refused, timeout=60)

        def collector() -> dict[str, Any]:
            items = real.cluster.get_json(
                "deployments", "-n", namespace, "-l", owner_selector("Stream", "external")
            )["items"]
            assert len(items) == 1, items  # not created yet: polled again
            deployment = items[0]
            container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
            return container

        container = eventually(collector, timeout=60)
        assert container["image"] == "gyre.local/runtime-probe:probe"
        assert container["imagePullPolicy"] == "Never"
        logs = real.cluster.kubectl("logs", "-n", release.namespace, pod["metadata"]["name"]).stdout
        assert "Forbidden" not in logs, logs[-4000:]
    except AssertionError as e:
        logs = real.cluster.kubectl("logs", "-n", release.namespace, "-l", selector, "--tail=60", check=False)
        raise AssertionError(f"{e}\n--- operator log\n{logs.stdout}{logs.stderr}") from e
    finally:
        real.cluster.kubectl("delete", "namespace", namespace, "--timeout=90s", check=False, timeout=120)
        uninstall(release)


def test_down_leaves_nothing_of_the_node_on_the_host(real: RealNode) -> None:
    # A pod that still runs when the node goes down: its container, sandbox, netns, veth,
    # masquerade and host-port chains and cgroups must all go with it.
    pod = _pod("left-running", real.name, host_port=free_port())
    real.cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    eventually(lambda: _pod_status(real, "left-running")["phase"] == "Running", timeout=60)
    settings = real.plane.node_settings()
    assert settings is not None
    node_root = Path(settings.root)

    down_error: ControlPlaneError | None = None
    try:
        real.plane.down()
    except ControlPlaneError as e:
        down_error = e
    after = HostSnapshot.take()
    mounts = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if str(node_root) in ln]

    assert _processes_under(real.plane.state_dir) == [], "processes left"
    assert mounts == [], "mounts left"
    assert after.netns - real.before.netns == set(), "network namespaces left"
    assert after.bridges - real.before.bridges == set(), "bridges left"
    assert after.chains - real.before.chains == set(), "iptables chains left"
    assert after.cgroups - real.before.cgroups == set(), "cgroups left"
    assert not node_root.exists(), "the node's directory is left"
    assert real.before.absent_dirs - after.absent_dirs == set(), "host directories left"
    assert down_error is None, str(down_error)
