"""Child objects against a real API server: a parent's children are applied server-side with
owner references and labels, read back with their status, repaired when they drift, pruned
when no longer wanted, used only where the cluster serves their kind, and collected with
their parent by the garbage collector."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from gyre.api.experiment import ExperimentSpec
from gyre.controllers.base import (
    Controller,
    ObjectMeta,
    ReconcileContext,
    Resolved,
    StatusInput,
    StatusOutput,
    reconcile,
)
from gyre.core import conditions as cnd
from gyre.core.children import ChildKind, ChildObject, ChildState
from gyre.core.workload import Owner
from gyre.manifests import repo_root
from gyre.operator.children import KubeChildren
from gyre.runtimes.local import LocalRuntime
from operator_harness import fresh_namespace, install_crds

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytestmark = pytest.mark.controlplane

CONFIG_MAP = ChildKind("v1", "ConfigMap", "configmaps")
TRAINING_JOB = ChildKind("gyre.dev/v1alpha1", "TrainingJob", "trainingjobs")
WIDGET = ChildKind("widgets.example.dev/v1", "Widget", "widgets")  # a CRD the test installs late

TRIAL = {
    "spec": {
        "dataset": {"path": "file:///data/clicks", "label": "churned"},
        "model": {"architecture": "mlp", "task": "binary"},
        "output": {"uri": "file:///models/trials"},
        "runPolicy": {"suspend": True},
    }
}

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.widgets.example.dev"},
    "spec": {
        "group": "widgets.example.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def ns(cluster: Cluster) -> str:
    install_crds(cluster)
    return fresh_namespace(cluster, "children")


def parent(cluster: Cluster, ns: str) -> Owner:
    """A real object to own the children (the garbage collector needs its uid)."""
    name = f"parent-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "configmap", name, "-n", ns)
    uid = cluster.get_json("configmap", name, "-n", ns)["metadata"]["uid"]
    return Owner(kind="ConfigMap", namespace=ns, name=name, uid=uid, api_version="v1")


def config(name: str, value: str) -> ChildObject:
    return ChildObject(CONFIG_MAP, name, {"data": {"value": value}}, labels={"role": "settings"})


def test_children_are_applied_with_owner_references_and_read_back(cluster: Cluster, ns: str) -> None:
    children = KubeChildren(cluster.api_client())
    owner = parent(cluster, ns)
    trial = ChildObject(TRAINING_JOB, f"{owner.name}-trial-0", TRIAL)
    states = asyncio.run(
        children.apply(owner, [CONFIG_MAP, TRAINING_JOB], [config(f"{owner.name}-a", "1"), trial])
    )
    assert set(states) == {("ConfigMap", f"{owner.name}-a"), ("TrainingJob", f"{owner.name}-trial-0")}

    cm = cluster.get_json("configmap", f"{owner.name}-a", "-n", ns, "--show-managed-fields")
    assert cm["data"] == {"value": "1"}
    assert cm["metadata"]["labels"]["role"] == "settings"
    assert cm["metadata"]["labels"]["gyre.dev/owner-name"] == owner.name
    (ref,) = cm["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "ConfigMap",
        owner.name,
        owner.uid,
        True,
    )
    managers = {m["manager"] for m in cm["metadata"]["managedFields"]}
    assert "gyre" in managers

    # The trial's status (written by whoever reconciles it) is what the parent sees next.
    status = {"status": {"phase": "Running", "progress": {"step": 5}}}
    cluster.kubectl(
        "patch", "trainingjob", trial.name, "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps(status),
    )  # fmt: skip
    states = asyncio.run(
        children.apply(owner, [CONFIG_MAP, TRAINING_JOB], [config(f"{owner.name}-a", "1"), trial])
    )
    assert states[("TrainingJob", trial.name)].status["progress"] == {"step": 5}

    # Drift in a managed field is repaired by the next apply.
    cluster.kubectl(
        "patch", "configmap", f"{owner.name}-a", "-n", ns, "--type=merge", "-p", '{"data":{"value":"x"}}'
    )
    asyncio.run(children.apply(owner, [CONFIG_MAP, TRAINING_JOB], [config(f"{owner.name}-a", "1"), trial]))
    assert cluster.get_json("configmap", f"{owner.name}-a", "-n", ns)["data"] == {"value": "1"}


def test_children_no_longer_wanted_are_pruned_and_the_parent_takes_the_rest(
    cluster: Cluster, ns: str
) -> None:
    children = KubeChildren(cluster.api_client())
    owner = parent(cluster, ns)
    other = parent(cluster, ns)
    asyncio.run(
        children.apply(owner, [CONFIG_MAP], [config(f"{owner.name}-a", "1"), config(f"{owner.name}-b", "2")])
    )
    asyncio.run(children.apply(other, [CONFIG_MAP], [config(f"{other.name}-a", "1")]))
    asyncio.run(children.apply(owner, [CONFIG_MAP], [config(f"{owner.name}-b", "2")]))
    names = {i["metadata"]["name"] for i in cluster.get_json("configmaps", "-n", ns)["items"]}
    assert f"{owner.name}-a" not in names, "pruned: no longer wanted"
    assert {f"{owner.name}-b", f"{other.name}-a"} <= names, "kept: wanted, or another parent's"

    cluster.kubectl("delete", "configmap", owner.name, "-n", ns)

    def collected() -> None:
        names = {i["metadata"]["name"] for i in cluster.get_json("configmaps", "-n", ns)["items"]}
        assert f"{owner.name}-b" not in names, "the garbage collector removes a deleted parent's children"
        assert f"{other.name}-a" in names

    eventually(collected, timeout=60)


class WidgetOrConfig(Controller[ExperimentSpec]):
    """A kind that wants a Widget where the cluster serves Widgets, else a ConfigMap."""

    kind = "Experiment"
    spec_model = ExperimentSpec
    child_kinds: ClassVar[tuple[ChildKind, ...]] = (WIDGET, CONFIG_MAP)

    def build_children(
        self,
        meta: ObjectMeta,
        spec: ExperimentSpec,
        deps: Mapping[str, Resolved],
        status: Mapping[str, Any],
        prepared: Mapping[str, Any],
        *,
        served: frozenset[ChildKind] = frozenset(),
        children: Mapping[tuple[str, str], ChildState] | None = None,
    ) -> list[ChildObject]:
        if WIDGET in served:
            return [ChildObject(WIDGET, meta.name, {"spec": {"size": 3}})]
        return [config(meta.name, "fallback")]

    def compute_status(self, spec: ExperimentSpec, inp: StatusInput) -> StatusOutput:
        path = "Widget" if WIDGET in inp.served else "ConfigMap"
        seen: Sequence[str] = sorted(f"{k}/{n}" for k, n in inp.children)
        return StatusOutput(
            status=ExperimentSpec.STATUS.model_validate({"childPath": path, "children": list(seen)}),
            conditions=[cnd.Cond(cnd.READY, True, "ChildrenApplied", path)],
            phase="Ready",
        )


def test_a_kind_the_cluster_does_not_serve_falls_back_and_status_says_which(
    cluster: Cluster, ns: str, tmp_path: Path
) -> None:
    children = KubeChildren(cluster.api_client(), discovery_ttl_s=0)
    example = yaml.safe_load((repo_root() / "manifests/examples/04-experiment.yaml").read_text())
    name = f"exp-{uuid.uuid4().hex[:6]}"
    example["metadata"] = {"name": name, "namespace": ns}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(example))
    uid = cluster.get_json("experiment", name, "-n", ns)["metadata"]["uid"]
    meta = ObjectMeta(kind="Experiment", namespace=ns, name=name, uid=uid, generation=1)

    async def once() -> Any:
        async with LocalRuntime(tmp_path / "state") as rt:
            ctx = ReconcileContext(lambda *a: None, rt, children=children)
            return await reconcile(WidgetOrConfig(), meta, example["spec"], {}, ctx)

    try:
        first = asyncio.run(once())
        assert first.status["childPath"] == "ConfigMap", first.status
        assert first.status["children"] == [f"ConfigMap/{name}"]
        cluster.kubectl("apply", "-f", "-", input=json.dumps(WIDGET_CRD))
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/widgets.widgets.example.dev", "--timeout=60s"
        )

        def switched() -> Any:
            out = asyncio.run(once())
            assert out.status["childPath"] == "Widget", out.status
            return out

        second = eventually(switched, timeout=30)
        assert second.status["children"] == [f"Widget/{name}"]
        widget = cluster.get_json("widgets.widgets.example.dev", name, "-n", ns)
        assert widget["spec"] == {"size": 3}
        assert widget["metadata"]["ownerReferences"][0]["uid"] == uid
        left = {i["metadata"]["name"] for i in cluster.get_json("configmaps", "-n", ns)["items"]}
        assert name not in left, "the fallback ConfigMap is pruned once the Widget is used"
    finally:
        cluster.kubectl("delete", "crd", "widgets.widgets.example.dev", "--ignore-not-found", check=False)


def test_a_childs_status_change_is_heard_by_its_parent(cluster: Cluster, ns: str) -> None:
    """A served kind outside Gyre's group is watched once discovery finds it: its children's
    status changes and deletions are reported with their owner; spec-only changes are not
    (the parent made them)."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(WIDGET_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.widgets.example.dev", "--timeout=60s")
    children = KubeChildren(cluster.api_client(), discovery_ttl_s=0, namespaces=[ns])
    heard: list[tuple[str, str, str]] = []
    children.subscribe(lambda namespace, kind, name: heard.append((namespace, kind, name)))
    owner = parent(cluster, ns)
    me = (ns, "ConfigMap", owner.name)
    widget = f"{owner.name}-w"
    kind = "widgets.widgets.example.dev"

    def patch(body: dict[str, Any]) -> None:
        cluster.kubectl("patch", kind, widget, "-n", ns, "--type=merge", "-p", json.dumps(body))

    try:
        eventually(lambda: asyncio.run(children.served([WIDGET])) == {WIDGET}, timeout=30)
        asyncio.run(children.apply(owner, [WIDGET], [ChildObject(WIDGET, widget, {"spec": {"size": 1}})]))
        patch({"status": {"phase": "Ready"}})
        eventually(lambda: heard.count(me) == 1, timeout=10, what="the status change heard")
        patch({"spec": {"size": 2}})
        patch({"status": {"phase": "Degraded"}})
        eventually(lambda: heard.count(me) >= 2, timeout=10, what="the second status change heard")
        assert heard.count(me) == 2, heard  # not the spec change in between
        cluster.kubectl("delete", kind, widget, "-n", ns)
        eventually(lambda: heard.count(me) == 3, timeout=10, what="the deletion heard")
    finally:
        children.close()
        cluster.kubectl("delete", "crd", "widgets.widgets.example.dev", "--ignore-not-found", check=False)
