"""The kubernetes runtime against a real API server with kwok nodes: apply, observe, prune,
idempotence, GPU placement, recreation on immutable changes, delete, and the watch-fed cache
(what an unchanged pass costs, drift repaired once the watch shows it, owners told of
changes)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from gyre.core.workload import (
    ConfigDirRef,
    EndpointRef,
    Owner,
    Port,
    Readiness,
    Resources,
    Volume,
    VolumePathRef,
    Workload,
    WorkloadKind,
    WorkloadPhase,
    WorkloadStatus,
)
from gyre.runtimes import k8s_render
from gyre.runtimes.kubernetes import KubernetesRuntime
from kubernetes.client import ApiClient

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]

KINDS = "configmaps,services,deployments,statefulsets,jobs"
GPU_NODE = "kwok-node-2"


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[ApiClient]:
    client = cluster.api_client()
    yield client
    client.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def runtime(api: ApiClient) -> Iterator[KubernetesRuntime]:
    rt = KubernetesRuntime(api)
    yield rt
    asyncio.run(rt.close())


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"rt-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    eventually(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def owner(cluster: Cluster, namespace: str) -> Owner:
    """A ConfigMap stands in for the owning custom resource: any object with a uid will do."""
    name = f"owner-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "configmap", name, "-n", namespace)
    uid = cluster.get_json("configmap", name, "-n", namespace)["metadata"]["uid"]
    return Owner(kind="ConfigMap", api_version="v1", namespace=namespace, name=name, uid=uid)


def objects(cluster: Cluster, owner: Owner, kinds: str = KINDS) -> dict[tuple[str, str], Any]:
    items = cluster.get_json(kinds, "-n", owner.namespace, "-l", k8s_render.owner_selector(owner))["items"]
    return {(i["kind"], i["metadata"]["name"]): i for i in items}


def pods(cluster: Cluster, owner: Owner, workload: str) -> list[dict[str, Any]]:
    selector = f"{k8s_render.owner_selector(owner)},{k8s_render.LABEL_WORKLOAD}={workload}"
    items: list[dict[str, Any]] = cluster.get_json("pods", "-n", owner.namespace, "-l", selector)["items"]
    return items


def observe(runtime: KubernetesRuntime, owner: Owner) -> dict[str, WorkloadStatus]:
    return asyncio.run(runtime.observe(owner))


def web(replicas: int = 2, kafka: bool = True) -> Workload:
    return Workload(
        name="web",
        role="collector",
        kind=WorkloadKind.SERVICE,
        command=("python", "-m", "gyre.pipelines.collector"),
        replicas=replicas,
        ports=(Port("http", 8080),),
        readiness=Readiness(port="http", http_path="/healthz"),
        env={"KAFKA": EndpointRef("kafka", workload="kafka")} if kafka else {},
        resources=Resources(cpu="100m", memory="128Mi"),
    )


def kafka() -> Workload:
    return Workload(
        name="kafka",
        role="broker",
        kind=WorkloadKind.STATEFUL,
        command=("kafka-server-start.sh", "$(CONFIG)/server.properties"),
        replicas=2,
        ports=(Port("kafka", 9092),),
        volumes=(Volume("data", "/var/lib/kafka", size="1Gi"),),
        config_files={"server.properties": "process.roles=broker,controller\n"},
        env={"CONFIG": ConfigDirRef(), "DATA": VolumePathRef("data")},
    )


def train(command: tuple[str, ...] = ("python", "-m", "gyre.pipelines.train")) -> Workload:
    return Workload(
        name="train",
        role="worker",
        kind=WorkloadKind.BATCH,
        command=command,
        replicas=2,
        ports=(Port("rdzv", 29500),),
        backoff_limit=1,
    )


def test_apply_observe_prune_and_delete(cluster: Cluster, runtime: KubernetesRuntime, owner: Owner) -> None:
    asyncio.run(runtime.apply(owner, [web(), kafka(), train()]))

    def converged() -> dict[str, WorkloadStatus]:
        st = observe(runtime, owner)
        assert st["web"].phase is WorkloadPhase.READY, st["web"]
        assert st["kafka"].phase is WorkloadPhase.READY, st["kafka"]
        assert st["train"].phase is WorkloadPhase.SUCCEEDED, st["train"]
        return st

    st = eventually(converged)
    assert (st["web"].replicas, st["web"].ready_replicas) == (2, 2)
    assert (st["kafka"].replicas, st["kafka"].ready_replicas) == (2, 2)
    assert st["train"].succeeded == 2
    assert st["train"].exit_codes == (0, 0)

    for name in ("web", "kafka", "train"):
        ps = pods(cluster, owner, name)
        assert ps, name
        assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in ps)
    # StatefulSet pods got their claims bound and their ordinal as GYRE_REPLICA_INDEX source.
    claims = objects(cluster, owner, "pvc")
    assert len(claims) == 2
    assert all(c["status"]["phase"] == "Bound" for c in claims.values())
    assert sorted(
        p["metadata"]["labels"][k8s_render.POD_INDEX_LABEL] for p in pods(cluster, owner, "kafka")
    ) == ["0", "1"]
    assert runtime.endpoint(owner, "kafka", "kafka") == (f"{owner.name}-kafka.{owner.namespace}.svc:9092")

    # Re-applying the same workloads changes nothing on the server. Controllers may still be
    # writing status right after convergence, so the comparison is retried until quiet.
    def reapply_is_a_no_op() -> dict[tuple[str, str], Any]:
        before = objects(cluster, owner)
        asyncio.run(runtime.apply(owner, [web(), kafka(), train()]))
        after = objects(cluster, owner)
        assert {k: v["metadata"]["resourceVersion"] for k, v in after.items()} == {
            k: v["metadata"]["resourceVersion"] for k, v in before.items()
        }
        return before

    before = eventually(reapply_is_a_no_op, timeout=30)

    # Dropping a workload prunes its objects and leaves the others' specs alone.
    asyncio.run(runtime.apply(owner, [kafka(), train()]))
    remaining = objects(cluster, owner)
    assert ("Deployment", f"{owner.name}-web") not in remaining
    assert ("Service", f"{owner.name}-web") not in remaining
    sts_key = ("StatefulSet", f"{owner.name}-kafka")
    assert remaining[sts_key]["metadata"]["generation"] == before[sts_key]["metadata"]["generation"]
    eventually(lambda: _assert_no_pods(cluster, owner, "web"))
    assert "web" not in observe(runtime, owner)

    # Drift is repaired: a hand edit of a field Gyre owns is reverted by the first apply after
    # the watch shows it (the change is also what runs the owner's next pass).
    sts_name = f"{owner.name}-kafka"
    cluster.kubectl("scale", "statefulset", sts_name, "-n", owner.namespace, "--replicas=5")

    def scaled_back() -> None:
        asyncio.run(runtime.apply(owner, [kafka(), train()]))
        assert cluster.get_json("statefulset", sts_name, "-n", owner.namespace)["spec"]["replicas"] == 2

    eventually(scaled_back, 10, what="the hand-scaled StatefulSet back at 2 replicas")

    asyncio.run(runtime.delete(owner))
    assert objects(cluster, owner) == {}
    eventually(lambda: _assert_nothing_left(cluster, owner))
    assert {s.phase for s in observe(runtime, owner).values()} <= {WorkloadPhase.MISSING}


def _assert_no_pods(cluster: Cluster, owner: Owner, workload: str) -> None:
    assert pods(cluster, owner, workload) == []


def _assert_nothing_left(cluster: Cluster, owner: Owner) -> None:
    assert objects(cluster, owner, "pods,pvc") == {}


def test_gpu_request_lands_on_the_gpu_node(
    runtime: KubernetesRuntime, owner: Owner, cluster: Cluster
) -> None:
    gpu = Workload(
        name="gpu",
        role="worker",
        kind=WorkloadKind.BATCH,
        command=("python", "-m", "gyre.pipelines.train"),
        replicas=2,
        resources=Resources(cpu="1", memory="1Gi", gpu=1),
    )
    asyncio.run(runtime.apply(owner, [gpu]))
    eventually(lambda: _assert_phase(runtime, owner, "gpu", WorkloadPhase.SUCCEEDED))
    nodes = {p["spec"]["nodeName"] for p in pods(cluster, owner, "gpu")}
    assert nodes == {GPU_NODE}
    asyncio.run(runtime.delete(owner))


def test_unschedulable_pods_are_pending_with_the_schedulers_reason(
    runtime: KubernetesRuntime, owner: Owner
) -> None:
    too_big = Workload(
        name="huge",
        role="server",
        kind=WorkloadKind.SERVICE,
        command=("python", "-m", "gyre.pipelines.serve"),
        resources=Resources(gpu=64),
    )
    asyncio.run(runtime.apply(owner, [too_big]))

    def pending() -> WorkloadStatus:
        st = observe(runtime, owner)["huge"]
        assert st.phase is WorkloadPhase.PENDING
        assert "nvidia.com/gpu" in st.message, st.message
        return st

    eventually(pending)
    asyncio.run(runtime.delete(owner))


def test_changed_job_template_recreates_the_job(
    cluster: Cluster, runtime: KubernetesRuntime, owner: Owner
) -> None:
    """A Job's pod template is immutable: a changed command must replace the Job, not fail."""
    asyncio.run(runtime.apply(owner, [train()]))
    name = f"{owner.name}-train"
    first = cluster.get_json("job", name, "-n", owner.namespace)["metadata"]["uid"]
    asyncio.run(runtime.apply(owner, [train(("python", "-m", "gyre.pipelines.train", "--v2"))]))
    job = cluster.get_json("job", name, "-n", owner.namespace)
    assert job["metadata"]["uid"] != first
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--v2"
    eventually(lambda: _assert_phase(runtime, owner, "train", WorkloadPhase.SUCCEEDED))
    asyncio.run(runtime.delete(owner))


