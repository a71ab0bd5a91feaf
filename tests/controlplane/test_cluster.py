"""The local control plane behaves like a cluster: real API server, scheduling on kwok nodes,
controllers that complete Jobs and bind volumes, and a clean start/stop cycle."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gyre.controlplane import K8S_VERSION, ControlPlane, running_pids
from gyre.controlplane.plane import COMPONENTS

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]


def get_json(cluster: Cluster, *args: str) -> Any:
    return cluster.get_json(*args)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are admitted once the namespace's default ServiceAccount exists.
    eventually(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def test_server_reports_the_built_version(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"] == K8S_VERSION
    assert version["major"] == "1"
    assert version["minor"] == K8S_VERSION.split(".")[1]


def test_kwok_nodes_are_ready_and_one_has_gpus(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in get_json(cluster, "nodes")["items"]}
    kwok = sorted(n for n in nodes if n.startswith("kwok-node-"))
    assert len(kwok) >= 2
    for name in kwok:
        conditions = {c["type"]: c["status"] for c in nodes[name]["status"]["conditions"]}
        assert conditions["Ready"] == "True", name
    gpu_nodes = [n for n in kwok if "nvidia.com/gpu" in nodes[n]["status"]["allocatable"]]
    assert len(gpu_nodes) == 1


def test_deployment_pods_are_scheduled_and_run(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "create",
        "deployment",
        "web",
        "--image=registry.invalid/web:1",
        "--replicas=3",
        "-n",
        namespace,
    )

    def all_running() -> list[dict[str, Any]]:
        pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=web")["items"]
        assert len(pods) == 3
        for p in pods:
            assert p["status"]["phase"] == "Running"
            assert p["spec"]["nodeName"].startswith("kwok-node-")
            assert p["status"].get("podIP")
        return list(pods)

    eventually(all_running)
    eventually(
        lambda: (
            get_json(cluster, "deployment", "web", "-n", namespace)["status"].get("readyReplicas") == 3
            or None
        )
    )


def test_job_runs_to_completion(cluster: Cluster, namespace: str) -> None:
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once", "namespace": namespace},
        "spec": {
            "completions": 2,
            "parallelism": 2,
            "completionMode": "Indexed",
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "registry.invalid/job:1"}],
                }
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def complete() -> None:
        job = get_json(cluster, "job", "once", "-n", namespace)
        conditions = {c["type"]: c["status"] for c in job["status"].get("conditions", [])}
        assert conditions.get("Complete") == "True", job["status"]
        assert job["status"]["succeeded"] == 2

    eventually(complete)


def test_persistent_volume_claims_bind(cluster: Cluster, namespace: str) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(claim))

    def bound() -> None:
        pvc = get_json(cluster, "pvc", "data", "-n", namespace)
        assert pvc["status"].get("phase") == "Bound", pvc["status"]

    eventually(bound)


def test_service_account_tokens_are_issued(cluster: Cluster, namespace: str) -> None:
    token = cluster.kubectl("create", "token", "default", "-n", namespace).stdout.strip()
    assert token.count(".") == 2  # a signed JWT


def test_rbac_is_enforced(cluster: Cluster, namespace: str) -> None:
    sa = f"system:serviceaccount:{namespace}:default"
    denied = cluster.kubectl("auth", "can-i", "list", "secrets", "-n", namespace, f"--as={sa}", check=False)
    assert denied.stdout.strip() == "no"
    allowed = cluster.kubectl("auth", "can-i", "list", "secrets", "-n", namespace)
    assert allowed.stdout.strip() == "yes"


def _plane_processes(state_dir: Path) -> list[int]:
    return list(running_pids(state_dir))


def test_up_is_reused_and_down_leaves_no_process(tmp_path: Path) -> None:
    """A second plane of its own: the session's plane must stay up for the other tests."""
    state = tmp_path / "plane"
    plane = ControlPlane(state, daemon=False)
    try:
        t0 = time.monotonic()
        plane.up()
        first_up_s = time.monotonic() - t0
        pids = {c: plane.pid(c) for c in COMPONENTS}
        assert all(pids.values()), pids
        assert sorted(_plane_processes(state)) == sorted(p for p in pids.values() if p)

        # A second `up` finds the running plane and keeps it.
        t0 = time.monotonic()
        ControlPlane(state, daemon=False).up()
        reuse_s = time.monotonic() - t0
        assert {c: plane.pid(c) for c in COMPONENTS} == pids

        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "survives", "namespace": "default"},
            "data": {"k": "v"},
        }
        resp = plane.api().request("POST", "/api/v1/namespaces/default/configmaps", cm)
        assert resp.status == 201, resp.body

        plane.down()
        assert _plane_processes(state) == []
        for pid in pids.values():
            assert pid is not None
            assert not Path(f"/proc/{pid}").exists(), f"pid {pid} is still in /proc"
        assert not plane.status().running

        # Restarting on the kept data and certificates: the ConfigMap is still there.
        t0 = time.monotonic()
        plane.up()
        restart_s = time.monotonic() - t0
        resp = plane.api().request("GET", "/api/v1/namespaces/default/configmaps/survives")
        assert resp.status == 200
        print(
            json.dumps(
                {
                    "first_up_s": round(first_up_s, 1),
                    "reuse_up_s": round(reuse_s, 2),
                    "restart_up_s": round(restart_s, 1),
                }
            )
        )
    finally:
        plane.down()
    assert _plane_processes(state) == []
