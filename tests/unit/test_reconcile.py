"""The shared reconcile pass, driven with the real local runtime and in-memory objects."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from gyre.controllers.base import ObjectMeta, ReconcileContext, reconcile
from gyre.controllers.registry import CONTROLLERS
from gyre.manifests import repo_root
from gyre.operator.handlers import status_patch
from gyre.runtimes.local import LocalRuntime

EXAMPLES = {
    doc["kind"]: doc
    for doc in (
        yaml.safe_load(p.read_text()) for p in sorted((repo_root() / "manifests/examples").glob("*.yaml"))
    )
}


def meta(kind: str, name: str, generation: int = 1) -> ObjectMeta:
    return ObjectMeta(kind=kind, namespace="ns", name=name, uid=f"uid-{name}", generation=generation)


def ready_stream(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "WorkloadsReady"}]},
    }


def run(kind: str, spec: Mapping[str, Any], objects: Mapping[tuple[str, str], Any], tmp: Path) -> Any:
    async def go() -> Any:
        async with LocalRuntime(tmp) as rt:
            ctx = ReconcileContext(lambda k, ns, name: objects.get((k, name)), rt)
            return await reconcile(CONTROLLERS[kind], meta(kind, "x"), spec, {}, ctx)

    return asyncio.run(go())


def cond(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_missing_dependency_names_it_and_asks_for_a_retry(tmp_path: Path) -> None:
    out = run("FeatureJob", EXAMPLES["FeatureJob"]["spec"], {}, tmp_path)
    c = cond(out.status, "DependenciesReady")
    assert (c["status"], c["reason"]) == ("False", "DependencyMissing")
    assert c["message"] == "Stream 'clicks' (spec.source.stream) does not exist in namespace ns"
    assert cond(out.status, "Ready")["status"] == "False"
    assert out.status["observedGeneration"] == 1
    assert out.retry_after is not None
    assert out.permanent_error is None


def test_unready_dependency_reports_its_reason(tmp_path: Path) -> None:
    stream = {"spec": EXAMPLES["Stream"]["spec"], "status": {"conditions": []}}
    out = run("FeatureJob", EXAMPLES["FeatureJob"]["spec"], {("Stream", "clicks"): stream}, tmp_path)
    c = cond(out.status, "DependenciesReady")
    assert c["reason"] == "DependencyNotReady"
    assert "Stream 'clicks' (spec.source.stream) is not Ready (no status yet)" in c["message"]


def test_cross_resource_rule_is_degraded_with_what_to_fix(tmp_path: Path) -> None:
    stream_spec = {**EXAMPLES["Stream"]["spec"], "topic": {"retention": "3d"}}
    out = run(
        "FeatureJob",
        EXAMPLES["FeatureJob"]["spec"],
        {("Stream", "clicks"): ready_stream(stream_spec)},
        tmp_path,
    )
    c = cond(out.status, "Degraded")
    assert (c["status"], c["reason"]) == ("True", "InvalidSpec")
    assert (
        "feature 'sessions_7d' has window 7d, longer than the retention 3d of Stream 'clicks'" in c["message"]
    )
    assert "raise the Stream's spec.topic.retention" in c["message"]


def test_unknown_entity_column_is_reported(tmp_path: Path) -> None:
    spec = {**EXAMPLES["FeatureJob"]["spec"], "entity": "account_id"}
    out = run("FeatureJob", spec, {("Stream", "clicks"): ready_stream(EXAMPLES["Stream"]["spec"])}, tmp_path)
    assert (
        "spec.entity 'account_id' is not a field of Stream 'clicks'"
        in cond(out.status, "Degraded")["message"]
    )


def test_invalid_spec_is_permanent(tmp_path: Path) -> None:
    spec = {**EXAMPLES["TrainingJob"]["spec"], "workers": 0}
    out = run("TrainingJob", spec, {}, tmp_path)
    assert out.permanent_error is not None
    assert "spec.workers" in out.permanent_error
    assert cond(out.status, "Degraded")["reason"] == "InvalidSpec"


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1, "b": 2}, {"a": 1, "b": 3}, {"b": 3}),
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1, "gone": 2}, {"a": 1}, {"gone": None}),
        ({}, {"conditions": [{"type": "Ready"}]}, {"conditions": [{"type": "Ready"}]}),
    ],
)
def test_status_patch_carries_only_changes(
    old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]
) -> None:
    assert status_patch(old, new) == patch


def test_a_managed_stream_is_invalid_where_the_installation_runs_no_kafka(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GYRE_KAFKA_ENABLED", "false")
    out = run("Stream", EXAMPLES["Stream"]["spec"], {}, tmp_path)
    c = cond(out.status, "Ready")
    assert (c["status"], c["reason"]) == ("False", "InvalidSpec")
    assert "integrations.kafka.enabled is false" in c["message"]
    assert "spec.kafka.external" in c["message"]