def test_configmap_and_service_drift_is_repaired_though_unchanged_ones_are_only_read(
    cluster: Cluster, runtime: KubernetesRuntime, owner: Owner
) -> None:
    """A ConfigMap or Service rendered as last applied is read, not applied again, unless
    something changed it since: a hand edit and a deletion are still repaired."""
    job = Workload(
        name="job",
        role="worker",
        kind=WorkloadKind.BATCH,
        command=("python", "-m", "gyre.pipelines.train"),
        ports=(Port("http", 8080),),
        config_files={"app.conf": "a=1\n"},
    )
    asyncio.run(runtime.apply(owner, [job]))
    children = objects(cluster, owner, "configmaps,services")
    (config,) = [n for k, n in children if k == "ConfigMap"]
    (service,) = [n for k, n in children if k == "Service"]
    ns = owner.namespace
    cluster.kubectl("patch", "configmap", config, "-n", ns, "-p", '{"data": {"app.conf": "a=2\\n"}}')
    cluster.kubectl(
        "label", "service", service, "-n", ns, f"{k8s_render.LABEL_WORKLOAD}=other", "--overwrite"
    )

    # The runtime sees a change once its watch delivers it (which is also what makes the
    # operator run the owner's next pass): the pass after that repairs it.
    def repaired() -> None:
        asyncio.run(runtime.apply(owner, [job]))
        assert cluster.get_json("configmap", config, "-n", ns)["data"] == {"app.conf": "a=1\n"}
        labels = cluster.get_json("service", service, "-n", ns)["metadata"]["labels"]
        assert labels[k8s_render.LABEL_WORKLOAD] == "job"

    eventually(repaired, 10, what="the hand edits undone")

    cluster.kubectl("delete", "service", service, "-n", ns)

    def recreated() -> None:
        asyncio.run(runtime.apply(owner, [job]))
        labels = cluster.get_json("service", service, "-n", ns)["metadata"]["labels"]
        assert labels[k8s_render.LABEL_WORKLOAD] == "job"

    eventually(recreated, 10, what="the deleted Service back")
    asyncio.run(runtime.delete(owner))


