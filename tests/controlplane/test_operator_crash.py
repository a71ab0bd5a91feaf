"""The operator SIGKILLed in the middle of reconciling 50 TrainingJobs, then started again.

The requirement: no duplicated children, no lost status, everything converges. The operator
runs on the kubernetes runtime against kwok nodes (Job pods go Running, then Succeeded; no
container runs). It is killed at both moments a crash can leave something half done: while
children are being created (a TrainingJob has part of its children, others none), and while
statuses are being written (some TrainingJobs have one, others not). The operator started
after that must bring every TrainingJob to Succeeded with exactly the children it renders,
adopting what the killed ones created (the same objects, same uids, no second pod) and keeping
the status and condition transition times they wrote.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiClient
from operator_harness import OperatorProcess, fresh_namespace, install_crds

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytestmark = pytest.mark.controlplane

COUNT = 50
SELECTOR = "app.kubernetes.io/managed-by=gyre,gyre.dev/owner-kind=TrainingJob"
# Per TrainingJob (cleanPodPolicy None keeps every child once finished, so the set does not
# depend on which of the two Jobs kwok happens to finish first).
EXPECTED_CHILDREN = ("ConfigMap", "Job", "Service")
WORKLOADS = ("launcher", "worker")
PODS = {"launcher": 1, "worker": 2}


def name(i: int) -> str:
    return f"tj-{i:02d}"


def manifests() -> str:
    return "".join(
        f"""---
apiVersion: gyre.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name(i)}}}
spec:
  dataset: {{path: "file:///data/x", label: churned}}
  hyperparameters: {{epochs: 1}}
  workers: 2
  resources: {{cpu: 100m, memory: 128Mi}}
  runPolicy: {{cleanPodPolicy: "None"}}
  output: {{uri: "file:///models"}}
