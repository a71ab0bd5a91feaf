"""The ``cluster`` fixture: a real local control plane for the tests in this directory.

One control plane per test session, started in a temporary state directory and stopped at
the end (no process left behind), or an existing cluster when ``GYRE_TEST_KUBECONFIG``
names its kubeconfig (then nothing is started or stopped). It yields a
`tests.controlplane.cluster.Cluster` (``.kubeconfig``, ``.env``, ``.kubectl()``,
``.api_client()``). A failing test gets the cluster's nodes, workloads and events appended
to its report.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest
from gyre.controlplane import ControlPlane

from tests.controlplane.cluster import Cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    external = os.environ.get("GYRE_TEST_KUBECONFIG")
    if external:
        yield Cluster.from_kubeconfig(external)
        return
    # daemon=False: the components also die with this process should it be killed.
    plane = ControlPlane(tmp_path_factory.mktemp("gyre-cluster"), daemon=False)
    try:
        plane.up()
        yield Cluster.from_plane(plane)
    finally:
        plane.down()


_CLUSTER_KEY = pytest.StashKey[Cluster]()


@pytest.fixture(autouse=True)
def _remember_cluster(request: pytest.FixtureRequest) -> None:
    if "cluster" in request.fixturenames:
        request.node.stash[_CLUSTER_KEY] = request.getfixturevalue("cluster")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    c = item.stash.get(_CLUSTER_KEY, None)
    if report.failed and c is not None and call.when == "call":
        sections = []
        for args in (
            ("get", "nodes,pods,jobs,statefulsets,deployments,pvc", "-A", "-o", "wide"),
            ("get", "events", "-A", "--sort-by=.lastTimestamp"),
        ):
            out = c.kubectl(*args, check=False, timeout=20)
            sections.append(f"$ kubectl {' '.join(args)}\n{out.stdout}{out.stderr}")
        report.sections.append(("cluster state", "\n".join(sections)))
    return report
