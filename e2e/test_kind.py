"""End to end on a kind cluster: build the images, install the chart, run the examples.

Opt-in (``GYRE_E2E=1 pytest e2e -v``) because it builds both images and starts a Kubernetes
cluster in Docker. It skips, saying why, unless ``GYRE_E2E=1`` is set and docker (with an
engine that answers), kind, skaffold, kubectl and helm are all available.

The session creates a kind cluster of its own, runs ``skaffold run -p kind,full-runtime``
(images built locally and loaded into the kind node, the chart installed with them), applies every manifest
in ``manifests/examples/`` and waits until each resource reaches the state ``gyre demo`` expects
of its kind today (`gyre.demo.EXPECTED`: Ready for Streams and FeatureJobs, Succeeded for
TrainingJobs and Experiments, the InferenceService waiting for an online store address). On failure it
prints the resources' status and the operator's log. The cluster is deleted afterwards unless
``GYRE_E2E_KEEP=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from gyre.demo import EXPECTED, Expected

from tests.support import eventually

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "manifests" / "examples"
CHART_CRDS = REPO / "charts" / "gyre" / "crds"
RELEASE_NAMESPACE = "gyre-system"
EXAMPLES_NAMESPACE = "gyre-e2e"
OPERATOR_DEPLOYMENT = "gyre-operator"
READY_TIMEOUT_S = float(os.environ.get("GYRE_E2E_TIMEOUT", "1800"))
SKAFFOLD_TIMEOUT_S = float(os.environ.get("GYRE_E2E_BUILD_TIMEOUT", "5400"))
# The examples train with Horovod (and may run Spark): the runtime image needs both.
SKAFFOLD_PROFILES = os.environ.get("GYRE_E2E_PROFILES", "kind,full-runtime")

T = TypeVar("T")


def cached_bin_dirs() -> list[Path]:
    """The control-plane binary cache (kubectl and helm built by build-binaries.sh)."""
    cache = Path(os.environ.get("GYRE_CACHE", Path.home() / ".cache" / "gyre")) / "bin"
    return sorted(p for p in cache.glob("*") if p.is_dir())


def find_tool(name: str) -> str | None:
    """A tool from ``$GYRE_<NAME>``, PATH, or the binary cache."""
    if explicit := os.environ.get(f"GYRE_{name.upper()}"):
        return explicit
    if on_path := shutil.which(name):
        return on_path
    for directory in cached_bin_dirs():
        if os.access(directory / name, os.X_OK):
            return str(directory / name)
    return None


def docker_answers(docker: str) -> bool:
    try:
        result = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def skip_reason() -> str | None:
    if os.environ.get("GYRE_E2E") != "1":
        return "kind e2e is opt-in: set GYRE_E2E=1 (needs Docker, kind, skaffold)"
    missing = [t for t in ("docker", "kind", "skaffold", "kubectl", "helm") if not find_tool(t)]
    if missing:
        return f"kind e2e needs {', '.join(missing)} on PATH"
    docker = find_tool("docker")
    assert docker is not None
    if not docker_answers(docker):
        return "kind e2e needs a Docker engine, and `docker info` got no answer from one"
    return None


SKIP_REASON = skip_reason()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
]


@dataclass(frozen=True)
class Kind:
    """A kind cluster this session created: its name and an isolated kubeconfig."""

    name: str
    kubeconfig: Path

    @property
    def context(self) -> str:
        return f"kind-{self.name}"

    @property
    def env(self) -> dict[str, str]:
        # kubectl and helm from the binary cache come after PATH's own.
        extra = os.pathsep.join(str(d) for d in cached_bin_dirs())
        path = os.environ.get("PATH", "")
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{path}{os.pathsep}{extra}" if extra else path,
        }

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        result = subprocess.run(
            list(args),
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr)
        return result.stdout

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        kubectl = find_tool("kubectl")
        assert kubectl is not None
        return self.run(kubectl, "--context", self.context, *args, timeout=timeout, check=check)

    def get_json(self, *args: str) -> dict[str, Any]:
        loaded = json.loads(self.kubectl("get", *args, "-o", "json"))
        assert isinstance(loaded, dict)
        return loaded


@pytest.fixture(scope="session")
def kind_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kind]:
    kind = find_tool("kind")
    assert kind is not None
    cluster = Kind(
        name=f"gyre-e2e-{uuid.uuid4().hex[:6]}",
        kubeconfig=tmp_path_factory.mktemp("kind") / "kubeconfig",
    )
    cluster.run(
        kind, "create", "cluster", "--name", cluster.name, "--kubeconfig",
        str(cluster.kubeconfig), "--wait", "180s", timeout=600,
    )  # fmt: skip
    try:
        yield cluster
    finally:
        if os.environ.get("GYRE_E2E_KEEP") == "1":
            print(f"kept kind cluster {cluster.name} (kubeconfig {cluster.kubeconfig})")
        else:
            cluster.run(kind, "delete", "cluster", "--name", cluster.name, timeout=300, check=False)


@pytest.fixture(scope="session")
def gyre_installed(kind_cluster: Kind) -> Kind:
    """Both images built and loaded into kind, and the chart installed with them."""
    skaffold = find_tool("skaffold")
    assert skaffold is not None
    kind_cluster.run(
        skaffold, "run", "--profile", SKAFFOLD_PROFILES, "--kube-context", kind_cluster.context,
        "--kubeconfig", str(kind_cluster.kubeconfig), "--status-check=true",
        timeout=SKAFFOLD_TIMEOUT_S,
    )  # fmt: skip
    return kind_cluster


def example_resources() -> list[tuple[str, str]]:
    """(kind, name) of every resource in manifests/examples/*.yaml, in file order."""
    resources = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                resources.append((doc["kind"], doc["metadata"]["name"]))
    return resources


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def describe_failure(cluster: Kind) -> str:
    """The resources' status and the operator's log, for a failed wait."""
    parts = []
    for kind, name in example_resources():
        out = cluster.kubectl(
            "get", f"{kind.lower()}.gyre.dev", name, "-n", EXAMPLES_NAMESPACE, "-o", "yaml",
            check=False,
        )  # fmt: skip
        parts.append(f"--- {kind}/{name}\n{out}")
    parts.append(cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False))
    log = cluster.kubectl(
        "logs", f"deployment/{OPERATOR_DEPLOYMENT}", "-n", RELEASE_NAMESPACE, "--tail=300",
        check=False,
    )  # fmt: skip
    parts.append(f"--- operator log\n{log}")
    return "\n".join(parts)


def test_operator_is_available(gyre_installed: Kind) -> None:
    gyre_installed.kubectl(
        "rollout", "status", f"deployment/{OPERATOR_DEPLOYMENT}", "-n", RELEASE_NAMESPACE,
        "--timeout=300s", timeout=330,
    )  # fmt: skip
    deployment = gyre_installed.get_json("deployment", OPERATOR_DEPLOYMENT, "-n", RELEASE_NAMESPACE)
    assert deployment["status"].get("availableReplicas") == 1


def test_crds_are_established(gyre_installed: Kind) -> None:
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in sorted(CHART_CRDS.glob("*.yaml"))]
    assert names
    for name in names:
        crd = gyre_installed.get_json("crd", name)
        established = condition(crd, "Established")
        assert established is not None, f"{name} has no Established condition"
        assert established["status"] == "True", name


def test_examples_reach_their_expected_state(gyre_installed: Kind) -> None:
    cluster = gyre_installed
    cluster.kubectl("create", "namespace", EXAMPLES_NAMESPACE, check=False)
    cluster.kubectl("apply", "-n", EXAMPLES_NAMESPACE, "-f", str(EXAMPLES))
    started = time.monotonic()
    resources = example_resources()
    assert resources
    for kind, name in resources:
        remaining = max(READY_TIMEOUT_S - (time.monotonic() - started), 1.0)
        expected = EXPECTED[kind]

        def reached(kind: str = kind, name: str = name, expected: Expected = expected) -> None:
            obj = cluster.get_json(f"{kind.lower()}.gyre.dev", name, "-n", EXAMPLES_NAMESPACE)
            mismatch = expected.mismatch(obj)
            assert mismatch is None, f"{kind}/{name}: {mismatch}"

        try:
            eventually(
                reached, remaining, 5, f"{kind}/{name} to reach {expected}",
                retry_on=(AssertionError, subprocess.CalledProcessError),
            )  # fmt: skip
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe_failure(cluster)}") from e
        elapsed = time.monotonic() - started
        print(f"{kind}/{name} as expected after {elapsed:.0f}s ({len(resources)} resources in all)")
