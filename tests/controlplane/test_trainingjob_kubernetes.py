"""TrainingJobs through the operator and the kubernetes runtime, on kwok nodes.

What a cluster gets for a TrainingJob: a launcher Job and an indexed worker Job, headless
Services for their ports (the launcher's rendezvous, and torch's store for DDP), GPU limits
that the scheduler places on the GPU node, the env that points workers at the launcher, and
the trainer config in a mounted ConfigMap. kwok runs no containers: Job pods go Running,
then Succeeded. A gang whose workers cannot be scheduled fails with GangTimeout instead of
hanging.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gyre.pipelines.trainer.config import TrainerConfig
from operator_harness import OperatorProcess, owner_selector, running_operator

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytestmark = pytest.mark.controlplane

GPU_NODE = "kwok-node-2"
CONFIG_DIR = "/etc/gyre/config"


def job(
    name: str, *, gpu: int = 0, backend: str = "horovod", gang_s: int = 300, clean: str = "Running"
) -> str:
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  dataset: {{path: "file:///data/x", label: churned, features: [plan, page_views]}}
  model: {{architecture: mlp, task: binary, params: {{hidden: [8]}}}}
  hyperparameters: {{epochs: 2, batchSize: 16, learningRate: 0.05, seed: 7}}
  workers: 2
  backend: {backend}
  resources: {{cpu: 500m, memory: 512Mi, gpu: {gpu}}}
  runPolicy: {{backoffLimit: 1, gangTimeoutSeconds: {gang_s}, cleanPodPolicy: "{clean}"}}
  output: {{uri: "file:///models"}}
"""


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    # The namespace goes: pending pods would hold their (fake) nodes' capacity for the tests
    # that follow.
    yield from running_operator(
        cluster, tmp_path, "tjk8s", "kubernetes", show="gtj", show_wide="jobs,pods", delete_namespace=True
    )


def status(op: OperatorProcess, name: str) -> dict[str, Any]:
    return dict(op.get("trainingjob", name).get("status") or {})


