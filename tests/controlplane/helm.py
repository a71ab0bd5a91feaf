"""`helm` against a test cluster, and a chart release installed with it."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane.cluster import Cluster
from tests.support import free_port

CHART = Path(__file__).resolve().parents[2] / "charts" / "gyre"


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    cluster: Cluster

    @property
    def operator(self) -> str:
        return f"{self.name}-gyre-operator"

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.operator}"

    def can(self, verb: str, resource: str, namespace: str = "", subresource: str = "") -> bool:
        """Whether the API server's authorizer lets the operator's ServiceAccount do this.

        ``resource`` is ``plural.group`` (``plural`` for the core group); an empty namespace
        means every namespace (or a cluster-scoped resource). A SubjectAccessReview rather than
        `kubectl auth can-i`, which cannot ask about APIs the cluster does not serve (KServe).
        """
        plural, _, group = resource.partition(".")
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": self.service_account,
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{self.namespace}",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "verb": verb,
                    "group": group,
                    "resource": plural,
                    "subresource": subresource,
                    "namespace": namespace,
                },
            },
        }
        out = self.cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review))
        return bool(json.loads(out.stdout)["status"].get("allowed"))


def helm(cluster: Cluster, *args: str, timeout: float = 300) -> str:
    binary = shutil.which("helm", path=cluster.env.get("PATH"))
    if binary is None:
        pytest.skip("helm not found: run operators/gyre/controlplane/build-binaries.sh")
    proc = subprocess.run(
        [binary, *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"helm {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def install(cluster: Cluster, *values: str, strings: Sequence[str] = ()) -> Release:
    """A release of the chart in a namespace of its own; ``values`` go to ``--set``,
    ``strings`` (values that must stay strings, such as a port in an env var) to ``--set-string``."""
    suffix = uuid.uuid4().hex[:6]
    release = Release(f"g{suffix}", f"gyre-helm-{suffix}", cluster)
    sets = [arg for value in values for arg in ("--set", value)]
    sets += [arg for value in strings for arg in ("--set-string", value)]
    helm(
        cluster,
        "install",
        release.name,
        str(CHART),
        "--namespace",
        release.namespace,
        "--create-namespace",
        "--wait",
        "--timeout",
        "240s",
        *sets,
    )
    return release


def install_on_node(cluster: Cluster, node: str, *values: str) -> Release:
    """A release whose operator runs on ``node`` (a real node of the local plane) from the
    image loaded there, on the host's network: pods of this plane cannot reach the API server's
    Service (it listens on loopback, and there is no kube-proxy)."""
    plane = cluster.plane
    assert plane is not None, "a local plane's cluster"
    assert plane.port is not None, "a running plane"
    return install(
        cluster,
        "operator.image.pullPolicy=Never",
        f"operator.nodeSelector.kubernetes\\.io/hostname={node}",
        "operator.hostNetwork=true",
        f"operator.metrics.port={free_port()}",
        f"operator.health.port={free_port()}",
        *values,
        strings=(
            "operator.extraEnv[0].name=KUBERNETES_SERVICE_HOST",
            "operator.extraEnv[0].value=127.0.0.1",
            "operator.extraEnv[1].name=KUBERNETES_SERVICE_PORT",
            f"operator.extraEnv[1].value={plane.port}",
        ),
    )


def values_of(release: Release) -> dict[str, Any]:
    """The values the release was installed with (``--set`` ones)."""
    out: dict[str, Any] = json.loads(
        helm(release.cluster, "get", "values", release.name, "-n", release.namespace, "-o", "json")
    )
    return out


def uninstall(release: Release) -> None:
    helm(release.cluster, "uninstall", release.name, "--namespace", release.namespace, "--wait")
    release.cluster.kubectl("delete", "namespace", release.namespace, "--wait=false", check=False)
