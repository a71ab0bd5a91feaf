"""The operator against a real kube-apiserver: references, convergence, status, metrics, health."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_harness import OperatorProcess, running_operator

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytestmark = pytest.mark.controlplane

STREAM = """
apiVersion: gyre.dev/v1alpha1
kind: Stream
metadata: {{name: {name}}}
spec:
  kafka: {{external: {{bootstrapServers: ["127.0.0.1:1"]}}}}
  topic: {{retention: {retention}}}
  schema:
    key: user_id
    timestampField: ts
    fields: [{{name: user_id, type: string}}, {{name: ts, type: timestamp}}, {{name: clicks, type: int}}]
"""

FEATUREJOB = """
apiVersion: gyre.dev/v1alpha1
kind: FeatureJob
metadata: {name: weekly}
spec:
  source: {stream: events}
  entity: user_id
  timestampField: ts
  features: [{name: clicks_30d, aggregation: sum, field: clicks, window: 30d}]
  offline: {uri: "file:///tmp/gyre-test/features"}
"""


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from running_operator(cluster, tmp_path, "op", "local", show="gyre", log_lines=80)


def test_missing_reference_then_the_dependency_appears(operator: OperatorProcess) -> None:
    """A dangling reference is a condition naming the dependency; creating it converges the dependent."""
    operator.apply(FEATUREJOB)

    def missing() -> None:
        c = operator.condition("featurejob", "weekly", "DependenciesReady")
        assert (c["status"], c["reason"]) == ("False", "DependencyMissing")
        assert "Stream 'events' (spec.source.stream) does not exist" in c["message"]
        ready = operator.condition("featurejob", "weekly", "Ready")
        assert ready["status"] == "False"

    eventually(missing, timeout=60)
    status = operator.get("featurejob", "weekly")["status"]
    assert status["observedGeneration"] == 1

    # The Stream appears with a retention shorter than the feature's window: the FeatureJob
    # notices on its own, and says what to fix.
    operator.apply(STREAM.format(name="events", retention="7d"))

    def invalid() -> None:
        c = operator.condition("featurejob", "weekly", "Degraded")
        assert (c["status"], c["reason"]) == ("True", "InvalidSpec")
        assert "window 30d, longer than the retention 7d of Stream 'events'" in c["message"]

    eventually(invalid, timeout=60)

    # Fixing the Stream fixes the FeatureJob without touching it.
    operator.apply(STREAM.format(name="events", retention="60d"))

    def resolved() -> None:
        degraded = operator.condition("featurejob", "weekly", "Degraded")
        # The retention complaint is gone (this Stream has no lake sink, which the FeatureJob says next).
        assert degraded["status"] == "False" or "retention" not in degraded["message"], degraded
        c = operator.condition("featurejob", "weekly", "DependenciesReady")
        assert "does not exist" not in c["message"], c

    eventually(resolved, timeout=60)


def test_transition_time_is_stable_across_reconciles(operator: OperatorProcess) -> None:
    operator.apply(FEATUREJOB)
    first = eventually(lambda: operator.condition("featurejob", "weekly", "Ready"), timeout=60)
    # A waiting object is reconciled again with backoff; unchanged conditions keep their time.
    before = reconciles(operator, "FeatureJob")

    def reconciled_twice_more() -> None:
        assert reconciles(operator, "FeatureJob") >= before + 2

    eventually(reconciled_twice_more, timeout=60)
    again = operator.condition("featurejob", "weekly", "Ready")
    assert again["lastTransitionTime"] == first["lastTransitionTime"]


def reconciles(op: OperatorProcess, kind: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gyre_reconciles_total{") and f'kind="{kind}"' in line
    )


def test_metrics_and_health(operator: OperatorProcess) -> None:
    operator.apply(FEATUREJOB)
    eventually(lambda: operator.condition("featurejob", "weekly", "Ready"), timeout=60)

    def scraped() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'gyre_reconciles_total{kind="FeatureJob"' in text
        assert 'gyre_reconcile_duration_seconds_bucket{kind="FeatureJob"' in text
        assert "gyre_reconcile_errors_total" in text

    eventually(scraped, timeout=30)
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5) as r:
        assert r.status == 200
