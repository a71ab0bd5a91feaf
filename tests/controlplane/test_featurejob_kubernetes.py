"""A FeatureJob whose Spark driver cannot start, through the operator and the kubernetes
runtime on kwok nodes: the cause shows in Progressing at once, and past spark.startTimeout the
FeatureJob is Degraded with it (DriverNotStarting), instead of waiting in silence; once the
spec asks for what fits, the run's pod is scheduled and the condition goes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_harness import OperatorProcess, running_operator

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytestmark = pytest.mark.controlplane

NAME = "features"


def feature_job(cpu: str) -> str:
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: FeatureJob
metadata: {{name: {NAME}}}
spec:
  source: {{path: "file:///data/events"}}
  entity: user_id
  timestampField: ts
  features:
    - {{name: views_7d, aggregation: sum, field: views, window: 7d}}
  offline: {{uri: "file:///features"}}
  spark:
    driver: {{cpu: "{cpu}", memory: 1Gi}}
    startTimeout: 8s
"""


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from running_operator(cluster, tmp_path, "fjk8s", "kubernetes", show="gfj", delete_namespace=True)


def test_a_driver_that_cannot_be_scheduled_is_degraded_with_the_cause(operator: OperatorProcess) -> None:
    op = operator
    t0 = time.monotonic()
    op.apply(feature_job("500"))

    def progressing(reason: str) -> dict[str, str]:
        cond = dict(op.condition("featurejob", NAME, "Progressing"))
        assert cond["reason"] == reason, cond
        return cond

    starting = eventually(lambda: progressing("DriverStarting"), timeout=60, interval=0.5)
    assert "unschedulable" in starting["message"], starting
    assert "Insufficient cpu" in starting["message"], starting

    def degraded() -> dict[str, str]:
        cond = dict(op.condition("featurejob", NAME, "Degraded"))
        assert (cond["status"], cond["reason"]) == ("True", "DriverNotStarting"), cond
        return cond

    cond = eventually(degraded, timeout=60, interval=0.5)
    took = time.monotonic() - t0
    assert "Insufficient cpu" in cond["message"], cond
    assert "spark.startTimeout 8s" in cond["message"], cond
    assert took < 8 + 30, f"Degraded {took:.0f}s after the apply"
    assert op.get("featurejob", NAME)["status"]["phase"] == "Degraded"
    ready = op.condition("featurejob", NAME, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DriverNotStarting"), ready

    # What fits: the new run's pod is scheduled (kwok runs it), nothing blocks it any more.
    op.apply(feature_job("100m"))

    def started() -> None:
        cond = dict(op.condition("featurejob", NAME, "Progressing"))
        assert cond["reason"] not in ("DriverStarting", "DriverNotStarting"), cond
        assert op.get("featurejob", NAME)["status"]["phase"] != "Degraded"

    eventually(started, timeout=90, interval=0.5)
