"""`helm install` of `charts/gyre` on the local control plane, as a user would on a cluster.

The API server validates every object the chart renders, the scheduler places the operator's
pod on a kwok node (kwok runs it through its lifecycle; the image is never pulled), the
controller manager makes the Deployment available and fills the metrics Service's endpoints,
and the RBAC authorizer answers for the ServiceAccount the chart binds. `helm uninstall`
then removes everything but the CRDs (Helm never deletes `crds/`).
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.controlplane.cluster import Cluster
from tests.controlplane.helm import CHART, Release, install, uninstall
from tests.support import eventually, free_port

ROOT = Path(__file__).resolve().parents[2]
CRD_NAMES = sorted(yaml.safe_load(p.read_text())["metadata"]["name"] for p in (CHART / "crds").glob("*.yaml"))

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    installed = install(cluster)
    try:
        yield installed
    finally:
        uninstall(installed)


def operator_pods(release: Release) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=operator"
    pods = release.cluster.get_json("pods", "-n", release.namespace, "-l", selector)["items"]
    return list(pods)


def test_crds_are_established(release: Release) -> None:
    assert len(CRD_NAMES) == 5
    for name in CRD_NAMES:
        crd = release.cluster.get_json("crd", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True", name
        assert conditions["NamesAccepted"] == "True", name


def test_operator_pod_is_scheduled_on_a_kwok_node_and_running(release: Release) -> None:
    def running() -> dict[str, Any]:
        pods = operator_pods(release)
        assert len(pods) == 1
        pod = pods[0]
        assert pod["spec"]["nodeName"].startswith("kwok-node-")
        assert pod["status"]["phase"] == "Running"
        return pod

    pod = eventually(running)
    # What the API server admitted is what the chart asked for.
    assert pod["spec"]["serviceAccountName"] == release.operator
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    container = pod["spec"]["containers"][0]
    assert container["args"][:2] == ["--runtime", "kubernetes"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    deployment = release.cluster.get_json("deployment", release.operator, "-n", release.namespace)
    assert deployment["status"].get("availableReplicas") == 1


def test_metrics_service_selects_the_operator_pod(release: Release) -> None:
    service = f"{release.operator}-metrics"

    def endpoints() -> list[str]:
        slices = release.cluster.get_json(
            "endpointslices", "-n", release.namespace, "-l", f"kubernetes.io/service-name={service}"
        )["items"]
        addresses = [a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]]
        assert addresses
        return addresses

    pod_ip = operator_pods(release)[0]["status"]["podIP"]
    assert eventually(endpoints) == [pod_ip]
    ports = release.cluster.get_json("service", service, "-n", release.namespace)["spec"]["ports"]
    assert [(p["name"], p["port"]) for p in ports] == [("http-metrics", 8080)]


def test_rbac_objects_exist(release: Release) -> None:
    c = release.cluster
    c.kubectl("get", "serviceaccount", release.operator, "-n", release.namespace)
    for name in (release.operator, f"{release.operator}-cluster"):
        role = c.get_json("clusterrole", name)
        binding = c.get_json("clusterrolebinding", name)
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": release.operator, "namespace": release.namespace}
        ]


def test_operator_may_do_its_job_everywhere(release: Release) -> None:
    for plural in ("streams", "featurejobs", "experiments", "trainingjobs", "inferenceservices"):
        assert release.can("watch", f"{plural}.gyre.dev"), plural
        assert release.can("patch", f"{plural}.gyre.dev", "default", subresource="status"), plural
    assert release.can("create", "trainingjobs.gyre.dev", "default")
    for resource in (
        "deployments.apps",
        "statefulsets.apps",
        "jobs.batch",
        "services",
        "configmaps",
    ):
        assert release.can("patch", resource, "default"), resource
        assert release.can("delete", resource, "default"), resource
    assert release.can("watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert release.can("watch", "namespaces")
    assert release.can("create", "events", "default")
    assert release.can("get", "secrets", "default")
    # Workloads' /status through the API server (a regression: on real pods no figure came).
    assert release.can("get", "pods", "default", subresource="proxy")


def test_operator_may_not_do_more(release: Release) -> None:
    assert not release.can("list", "secrets", "default")
    assert not release.can("create", "pods", "default")
    assert not release.can("create", "pods", "default", subresource="exec")
    assert not release.can("create", "pods", "default", subresource="proxy")
    assert not release.can("delete", "namespaces")
    assert not release.can("create", "clusterroles.rbac.authorization.k8s.io")
    assert not release.can("create", "streams.gyre.dev", "default")
    assert not release.can("*", "*")
    assert not release.can("create", "inferenceservices.serving.kserve.io", "default")
    assert not release.can("create", "sparkapplications.sparkoperator.k8s.io", "default")


def test_watched_namespaces_limit_the_operators_reach(cluster: Cluster) -> None:
    team = f"team-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", team)
    scoped = install(cluster, f"operator.watchNamespaces={{{team}}}", "integrations.kserve.enabled=true")
    try:
        assert scoped.can("patch", "deployments.apps", team)
        assert scoped.can("watch", "streams.gyre.dev", team)
        assert scoped.can("create", "inferenceservices.serving.kserve.io", team)
        assert not scoped.can("patch", "deployments.apps", "default")
        assert not scoped.can("watch", "streams.gyre.dev")
        # Discovery stays cluster-wide: kopf needs it whatever it watches.
        assert scoped.can("watch", "customresourcedefinitions.apiextensions.k8s.io")
        args = operator_pods(scoped)[0]["spec"]["containers"][0]["args"]
        assert args[2:4] == ["--namespace", team]
    finally:
        uninstall(scoped)
        cluster.kubectl("delete", "namespace", team, "--wait=false", check=False)


def healthz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def service_account_kubeconfig(release: Release, path: Path) -> Path:
    """The cluster's kubeconfig with its user swapped for the chart's ServiceAccount token."""
    token = release.cluster.kubectl(
        "create", "token", release.operator, "-n", release.namespace, "--duration=1h"
    ).stdout.strip()
    config = yaml.safe_load(release.cluster.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


def test_operator_reconciles_with_only_the_charts_permissions(release: Release, tmp_path: Path) -> None:
    """The operator process, started with the Deployment's own arguments and environment and
    authenticated as the chart's ServiceAccount, starts kopf and reconciles a Stream through to
    its status: the ClusterRoles grant everything it needs (a missing rule shows up as a 403
    in its log, whichever workload the reconcile applies)."""
    c = release.cluster
    container = c.get_json("deployment", release.operator, "-n", release.namespace)["spec"]["template"][
        "spec"
    ]["containers"][0]
    args = list(container["args"])
    health = free_port()
    args[args.index("--metrics-port") + 1] = str(free_port())
    args[args.index("--health-port") + 1] = str(health)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env |= {"GYRE_OPERATOR_NAMESPACE": release.namespace, "GYRE_POD_NAME": "test"}
    env["KUBECONFIG"] = str(service_account_kubeconfig(release, tmp_path / "kubeconfig"))
    env["HOME"] = str(tmp_path)
    namespace = f"chart-rbac-{uuid.uuid4().hex[:6]}"
    c.kubectl("create", "namespace", namespace)
    log_path = tmp_path / "operator.log"
    with log_path.open("w") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "gyre.cli", "operator", *args],
            env={**c.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def healthy() -> None:
            assert operator.poll() is None, f"the operator exited {operator.returncode}"
            assert healthz(health) == 200

        eventually(healthy, timeout=60)
        c.kubectl("apply", "-n", namespace, "-f", str(ROOT / "manifests" / "examples" / "01-stream.yaml"))

        def reconciled() -> None:
            assert operator.poll() is None, f"the operator exited {operator.returncode}"
            stream = c.get_json("stream.gyre.dev", "clicks", "-n", namespace)
            status = stream.get("status", {})
            assert status.get("observedGeneration") == stream["metadata"]["generation"], status
            assert {cond["type"] for cond in status.get("conditions", [])} >= {"Ready"}, status

        eventually(reconciled, timeout=90)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- operator log\n{log_path.read_text()[-6000:]}") from e
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(30)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
        c.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    text = log_path.read_text()
    assert "Forbidden" not in text, text[-6000:]
    assert " 403" not in text, text[-6000:]


def test_uninstall_removes_everything_but_the_crds(cluster: Cluster) -> None:
    gone = install(cluster)
    uninstall(gone)
    labelled = f"app.kubernetes.io/instance={gone.name}"
    for kinds, scope in (
        ("deployments,services,serviceaccounts,configmaps,rolebindings", ("-n", gone.namespace)),
        ("clusterroles,clusterrolebindings", ()),
    ):
        left = cluster.get_json(kinds, "-l", labelled, *scope)["items"]
        assert left == [], [f"{o['kind']}/{o['metadata']['name']}" for o in left]
    eventually(lambda: assert_no_pods(gone))
    for name in CRD_NAMES:
        cluster.kubectl("get", "crd", name)


def assert_no_pods(release: Release) -> None:
    assert operator_pods(release) == []
