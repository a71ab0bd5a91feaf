"""TrainingJobs through the operator and the local runtime: real Horovod ranks as processes.

Trains to completion and checks the artifact against a majority-class baseline; SIGKILLs a
worker mid-training and sees the gang resume from its checkpoint; suspends a job.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gyre.controlplane.procs import Proc, processes
from operator_harness import OperatorProcess, make_data, running_operator

from tests.controlplane.cluster import Cluster
from tests.support import eventually

hvd = pytest.importorskip("horovod.torch", reason="Horovod is built by scripts/build-horovod.sh (make setup)")
pytestmark = [pytest.mark.controlplane, pytest.mark.integration]


def job(name: str, data: Path, out: Path, **over: Any) -> str:
    spec = {
        "workers": 2,
        "epochs": 4,
        "every": 20,
        "suspend": "false",
        "backoff": 3,
        "policy": "",
    } | over
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  dataset:
    path: file://{data}
    label: churned
    features: [plan, page_views, session_seconds]
    split: {{method: time, timeField: ts, validationFraction: 0.25}}
  model: {{architecture: mlp, task: binary, params: {{hidden: [16], dropout: 0.0}}}}
  hyperparameters: {{epochs: {spec["epochs"]}, batchSize: 32, learningRate: 0.01, seed: 3}}
  workers: {spec["workers"]}
  checkpoint: {{everySteps: {spec["every"]}}}
  runPolicy:
    {{backoffLimit: {spec["backoff"]}, suspend: {spec["suspend"]}, gangTimeoutSeconds: 60{spec["policy"]}}}
  output: {{uri: "file://{out}"}}
"""


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from running_operator(cluster, tmp_path, "train", "local", show="gtj")


def status(op: OperatorProcess, name: str) -> dict[str, Any]:
    return dict(op.get("trainingjob", name).get("status") or {})


def worker_pids(namespace_state: Path) -> list[int]:
    def is_worker(p: Proc) -> bool:
        # The worker itself, not the local runtime's supervisor that names it in its arguments.
        return p.cmdline()[1:4] == ["-m", "gyre.pipelines.trainer", "worker"] and (
            str(namespace_state).encode() in p.environ()
        )

    return processes(is_worker)


def test_trains_to_a_model_that_beats_the_majority_class(operator: OperatorProcess, tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    operator.apply(job("churn", data, tmp_path / "models"))

    def succeeded() -> dict[str, Any]:
        st = status(operator, "churn")
        assert st.get("phase") == "Succeeded", st.get("phase")
        return st

    st = eventually(succeeded, timeout=300, interval=1)
    ready = operator.condition("trainingjob", "churn", "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "ModelAvailable")
    eventually(lambda: _both_workers_succeeded(operator, "churn"), timeout=30)
    assert st["progress"]["percent"] == "100%"
    metrics = st["metrics"]
    assert metrics["validation"] > metrics["valMajorityAccuracy"] + 0.05, metrics
    assert st["model"]["version"] == "churn-g1"
    from gyre.pipelines.trainer.artifact import load

    model = load(st["model"]["uri"])
    # What dependents read: the features, published in status from the run's final report.
    assert st["model"]["features"] == [f["name"] for f in model.features], st["model"]
    probs = model.predict(
        [
            {"plan": "free", "page_views": 0, "session_seconds": 10.0},
            {"plan": "team", "page_views": 20, "session_seconds": 900.0},
        ]
    )
    assert float(probs[0]) > 0.5 > float(probs[1])


def test_a_killed_worker_resumes_from_the_checkpoint(operator: OperatorProcess, tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", rows=20000)
    operator.apply(job("resilient", data, tmp_path / "models", epochs=12, every=10))

    def past_a_checkpoint() -> list[int]:
        progress = status(operator, "resilient").get("progress") or {}
        assert progress.get("step", 0) >= 25, progress
        assert progress["step"] < progress["totalSteps"] // 2, f"too late to kill: {progress}"
        pids = worker_pids(operator.workdir / "local")
        assert len(pids) == 2
        return pids

    pids = eventually(past_a_checkpoint, timeout=240, interval=0.5)
    os.kill(pids[1], signal.SIGKILL)

    def done() -> dict[str, Any]:
        st = status(operator, "resilient")
        assert st.get("phase") == "Succeeded", (st.get("phase"), st.get("progress"))
        return st

    st = eventually(done, timeout=300, interval=1)
    assert st["restarts"] >= 1
    assert st["resumedFromStep"] >= 10
    assert st["resumedFromStep"] % 10 == 0
    from gyre.pipelines.trainer.artifact import load

    assert (
        len(load(st["model"]["uri"]).predict([{"plan": "pro", "page_views": 3, "session_seconds": 60.0}]))
        == 1
    )


def test_suspended_job_runs_nothing(operator: OperatorProcess, tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", rows=500)
    operator.apply(job("later", data, tmp_path / "models", suspend="true"))

    def suspended() -> None:
        st = status(operator, "later")
        assert st.get("phase") == "Suspended"
        assert operator.condition("trainingjob", "later", "Suspended")["status"] == "True"

    eventually(suspended, timeout=60)
    assert worker_pids(operator.workdir / "local") == []


def _both_workers_succeeded(op: OperatorProcess, name: str) -> None:
    assert status(op, name)["replicaStatuses"]["worker"]["succeeded"] == 2


def test_active_deadline_fails_a_job_that_runs_too_long(operator: OperatorProcess, tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", rows=20000)
    operator.apply(job("slow", data, tmp_path / "models", epochs=50, policy=", activeDeadlineSeconds: 5"))

    def failed() -> None:
        c = operator.condition("trainingjob", "slow", "Failed")
        assert (c["status"], c["reason"]) == ("True", "DeadlineExceeded"), c
        assert "activeDeadlineSeconds=5" in c["message"]

    eventually(failed, timeout=120, interval=1)
    # cleanPodPolicy Running (the default) stops what was still running.
    eventually(lambda: _no_workers(operator), timeout=60)


def test_ttl_deletes_the_finished_job_and_clean_pod_policy_all_stops_everything(
    operator: OperatorProcess, tmp_path: Path
) -> None:
    data = make_data(tmp_path / "data", rows=600)
    policy = ", ttlSecondsAfterFinished: 3, cleanPodPolicy: All"
    operator.apply(job("brief", data, tmp_path / "models", epochs=1, policy=policy))
    eventually(lambda: _phase(operator, "brief", "Succeeded"), timeout=180, interval=0.5)

    def deleted() -> None:
        proc = operator.cluster.kubectl("get", "gtj", "brief", "-n", operator.namespace, check=False)
        assert proc.returncode != 0
        assert "NotFound" in proc.stderr

    eventually(deleted, timeout=60, interval=0.5)
    assert (tmp_path / "models" / "brief-g1" / "metadata.json").exists(), "the artifact outlives the job"


def _phase(op: OperatorProcess, name: str, phase: str) -> None:
    assert status(op, name).get("phase") == phase


def _no_workers(op: OperatorProcess) -> None:
    assert worker_pids(op.workdir / "local") == []
