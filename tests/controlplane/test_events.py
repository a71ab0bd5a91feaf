"""What kubectl users see: Events in `kubectl describe`, field documentation in `kubectl explain`.

Against a real kube-apiserver: the operator records Events on the Gyre object (a missing
dependency as one Warning however long the retries go on; a TrainingJob's workloads, success
and readiness as Normal events), and the API server serves each field's description.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import OperatorProcess, fresh_namespace, install_crds

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytestmark = pytest.mark.controlplane

WAITING_JOB = """
apiVersion: gyre.dev/v1alpha1
kind: TrainingJob
metadata: {name: waiting}
spec:
  dataset: {stream: clicks, label: churned}
  output: {uri: "file:///tmp/gyre-test/models"}
"""

# kwok runs no containers: the job's pods go Running, then Succeeded.
KWOK_JOB = """
apiVersion: gyre.dev/v1alpha1
kind: TrainingJob
metadata: {name: story}
spec:
  dataset: {path: "file:///data/x", label: churned}
  workers: 2
  resources: {cpu: 100m, memory: 128Mi}
  output: {uri: "file:///models"}
"""


def _operator(cluster: Cluster, tmp_path: Path, runtime: str) -> Iterator[OperatorProcess]:
    install_crds(cluster)
    op = OperatorProcess(cluster, fresh_namespace(cluster, "events"), runtime, tmp_path).start()
    yield op
    op.stop()
    # Shown by pytest only when the test failed.
    print(f"--- operator log ({op.log_path}) ---\n{op.log(200)}")
    print(cluster.kubectl("get", "events", "-n", op.namespace, "-o", "wide", check=False).stdout)
    cluster.kubectl("delete", "namespace", op.namespace, "--wait=false", check=False)


@pytest.fixture
def local_operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from _operator(cluster, tmp_path, "local")


@pytest.fixture
def kwok_operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from _operator(cluster, tmp_path, "kubernetes")


def events(op: OperatorProcess, kind: str, name: str) -> list[dict[str, Any]]:
    out = op.cluster.kubectl(
        "get", "events", "-n", op.namespace, "-o", "json",
        f"--field-selector=involvedObject.kind={kind},involvedObject.name={name}",
    ).stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def reasons(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["reason"]) for e in items]


def reconciles(op: OperatorProcess, kind: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gyre_reconciles_total{") and f'kind="{kind}"' in line
    )


def test_a_missing_dependency_is_one_warning_however_long_the_retries_go_on(
    local_operator: OperatorProcess,
) -> None:
    op = local_operator
    op.apply(WAITING_JOB)
    message = "Stream 'clicks' (spec.dataset.stream) does not exist in namespace " + op.namespace

    def warned() -> dict[str, Any]:
        found = [e for e in events(op, "TrainingJob", "waiting") if e["reason"] == "DependencyMissing"]
        assert found, reasons(events(op, "TrainingJob", "waiting"))
        return found[0]

    first = eventually(warned, timeout=60)
    assert (first["type"], first["message"], first["count"]) == ("Warning", message, 1)
    assert first["source"]["component"] == "gyre-operator"

    # The reconcile retries with backoff (at most 10 s apart) for over a minute.
    started, before = time.monotonic(), reconciles(op, "TrainingJob")

    def a_minute_of_retries() -> None:
        assert time.monotonic() - started >= 65
        assert reconciles(op, "TrainingJob") >= before + 5

    eventually(a_minute_of_retries, timeout=150, interval=1)
    items = events(op, "TrainingJob", "waiting")
    assert reasons(items) == [("Warning", "DependencyMissing")], items
    assert items[0]["count"] == 1  # written once; a repeat after the 10-minute window adds to it

    described = op.cluster.kubectl("describe", "trainingjob", "waiting", "-n", op.namespace).stdout
    events_section = described.split("Events:", 1)[1]
    assert "DependencyMissing" in events_section
    assert "Stream 'clicks' (spec.dataset.stream) does not exist" in events_section


def test_a_training_job_tells_its_story_in_kubectl_describe(kwok_operator: OperatorProcess) -> None:
    op = kwok_operator
    op.apply(KWOK_JOB)

    def told() -> list[dict[str, Any]]:
        items = events(op, "TrainingJob", "story")
        assert ("Normal", "Ready") in reasons(items), reasons(items)
        return items

    items = {e["reason"]: e for e in eventually(told, timeout=120, interval=1)}
    assert items["WorkloadsApplied"]["type"] == "Normal"
    assert items["WorkloadsApplied"]["message"] == "Applied 2 workloads: launcher, worker"
    assert items["TrainingSucceeded"]["type"] == "Normal"
    assert items["TrainingSucceeded"]["message"].startswith("model story-g1")
    assert items["Ready"]["message"] == "ModelAvailable: artifact at file:///models/story-g1"
    assert not [e for e in items.values() if e["type"] == "Warning"], items
    assert all(e["count"] == 1 for e in items.values()), items

    described = op.cluster.kubectl("describe", "trainingjob", "story", "-n", op.namespace).stdout
    events_section = described.split("Events:", 1)[1]
    for reason in ("WorkloadsApplied", "TrainingSucceeded", "Ready"):
        assert reason in events_section, described


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("trainingjob.spec.runPolicy.ttlSecondsAfterFinished", "before the TrainingJob itself is deleted"),
        ("trainingjob.spec.workers", "Data-parallel worker processes"),
        (
            "stream.spec.topic.retention",
            'A duration: a number and a unit (ms, s, m, h, d, w), e.g. "30s", "7d".',
        ),
        ("experiment.spec.search.parallelTrials", "Trials running at once"),
    ],
)
def test_kubectl_explain_prints_each_fields_description(cluster: Cluster, field: str, expected: str) -> None:
    install_crds(cluster)

    def explained() -> None:
        out = cluster.kubectl("explain", field, "--api-version=gyre.dev/v1alpha1").stdout
        # kubectl wraps long descriptions: compare with the line breaks folded.
        assert expected in " ".join(out.split()), out

    # The OpenAPI document the API server publishes catches up with a new CRD within seconds.
    eventually(explained, timeout=60, interval=1)