class Requests:
    """Counts the API requests the runtime makes (the real client's, not a stand-in)."""

    def __init__(self, runtime: KubernetesRuntime) -> None:
        self.calls: list[tuple[str, str]] = []
        self._kube = runtime.kube
        self._request = runtime.kube.request

    def __enter__(self) -> Requests:
        def counting(method: str, path: str, **kwargs: Any) -> Any:
            self.calls.append((method, path))
            return self._request(method, path, **kwargs)

        self._kube.request = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        self._kube.request = self._request  # type: ignore[method-assign]


def test_an_unchanged_pass_costs_no_api_call_and_spec_drift_is_repaired(
    cluster: Cluster, runtime: KubernetesRuntime, owner: Owner
) -> None:
    """Once applied, applying and observing the same workloads again is read from the watch
    cache: no request at all. A spec changed by hand (a new generation) is applied again."""
    workloads = [web(replicas=1, kafka=False), train()]
    asyncio.run(runtime.apply(owner, workloads))
    eventually(lambda: _assert_phase(runtime, owner, "web", WorkloadPhase.READY))
    with Requests(runtime) as requests:
        for _ in range(3):
            asyncio.run(runtime.apply(owner, workloads))
            observed = observe(runtime, owner)
            asyncio.run(runtime.read_status(owner, workloads[0]))
    assert requests.calls == []
    assert set(observed) == {"web", "train"}

    name = f"{owner.name}-web"
    cluster.kubectl("scale", "deployment", name, "-n", owner.namespace, "--replicas=3")

    def restored() -> None:
        asyncio.run(runtime.apply(owner, workloads))
        assert cluster.get_json("deployment", name, "-n", owner.namespace)["spec"]["replicas"] == 1

    eventually(restored, 10, what="the hand-scaled Deployment back at 1 replica")
    asyncio.run(runtime.delete(owner))