"""
        for i in range(COUNT)
    )


@dataclass
class World:
    """The namespace at one moment: TrainingJobs, and their children and pods by owner name."""

    jobs: dict[str, dict[str, Any]]
    children: dict[str, dict[tuple[str, str], dict[str, Any]]] = field(default_factory=dict)
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def with_status(self) -> list[str]:
        return [n for n, tj in self.jobs.items() if (tj.get("status") or {}).get("observedGeneration")]

    def with_children(self) -> list[str]:
        return [n for n in self.jobs if self.children.get(n)]

    def complete(self) -> list[str]:
        """TrainingJobs with all their children."""
        want = len(EXPECTED_CHILDREN) * len(WORKLOADS)
        return [n for n in self.jobs if len(self.children.get(n, {})) == want]

    def half_applied(self) -> list[str]:
        return sorted(set(self.with_children()) - set(self.complete()))

    def describe(self) -> str:
        return (
            f"{len(self.with_status())} of {len(self.jobs)} with status, "
            f"{len(self.complete())} with all children, {len(self.half_applied())} with some"
        )


class Reader:
    """Lists the namespace in a few raw calls: fast enough to poll while the operator works."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        self.api = api
        self.ns = namespace

    def _list(self, path: str, selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        response = self.api.call_api(
            *self.api.param_serialize(
                method="GET",
                resource_path=path,
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            ),
            _request_timeout=30,
        )
        items: list[dict[str, Any]] = json.loads(response.response.data)["items"]
        return items

    def world(self, children: bool = True, pods: bool = False) -> World:
        ns = self.ns
        jobs = self._list(f"/apis/gyre.dev/v1alpha1/namespaces/{ns}/trainingjobs")
        w = World(jobs={tj["metadata"]["name"]: tj for tj in jobs})
        paths = {
            "ConfigMap": f"/api/v1/namespaces/{ns}/configmaps",
            "Service": f"/api/v1/namespaces/{ns}/services",
            "Job": f"/apis/batch/v1/namespaces/{ns}/jobs",
        }
        for kind, path in paths.items() if children else ():
            for obj in self._list(path, SELECTOR):
                owner = obj["metadata"]["labels"]["gyre.dev/owner-name"]
                w.children.setdefault(owner, {})[(kind, obj["metadata"]["name"])] = obj
        for pod in self._list(f"/api/v1/namespaces/{ns}/pods", SELECTOR) if pods else ():
            w.pods.setdefault(pod["metadata"]["labels"]["gyre.dev/owner-name"], []).append(pod)
        return w


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    install_crds(cluster)
    ns = fresh_namespace(cluster, "crash")
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def reader(cluster: Cluster, namespace: str) -> Iterator[Reader]:
    api = cluster.api_client()
    yield Reader(api, namespace)
    api.close()  # type: ignore[no-untyped-call]


def run_until(
    op: OperatorProcess, reader: Reader, moment: Callable[[World], bool], children: bool
) -> tuple[World, float]:
    """Start ``op``, SIGKILL it as soon as the world reaches ``moment``: the world after, and
    how long it ran. (``children``: whether ``moment`` looks at children; lists are slower.)"""
    t0 = time.monotonic()
    op.start()

    def reached() -> None:
        w = reader.world(children=children)
        assert moment(w), w.describe()

    eventually(reached, timeout=90, interval=0.02)
    op.kill()
    return reader.world(pods=True), time.monotonic() - t0


def kill_at_first_status(op: OperatorProcess, reader: Reader) -> tuple[World, float]:
    """Start ``op`` and SIGKILL it the moment a watch sees it write a TrainingJob's status.

    A watch, not a poll: statuses are written concurrently, and a poll's round trip can be long
    enough for all of them to land before the kill."""
    api = client.CustomObjectsApi(reader.api)
    listed = api.list_namespaced_custom_object("gyre.dev", "v1alpha1", reader.ns, "trainingjobs")
    had = {
        tj["metadata"]["name"] for tj in listed["items"] if (tj.get("status") or {}).get("observedGeneration")
    }
    t0 = time.monotonic()
    op.start()
    stream = watch.Watch()
    try:
        for event in stream.stream(
            api.list_namespaced_custom_object, "gyre.dev", "v1alpha1", reader.ns, "trainingjobs",
            resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=90,
        ):  # fmt: skip
            obj = event["object"]
            if (obj.get("status") or {}).get("observedGeneration") and obj["metadata"]["name"] not in had:
                op.kill()
                break
        else:
            raise AssertionError("the operator wrote no status within 90 s")
    finally:
        stream.stop()
    return reader.world(pods=True), time.monotonic() - t0


def test_sigkill_mid_reconcile_then_restart_converges(
    cluster: Cluster, namespace: str, reader: Reader, tmp_path: Path
) -> None:
    """Killed twice, mid-apply and mid-status-write; a third operator converges everything."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifests())
    assert len(reader.world(children=False).jobs) == COUNT
    ops = []
    for i in range(3):
        (tmp_path / f"op{i}").mkdir()
        ops.append(OperatorProcess(cluster, namespace, "kubernetes", tmp_path / f"op{i}"))
    try:
        # 1. Mid-apply: a TrainingJob has part of its children, others none yet.
        applying, took = run_until(
            ops[0],
            reader,
            lambda w: bool(w.half_applied()) and len(w.with_children()) < COUNT // 2,
            children=True,
        )
        print(f"first operator killed after {took:.1f}s: {applying.describe()}")
        assert 0 < len(applying.with_children()) < COUNT

        # 2. Mid-status: some TrainingJobs have a status, others none yet.
        writing, took = kill_at_first_status(ops[1], reader)
        print(f"second operator killed after {took:.1f}s: {writing.describe()}")
        assert 0 < len(writing.with_status()) < COUNT

        # 3. A third operator converges everything.
        t0 = time.monotonic()
        ops[2].start()
        final = eventually(lambda: converged(reader), timeout=150, interval=1)
        print(f"third operator converged all {COUNT} in {time.monotonic() - t0:.1f}s")
        # Picking up after a crash is an ordinary reconcile, not an error path.
        assert metric(ops[2], "gyre_reconcile_errors_total") == 0
    finally:
        for op in ops:
            op.stop()
            # Shown by pytest only when the test failed.
            print(f"--- operator log ({op.log_path}) ---\n{op.log(100)}")

    for n in final.jobs:
        assert_status_kept(n, writing.jobs[n].get("status") or {}, final.jobs[n]["status"])
        # Each operator adopted what the ones before created: the same objects, not copies.
        for before in (applying, writing):
            for key, obj in before.children.get(n, {}).items():
                assert final.children[n][key]["metadata"]["uid"] == obj["metadata"]["uid"], (n, key)
            final_pods = {p["metadata"]["uid"] for p in final.pods[n]}
            for pod in before.pods.get(n, []):
                assert pod["metadata"]["uid"] in final_pods, (n, pod["metadata"]["name"])


def converged(reader: Reader) -> World:
    w = reader.world(pods=True)
    assert len(w.jobs) == COUNT
    lagging = {
        n: (tj.get("status") or {}).get("phase")
        for n, tj in w.jobs.items()
        if (tj.get("status") or {}).get("observedGeneration") != tj["metadata"]["generation"]
        or tj["status"].get("phase") != "Succeeded"
    }
    assert not lagging, f"{len(lagging)} not Succeeded yet: {lagging}"
    for n, tj in w.jobs.items():
        st = tj["status"]
        conds = {c["type"]: c for c in st["conditions"]}
        for type_, value in (("Created", "True"), ("Succeeded", "True"), ("Failed", "False")):
            assert conds[type_]["status"] == value, (n, conds[type_])
            assert conds[type_]["observedGeneration"] == tj["metadata"]["generation"], (n, type_)
        assert st["replicaStatuses"]["worker"]["succeeded"] == 2, (n, st["replicaStatuses"])
        assert st["replicaStatuses"]["launcher"]["succeeded"] == 1, (n, st["replicaStatuses"])
        assert sorted(st["endedWorkloads"]) == list(WORKLOADS), n
        assert st["startTime"], n
        assert st["completionTime"], n

        expected = {
            (kind, f"{n}-{w}-config" if kind == "ConfigMap" else f"{n}-{w}")
            for kind in EXPECTED_CHILDREN
            for w in WORKLOADS
        }
        children = w.children.get(n, {})
        assert set(children) == expected, (n, sorted(children))
        uid = tj["metadata"]["uid"]
        for key, obj in children.items():
            refs = [
                (r["kind"], r["name"], r["uid"], r.get("controller"))
                for r in obj["metadata"]["ownerReferences"]
            ]
            assert refs == [("TrainingJob", n, uid, True)], (n, key, refs)
        for workload, count in PODS.items():
            pods = [p for p in w.pods.get(n, []) if p["metadata"]["labels"]["gyre.dev/workload"] == workload]
            assert len(pods) == count, (n, workload, [p["metadata"]["name"] for p in pods])
            assert {p["status"]["phase"] for p in pods} == {"Succeeded"}, (n, workload)
            # The pods belong to the Job that exists now: no Job was replaced along the way.
            job = children[("Job", f"{n}-{workload}")]
            owners = {p["metadata"]["ownerReferences"][0]["uid"] for p in pods}
            assert owners == {job["metadata"]["uid"]}, (n, workload)
    return w


def metric(op: OperatorProcess, name: str) -> float:
    """The sum of a metric's samples, scraped from the operator."""
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def assert_status_kept(n: str, before: dict[str, Any], after: dict[str, Any]) -> None:
    """What a killed operator wrote survives: the transition times of conditions that did not
    flip since (same status, same reason; one with another reason may have flipped and back),
    and the times that mark the run's start and end."""
    if not before:
        return
    assert after["observedGeneration"] == before["observedGeneration"], n
    old = {c["type"]: c for c in before.get("conditions") or []}
    new = {c["type"]: c for c in after["conditions"]}
    assert old["Created"]["status"] == "True", (n, old["Created"])
    for type_, c in old.items():
        now = new[type_]
        if now["status"] != c["status"]:
            continue
        if now.get("reason") == c.get("reason"):
            assert now["lastTransitionTime"] == c["lastTransitionTime"], (n, type_, c, now)
        else:  # flipped and back since (Running: False while pending, True, False once done)
            assert now["lastTransitionTime"] >= c["lastTransitionTime"], (n, type_, c, now)
    for key in ("startTime", "completionTime"):
        if before.get(key):
            assert after[key] == before[key], (n, key)
    if before.get("phase") == "Succeeded":
        assert after["conditions"] == before["conditions"], n
