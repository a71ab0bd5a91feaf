"""InferenceServices through the operator and the kubernetes runtime, on kwok nodes.

What a cluster without KServe gets for an InferenceService: a Deployment and a Service per
model server (predictor, canary, shadow) and for the router, the model server config in a
ConfigMap, the router's backends as the model servers' Service DNS names; removing the canary
and the shadow from the spec prunes theirs. kwok runs no containers, so no model server
answers: the service is not Ready even once kwok reports the pods ready.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import OperatorProcess, fresh_namespace, install_crds

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
    install_crds(cluster)
    op = OperatorProcess(cluster, fresh_namespace(cluster, "isvck8s"), "kubernetes", tmp_path).start()
    yield op
    op.stop()
    print(f"--- operator log ({op.log_path}) ---\n{op.log(200)}")
    print(cluster.kubectl("get", "ginf", "-n", op.namespace, "-o", "yaml", check=False).stdout)
    cluster.kubectl("delete", "namespace", op.namespace, "--wait=false", check=False)


def rendered(op: OperatorProcess, names: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
    def check() -> dict[tuple[str, str], dict[str, Any]]:
        children = op.children("InferenceService", NAME)
        deployments = {n for kind, n in children if kind == "Deployment"}
        assert deployments == {f"{NAME}-{n}" for n in names}, sorted(children)
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
