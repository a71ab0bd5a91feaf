"""The images `gyre images` builds with podman run: the operator image serves /healthz and
/metrics against the control plane, and the runtime image runs every workload's ``--help``.

Each is built once (or reused from ``$GYRE_CACHE/images`` when its inputs are unchanged);
containers run with host networking (the operator, which calls the API server on loopback) or
none (the runtime's commands), so no bridge or iptables chain is made. The workloads' commands
run in the runtime image without torch (``runtime-stream``, about two minutes to build); the
full runtime image (PyPI's torch with its CUDA libraries, several GB, and the Horovod wheel
setup built) takes about 15 minutes more cold, so its test runs when ``GYRE_TEST_FULL_RUNTIME=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pkgutil
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import gyre.pipelines
import pytest
from gyre.controlplane.images.podman import (
    Built,
    ImageBuildError,
    Podman,
    ensure_built,
    operator_image,
    runtime_image,
    stream_runtime_image,
)
from gyre.manifests import repo_root
from operator_harness import install_crds

from tests.controlplane.cluster import Cluster
from tests.support import eventually, free_port, needs_root_and

pytestmark = [
    pytest.mark.integration,
    pytest.mark.controlplane,
    needs_root_and(
        "podman",
        "debootstrap",
        reason="the image builds need root, podman and debootstrap (make setup installs them)",
    ),
]

ROOT = repo_root()
# Every workload the runtime image can run: the packages of gyre.pipelines with a __main__.
ENTRYPOINTS = sorted(
    f"gyre.pipelines.{m.name}"
    for m in pkgutil.iter_modules(gyre.pipelines.__path__)
    if m.ispkg and (Path(gyre.pipelines.__path__[0]) / m.name / "__main__.py").exists()
)


def _podman_host_state() -> set[str]:
    """What podman and runc leave outside their configured directories, when they do."""
    found = {str(p) for p in Path("/sys/fs/cgroup").glob("*/libpod_parent")}
    return found | {str(d) for d in (Path("/run/runc"), Path("/var/lib/containers")) if d.exists()}


BEFORE: set[str] = set()


@pytest.fixture(scope="module")
def podman() -> Podman:
    BEFORE.update(_podman_host_state())
    return Podman()


@pytest.fixture(scope="module")
def operator_built(podman: Podman) -> Built:
    return ensure_built(operator_image(ROOT), ROOT, podman)


@pytest.fixture(scope="module")
def stream_runtime_built(podman: Podman) -> Built:
    return ensure_built(stream_runtime_image(ROOT), ROOT, podman)


@pytest.fixture(scope="module")
def runtime_built(podman: Podman) -> Built:
    if os.environ.get("GYRE_TEST_FULL_RUNTIME") != "1":
        pytest.skip("the full runtime image (torch, Horovod) is tested with GYRE_TEST_FULL_RUNTIME=1")
    return ensure_built(runtime_image(ROOT), ROOT, podman)


# What the torch-less stream image leaves out, and the library it would need: the model server
# and the online Experiment's analysis (the experiment extra) are tested in the full runtime
# image (opt-in below); no image holds PySpark yet.
NOT_IN_STREAM_IMAGE = {
    "gyre.pipelines.features": "pyspark",
    "gyre.pipelines.modelserver": "kserve",
    "gyre.pipelines.abtest": "scipy",
}
IN_FULL_RUNTIME_ONLY = ("gyre.pipelines.modelserver", "gyre.pipelines.abtest")
STREAM_ENTRYPOINTS = [m for m in ENTRYPOINTS if m not in NOT_IN_STREAM_IMAGE]


def test_entrypoints_are_found() -> None:
    assert {"gyre.pipelines.collector", "gyre.pipelines.trainer"} <= set(ENTRYPOINTS)


@pytest.mark.parametrize("module", STREAM_ENTRYPOINTS)
def test_runtime_image_runs_each_workload_help(
    podman: Podman, stream_runtime_built: Built, module: str
) -> None:
    image = stream_runtime_built.image.name
    out = podman("run", "--rm", "--network=none", image, "python", "-m", module, "--help")
    assert out.startswith(f"usage: python -m {module}"), out


@pytest.mark.parametrize("module", IN_FULL_RUNTIME_ONLY)
def test_full_runtime_image_runs_the_model_server_and_analysis_help(
    podman: Podman, runtime_built: Built, module: str
) -> None:
    out = podman("run", "--rm", "--network=none", runtime_built.image.name, "python", "-m", module, "--help")
    assert out.startswith(f"usage: python -m {module}"), out


def test_runtime_image_has_horovod_with_gloo_as_its_user(podman: Podman, runtime_built: Built) -> None:
    probe = (
        "import json, os, horovod, horovod.torch as hvd, torch, pyarrow; "
        "print(json.dumps([os.getuid(), horovod.__version__, hvd.gloo_built(), torch.__version__]))"
    )
    out = podman("run", "--rm", "--network=none", runtime_built.image.name, "python", "-c", probe)
    uid, horovod_version, gloo, torch_version = json.loads(out)
    assert (uid, horovod_version, gloo) == (1000, "0.28.1", True)
    assert torch_version.startswith("2.4.1")


def test_a_broken_build_says_which_step_failed(tmp_path: Path, podman: Podman) -> None:
    """A failing RUN step surfaces podman's own output, not just an exit status."""
    from gyre.controlplane.images.podman import DockerfileImage

    (tmp_path / ".dockerignore").write_text("*\n!pyproject.toml\n")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "Dockerfile").write_text(
        "ARG PYTHON_IMAGE\nFROM ${PYTHON_IMAGE}\nRUN echo no-such-step-here >&2 && exit 3\n"
    )
    image = DockerfileImage(f"gyre.local/broken-{uuid.uuid4().hex[:6]}:1", "Dockerfile")
    with pytest.raises(ImageBuildError, match="no-such-step-here"):
        ensure_built(image, tmp_path, podman)


