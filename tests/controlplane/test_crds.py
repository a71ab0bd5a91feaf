"""The CRDs on a real kube-apiserver: the example system is accepted, invalid resources are
rejected with a message that says what to fix, and `kubectl get gyre` lists everything."""

from __future__ import annotations

from pathlib import Path

import pytest
from gyre.manifests import repo_root
from operator_harness import fresh_namespace, install_crds

from tests.controlplane.cluster import Cluster
from tests.support import eventually

ROOT = repo_root()
INVALID = sorted((ROOT / "manifests/examples/invalid").glob("*.yaml"))


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> Cluster:
    install_crds(cluster)
    return cluster


def expected_error(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expected-error: "), f"{path.name} must start with its expected error"
    return first.removeprefix("# expected-error: ")


def test_there_are_enough_invalid_examples_across_all_kinds() -> None:
    assert len(INVALID) >= 15
    kinds = {p.name.split("-")[0] for p in INVALID}
    assert kinds == {"stream", "featurejob", "trainingjob", "experiment", "inferenceservice"}


@pytest.mark.controlplane
def test_example_system_is_accepted_and_listed_by_category(crds: Cluster) -> None:
    ns = fresh_namespace(crds, "examples")
    crds.kubectl("apply", "-n", ns, "-f", str(ROOT / "manifests/examples"))
    out = crds.kubectl("get", "gyre", "-n", ns, "-o", "name").stdout.split()
    assert sorted(out) == sorted(
        [
            "stream.gyre.dev/clicks",
            "featurejob.gyre.dev/churn-features",
            "trainingjob.gyre.dev/churn-v1",
            "experiment.gyre.dev/churn-tuning",
            "inferenceservice.gyre.dev/churn",
        ]
    )
    # Defaults are applied by the API server from the schema.
    stream = crds.get_json("stream", "clicks", "-n", ns)
    assert stream["spec"]["topic"]["replicationFactor"] == 1
    assert stream["spec"]["collector"]["maxBatch"] == 1000
    assert stream["spec"]["kafka"]["managed"]["version"].startswith("4.")
    job = crds.get_json("gtj", "churn-v1", "-n", ns)
    assert job["spec"]["runPolicy"]["gangTimeoutSeconds"] == 300
    # Short names and printer columns.
    for short in ("gst", "gfj", "gtj", "gexp", "gisvc"):
        crds.kubectl("get", short, "-n", ns)
    header = crds.kubectl("get", "streams.gyre.dev", "-n", ns).stdout.splitlines()[0]
    for column in ("READY", "REASON", "TOPIC", "PARTITIONS", "ACCEPTED/S", "LAG", "AGE"):
        assert column in header


@pytest.mark.controlplane
@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_resource_is_rejected_with_its_message(crds: Cluster, path: Path) -> None:
    proc = crds.kubectl("apply", "-n", "default", "-f", str(path), check=False)
    assert proc.returncode != 0, f"{path.name} was accepted"
    assert expected_error(path) in proc.stderr, proc.stderr
    assert crds.kubectl("get", "-n", "default", "-f", str(path), check=False).returncode != 0, "it was stored"


@pytest.mark.controlplane
def test_status_subresource_is_separate_from_spec(crds: Cluster) -> None:
    """Users cannot write status through the main resource; the operator writes it through /status."""
    ns = fresh_namespace(crds, "status-check")
    crds.kubectl("apply", "-n", ns, "-f", str(ROOT / "manifests/examples/03-trainingjob.yaml"))
    crds.kubectl("patch", "gtj", "churn-v1", "-n", ns, "--type=merge", "-p", '{"status":{"phase":"Hacked"}}')
    assert crds.get_json("gtj", "churn-v1", "-n", ns).get("status", {}).get("phase") != "Hacked"
    crds.kubectl(
        "patch",
        "gtj",
        "churn-v1",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Running"}}',
    )
    eventually(lambda: _assert_phase(crds, ns, "Running"), timeout=10)


def _assert_phase(c: Cluster, ns: str, phase: str) -> None:
    assert c.get_json("gtj", "churn-v1", "-n", ns)["status"]["phase"] == phase
