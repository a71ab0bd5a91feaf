"""InferenceServices through the operator and the kubernetes runtime, on kwok nodes.

What a cluster without KServe gets for an InferenceService: a Deployment and a Service per
model server (predictor, canary, shadow) and for the router, the model server config in a
ConfigMap, the router's backends as the model servers' Service DNS names; removing the canary
and the shadow from the spec prunes theirs. With autoscaling, a HorizontalPodAutoscaler per
model server owns its Deployment's replicas. kwok runs no containers, so no model server
answers: the service is not Ready even once kwok reports the pods ready.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import OperatorProcess, running_operator

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytestmark = pytest.mark.controlplane

NAME = "churn"


def service(traffic: str = "") -> str:
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: InferenceService
metadata: {{name: {NAME}}}
spec:
  model: {{uri: "file:///models/churn-v1"}}
  replicas: 2
  fallback: {{deadlineMs: 80, defaultResponse: {{churn_probability: 0.1}}}}{traffic}
"""


CANARY = """
  traffic:
    canary: {model: {uri: "file:///models/churn-v2"}, percent: 25}
    shadow: {model: {uri: "file:///models/churn-v3"}, percent: 50}"""


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from running_operator(
        cluster, tmp_path, "isvck8s", "kubernetes", show="ginf", delete_namespace=True
    )


def rendered(op: OperatorProcess, names: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
    def check() -> dict[tuple[str, str], dict[str, Any]]:
        children = op.children("InferenceService", NAME)
        want = {f"{NAME}-{n}" for n in names}
        for kind in ("Deployment", "Service"):  # a prune deletes them one by one
            assert {n for k, n in children if k == kind} == want, sorted(children)
        return children

    return eventually(check, timeout=60)


def config_of(children: dict[tuple[str, str], dict[str, Any]], workload: str) -> dict[str, Any]:
    (cm,) = [
        o for (kind, n), o in children.items() if kind == "ConfigMap" and n.startswith(f"{NAME}-{workload}")
    ]
    data: dict[str, Any] = json.loads(cm["data"]["config.json"])
    return data


def test_model_servers_and_router_render_and_prune(operator: OperatorProcess) -> None:
    operator.apply(service(CANARY))
    children = rendered(operator, {"predictor", "canary", "shadow", "router"})
    for workload in ("predictor", "canary", "shadow", "router"):
        assert ("Service", f"{NAME}-{workload}") in children, sorted(children)
    predictor = children[("Deployment", f"{NAME}-predictor")]
    assert predictor["spec"]["replicas"] == 2
    (container,) = predictor["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "gyre.pipelines.modelserver"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    cfg = config_of(children, "predictor")
    assert (cfg["artifact"], cfg["variant"], cfg["fallback"]["deadline_ms"]) == (
        "file:///models/churn-v1",
        "stable",
        80,
    )
    assert config_of(children, "canary")["artifact"] == "file:///models/churn-v2"
    route = config_of(children, "router")
    assert [(b["name"], b["weight"]) for b in route["backends"]] == [("predictor", 75.0), ("canary", 25.0)]
    assert route["shadow"]["percent"] == 50.0
    (router,) = children[("Deployment", f"{NAME}-router")]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in router["env"]}
    ns = operator.namespace
    assert env["GYRE_BACKEND_CANARY"] == f"{NAME}-canary.{ns}.svc:8080", env

    def waiting() -> None:
        ready = operator.condition("inferenceservice", NAME, "Ready")
        assert ready["status"] == "False", ready
        assert ready["reason"] in ("WorkloadsStarting", "ModelNotAnswering"), ready

    eventually(waiting, timeout=60)

    operator.apply(service())  # canary and shadow removed
    children = rendered(operator, {"predictor", "router"})
    assert ("Service", f"{NAME}-canary") not in children
    route = config_of(children, "router")
    assert [(b["name"], b["weight"]) for b in route["backends"]] == [("predictor", 100.0)]
    assert route["shadow"] is None


AUTOSCALED = f"""
apiVersion: gyre.dev/v1alpha1
kind: InferenceService
metadata: {{name: {NAME}}}
spec:
  model: {{uri: "file:///models/churn-v1"}}
  autoscaling: {{minReplicas: 2, maxReplicas: 5, metric: concurrency, target: 4}}
"""


def managed_by_gyre(obj: dict[str, Any]) -> dict[str, Any]:
    """The fields the operator's server-side applies own on ``obj``."""
    entries = [m for m in obj["metadata"].get("managedFields", []) if m.get("manager") == "gyre"]
    assert entries, obj["metadata"].get("managedFields")
    owned: dict[str, Any] = {}
    for e in entries:
        owned.update(e.get("fieldsV1", {}))
    return owned


def test_autoscaling_renders_an_autoscaler_that_owns_the_replicas(
    operator: OperatorProcess, cluster: Cluster
) -> None:
    """The HPA scales the Deployment (the plane's controller-manager runs the HPA controller,
    which raises replicas to minReplicas before it reads any metric), and the operator's later
    applies leave its decision alone; fixed replicas again prune the HPA."""
    operator.apply(AUTOSCALED)
    children = rendered(operator, {"predictor", "router"})
    hpa = children.get(("HorizontalPodAutoscaler", f"{NAME}-predictor"))
    assert hpa is not None, sorted(children)
    assert ("HorizontalPodAutoscaler", f"{NAME}-router") not in children, "the router is not autoscaled"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{NAME}-predictor",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "gyre_model_inflight_requests"},
                "target": {"type": "AverageValue", "averageValue": "4"},
            },
        }
    ]

    def deployment() -> dict[str, Any]:
        out = cluster.kubectl(
            "get", "deployment", f"{NAME}-predictor", "-n", operator.namespace, "-o", "json",
            "--show-managed-fields",
        ).stdout  # fmt: skip
        d: dict[str, Any] = json.loads(out)
        return d

    def scaled_to(n: int) -> Callable[[], None]:
        def check() -> None:
            d = deployment()
            assert d["spec"].get("replicas") == n, d["spec"].get("replicas")

        return check

    eventually(scaled_to(2), timeout=90, what="the autoscaler raises replicas to minReplicas")
    assert "f:replicas" not in managed_by_gyre(deployment()).get("f:spec", {}), "gyre applies the replicas"
    operator.apply(AUTOSCALED.replace("minReplicas: 2", "minReplicas: 3"))
    eventually(scaled_to(3), timeout=90, what="a new minReplicas reaches the autoscaler")

    operator.apply(service())  # replicas: 2, no autoscaling

    def pruned() -> None:
        children = operator.children("InferenceService", NAME)
        assert ("HorizontalPodAutoscaler", f"{NAME}-predictor") not in children, sorted(children)
        assert children[("Deployment", f"{NAME}-predictor")]["spec"]["replicas"] == 2
        assert "f:replicas" in managed_by_gyre(deployment()).get("f:spec", {})

    eventually(pruned, timeout=60)