@pytest.fixture
def operator_container(
    cluster: Cluster, podman: Podman, operator_built: Built, tmp_path: Path
) -> Iterator[tuple[int, int]]:
    """The operator image running against the session's control plane, as its own user
    (uid 65532), with the admin kubeconfig mounted read-only."""
    install_crds(cluster)
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copy(cluster.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)  # readable by the image's user
    metrics, health = free_port(), free_port()
    name = f"gyre-operator-{uuid.uuid4().hex[:6]}"
    podman(
        "run", "-d", "--name", name, "--network=host", "--read-only", "--tmpfs", "/tmp",
        "-v", f"{kubeconfig}:/kube/config:ro", "-e", "KUBECONFIG=/kube/config",
        operator_built.image.name, "--runtime", "kubernetes",
        "--metrics-port", str(metrics), "--health-port", str(health),
    )  # fmt: skip
    try:
        yield metrics, health
    finally:
        print(podman("logs", name)[-4000:])
        podman("rm", "-f", "-t", "5", name)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        return str(r.read().decode())


def test_operator_image_serves_health_and_metrics(operator_container: tuple[int, int]) -> None:
    metrics, health = operator_container
    eventually(lambda: _get(f"http://127.0.0.1:{health}/healthz"), timeout=60, what="/healthz answers 200")
    text = eventually(lambda: _get(f"http://127.0.0.1:{metrics}/metrics"), timeout=30)
    assert "# TYPE gyre_reconciles_total counter" in text, text[:2000]


def test_operator_image_holds_the_current_sources(podman: Podman, operator_built: Built) -> None:
    """A rebuild installs the package from this checkout, not from a cached layer."""
    import gyre.operator.main as module

    probe = (
        "import hashlib, gyre.operator.main as m; "
        "print(hashlib.sha256(open(m.__file__, 'rb').read()).hexdigest())"
    )
    out = podman(
        "run", "--rm", "--network=none", "--entrypoint", "python", operator_built.image.name, "-c", probe
    )
    assert out.strip() == hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()


def test_unchanged_image_is_not_rebuilt(operator_built: Built, podman: Podman) -> None:
    again = ensure_built(operator_built.image, ROOT, podman)
    assert (again.archive, again.seconds) == (operator_built.archive, 0.0)


def test_podman_leaves_no_state_on_the_host(podman: Podman, operator_built: Built) -> None:
    """Last in the module: runc's state, podman's blob cache and libpod cgroups are gone."""
    podman("run", "--rm", "--network=none", operator_built.image.name, "--help")
    assert _podman_host_state() - BEFORE == set()