def created(op: OperatorProcess, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The rendered children, once the TrainingJob's status says they were applied."""

    def check() -> dict[tuple[str, str], dict[str, Any]]:
        assert status(op, name).get("observedGeneration") == 1, status(op, name)
        assert op.condition("trainingjob", name, "Created")["status"] == "True"
        return op.children("TrainingJob", name)

    return eventually(check, timeout=60)


def pods(op: OperatorProcess, name: str, workload: str) -> list[dict[str, Any]]:
    selector = f"{owner_selector('TrainingJob', name)},gyre.dev/workload={workload}"
    items: list[dict[str, Any]] = op.cluster.get_json("pods", "-n", op.namespace, "-l", selector)["items"]
    return items


def container(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]["template"]["spec"] if "template" in obj["spec"] else obj["spec"]
    c: dict[str, Any] = spec["containers"][0]
    return c


def env(obj: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(obj)["env"]}


def ports(obj: dict[str, Any]) -> list[tuple[str, int]]:
    if obj["kind"] == "Service":
        return [(p["name"], p["port"]) for p in obj["spec"]["ports"]]
    return [(p["name"], p["containerPort"]) for p in container(obj)["ports"]]


def test_launcher_workers_services_gpus_env_and_config(operator: OperatorProcess) -> None:
    ns = operator.namespace
    # cleanPodPolicy None keeps every child after the run, whichever Job kwok finishes first.
    operator.apply(job("gpu", gpu=1, clean="None"))
    objs = created(operator, "gpu")
    assert sorted(objs) == [
        ("ConfigMap", "gpu-launcher-config"),
        ("ConfigMap", "gpu-worker-config"),
        ("Job", "gpu-launcher"),
        ("Job", "gpu-worker"),
        ("Service", "gpu-launcher"),
        ("Service", "gpu-worker"),
    ]
    uid = operator.get("trainingjob", "gpu")["metadata"]["uid"]
    for key, obj in objs.items():
        refs = [(r["kind"], r["name"], r["uid"], r["controller"]) for r in obj["metadata"]["ownerReferences"]]
        assert refs == [("TrainingJob", "gpu", uid, True)], key
        labels = obj["metadata"]["labels"]
        assert labels["gyre.dev/role"] == labels["gyre.dev/workload"] == key[1].split("-")[1], key

    launcher, workers = objs[("Job", "gpu-launcher")], objs[("Job", "gpu-worker")]
    for j, n in ((launcher, 1), (workers, 2)):
        assert j["spec"]["completionMode"] == "Indexed"
        assert (j["spec"]["completions"], j["spec"]["parallelism"]) == (n, n)
        assert j["spec"]["backoffLimit"] == 1  # runPolicy.backoffLimit
        assert j["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert container(launcher)["command"] == ["python", "-m", "gyre.pipelines.trainer", "launcher"]
    assert container(workers)["command"] == ["python", "-m", "gyre.pipelines.trainer", "worker"]

    # The launcher's rendezvous port behind a headless Service that resolves before readiness.
    svc = objs[("Service", "gpu-launcher")]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert ports(svc) == ports(launcher) == [("rendezvous", 29400)]
    assert svc["spec"]["selector"]["gyre.dev/workload"] == "launcher"
    assert objs[("Service", "gpu-worker")]["spec"]["clusterIP"] == "None"
    assert workers["spec"]["template"]["spec"]["subdomain"] == "gpu-worker"

    # GPUs are limits (an extended resource's request defaults to its limit); the launcher has none.
    assert container(workers)["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    assert container(workers)["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert "nvidia.com/gpu" not in container(launcher)["resources"].get("limits", {})

    worker_env = env(workers)
    assert worker_env["GYRE_LAUNCHER_ADDR"] == f"gpu-launcher.{ns}.svc:29400"
    assert worker_env["GYRE_CONFIG"] == env(launcher)["GYRE_CONFIG"] == f"{CONFIG_DIR}/trainer.json"
    assert worker_env["GYRE_REPLICAS"] == "2"
    index_path = worker_env["GYRE_REPLICA_INDEX"]["fieldRef"]["fieldPath"]
    assert index_path == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    for j, workload in ((launcher, "launcher"), (workers, "worker")):
        mounts = {m["name"]: m for m in container(j)["volumeMounts"]}
        assert (mounts["gyre-config"]["mountPath"], mounts["gyre-config"]["readOnly"]) == (CONFIG_DIR, True)
        volumes = {v["name"]: v for v in j["spec"]["template"]["spec"]["volumes"]}
        assert volumes["gyre-config"]["configMap"]["name"] == f"gpu-{workload}-config"

    # Launcher and workers read the same trainer config, and it says what the spec says.
    texts = {objs[("ConfigMap", f"gpu-{w}-config")]["data"]["trainer.json"] for w in ("launcher", "worker")}
    assert len(texts) == 1
    config = TrainerConfig.from_json(texts.pop())
    assert (config.name, config.workers, config.backend) == ("gpu", 2, "horovod")
    hp = config.hyperparameters
    assert (hp.epochs, hp.batch_size, hp.lr, hp.seed) == (2, 16, 0.05, 7)
    assert (config.dataset.path, config.dataset.label) == ("file:///data/x", "churned")
    assert config.dataset.features == ("plan", "page_views")
    assert (config.model.kind, config.model.params) == ("mlp", {"hidden": [8]})
    assert config.output == "file:///models/gpu-g1"
    assert config.checkpoint.dir == "file:///models/checkpoints/gpu-g1"
    assert config.gang_timeout_s == 300

    # kwok completes every pod: the job succeeds, and the workers ran on the GPU node.
    def succeeded() -> dict[str, Any]:
        st = status(operator, "gpu")
        assert st.get("phase") == "Succeeded", st
        return st

    st = eventually(succeeded, timeout=90)
    assert st["replicaStatuses"] == {
        "launcher": {"active": 0, "succeeded": 1, "failed": 0},
        "worker": {"active": 0, "succeeded": 2, "failed": 0},
    }
    assert operator.condition("trainingjob", "gpu", "Succeeded")["status"] == "True"
    worker_pods = pods(operator, "gpu", "worker")
    assert len(worker_pods) == 2
    assert {p["spec"]["nodeName"] for p in worker_pods} == {GPU_NODE}
    for p in worker_pods:
        resources = container(p)["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    assert sorted(operator.children("TrainingJob", "gpu")) == sorted(objs)


def test_gang_fails_with_gang_timeout_when_workers_cannot_be_scheduled(operator: OperatorProcess) -> None:
    """No node has 16 GPUs: the workers stay Pending and the job fails after gangTimeoutSeconds.

    Regression: kwok completes the launcher pod although no worker ever started, and the job
    used to be reported Succeeded with zero workers run.
    """
    operator.apply(job("huge", gpu=16, gang_s=5))
    created(operator, "huge")

    def waiting() -> dict[str, Any]:
        st = status(operator, "huge")
        assert st.get("gangPendingSince"), st
        assert st["phase"] == "Created", st
        running = operator.condition("trainingjob", "huge", "Running")
        assert (running["status"], running["reason"]) == ("False", "WaitingForGang")
        unscheduled = [
            c
            for p in pods(operator, "huge", "worker")
            for c in p["status"].get("conditions", [])
            if (c["type"], c["status"], c.get("reason")) == ("PodScheduled", "False", "Unschedulable")
        ]
        assert len(unscheduled) == 2, [p["status"] for p in pods(operator, "huge", "worker")]
        return st

    pending_since = eventually(waiting, timeout=60, interval=0.25)["gangPendingSince"]

    def failed() -> dict[str, Any]:
        st = status(operator, "huge")
        assert st.get("phase") == "Failed", st
        return st

    st = eventually(failed, timeout=60)
    cond = operator.condition("trainingjob", "huge", "Failed")
    assert (cond["status"], cond["reason"]) == ("True", "GangTimeout")
    message = cond["message"]
    assert "2 of 2 workers not started within gangTimeoutSeconds=5" in message
    names = sorted(p["metadata"]["name"] for p in pods(operator, "huge", "worker"))
    assert len(names) == 2
    for pod in names:  # the message names the pods the scheduler could not place, and why
        assert f"pod {pod} unschedulable" in message, message
    assert "nvidia.com/gpu" in message
    assert st["failureMessage"] == message
    assert seconds(cond["lastTransitionTime"]) - seconds(pending_since) >= 5
    for type_, value in (("Ready", "False"), ("Degraded", "True"), ("Succeeded", "False")):
        c = operator.condition("trainingjob", "huge", type_)
        assert (c["status"], c["reason"]) == (value, "GangTimeout"), c

    # cleanPodPolicy Running: the workers that never ran are removed, the ended launcher stays.
    def cleaned() -> None:
        assert sorted(operator.children("TrainingJob", "huge")) == [
            ("ConfigMap", "huge-launcher-config"),
            ("Job", "huge-launcher"),
            ("Service", "huge-launcher"),
        ]
        assert pods(operator, "huge", "worker") == []

    eventually(cleaned, timeout=60)
    assert status(operator, "huge")["phase"] == "Failed"


def test_ddp_renders_the_store_port(operator: OperatorProcess) -> None:
    operator.apply(job("ddp", backend="ddp"))
    objs = created(operator, "ddp")
    expected = [("rendezvous", 29400), ("store", 29401)]
    assert ports(objs[("Service", "ddp-launcher")]) == expected
    assert ports(objs[("Job", "ddp-launcher")]) == expected
    assert (
        env(objs[("Job", "ddp-worker")])["GYRE_LAUNCHER_ADDR"]
        == f"ddp-launcher.{operator.namespace}.svc:29400"
    )
    config = TrainerConfig.from_json(objs[("ConfigMap", "ddp-launcher-config")]["data"]["trainer.json"])
    assert config.backend == "ddp"
    # No GPUs asked for, none limited (a Horovod launcher has the rendezvous port only: above).
    assert "nvidia.com/gpu" not in container(objs[("Job", "ddp-worker")])["resources"].get("limits", {})


def seconds(rfc3339: str) -> float:
    return dt.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