def test_subscribers_hear_of_changes_to_an_owners_objects(
    cluster: Cluster, runtime: KubernetesRuntime, owner: Owner
) -> None:
    heard: list[tuple[str, str, str]] = []
    runtime.subscribe(lambda ns, kind, name: heard.append((ns, kind, name)))
    asyncio.run(runtime.apply(owner, [web(replicas=1, kafka=False)]))
    me = (owner.namespace, owner.kind, owner.name)
    eventually(lambda: _assert_phase(runtime, owner, "web", WorkloadPhase.READY))
    eventually(lambda: heard.count(me) >= 3, 10, what="the Deployment, its pod and their updates heard")
    before = heard.count(me)
    cluster.kubectl("delete", "pods", "-n", owner.namespace, "-l", k8s_render.owner_selector(owner))
    eventually(lambda: heard.count(me) > before, 10, what="the deleted pod heard")
    asyncio.run(runtime.delete(owner))


def test_deleting_the_owner_garbage_collects_children(
    cluster: Cluster, runtime: KubernetesRuntime, owner: Owner
) -> None:
    asyncio.run(runtime.apply(owner, [web(replicas=1, kafka=False)]))
    assert objects(cluster, owner)
    cluster.kubectl("delete", "configmap", owner.name, "-n", owner.namespace)
    eventually(lambda: _assert_no_objects(cluster, owner))


def _assert_no_objects(cluster: Cluster, owner: Owner) -> None:
    assert objects(cluster, owner, KINDS + ",pods") == {}


def _assert_phase(runtime: KubernetesRuntime, owner: Owner, workload: str, phase: WorkloadPhase) -> None:
    st = observe(runtime, owner)[workload]
    assert st.phase is phase, st
