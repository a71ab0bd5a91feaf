"""What `gyre demo` checks, and where its data goes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gyre.demo import EXPECTED, MANIFEST_DATA_DIR, Expected, clickstream, data_paths, load_examples
from gyre.manifests import repo_root

EXAMPLES = repo_root() / "manifests/examples"


def obj(phase: str | None = None, ready: str | None = None, reason: str = "R") -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": []}
    if phase:
        status["phase"] = phase
    if ready:
        status["conditions"].append({"type": "Ready", "status": ready, "reason": reason})
    return {"status": status}


@pytest.mark.parametrize(
    ("kind", "found", "holds"),
    [
        ("Stream", obj("Running", "True"), True),
        ("Stream", obj("Pending", "False"), False),
        ("Stream", {}, False),
        ("TrainingJob", obj("Succeeded", "True", "ModelAvailable"), True),
        ("TrainingJob", obj("Failed", "False", "BackoffLimitExceeded"), False),
        ("TrainingJob", obj("Running", "False"), False),
        ("FeatureJob", obj("Ready", "True", "FeaturesAvailable"), True),
        ("FeatureJob", obj("Failed", "True", "FeaturesAvailable"), False),
        ("FeatureJob", obj(None, "False", "NotSupportedYet"), False),
        ("Experiment", obj("Succeeded", "True", "MaxTrialsReached"), True),
        ("Experiment", obj("Running", "False", "Searching"), False),
        ("Experiment", obj(None, "False", "NotSupportedYet"), False),
        ("InferenceService", obj("Running", "True", "Serving"), True),
        ("InferenceService", obj(None, "False", "OnlineStoreUnknown"), False),
        ("InferenceService", obj(None, "False", "NotSupportedYet"), False),
        ("InferenceService", obj(None, "False", "DependencyNotReady"), False),
        ("InferenceService", obj(None, "True", "WorkloadsReady"), False),
    ],
)
def test_expected_states(kind: str, found: dict[str, Any], holds: bool) -> None:
    assert (EXPECTED[kind].mismatch(found) is None) == holds


def test_a_mismatch_says_what_was_found() -> None:
    found = obj("Failed", "False", "BackoffLimitExceeded")
    assert Expected(phase="Succeeded").mismatch(found) == "phase Failed, Ready=False (BackoffLimitExceeded)"


def test_every_example_kind_has_an_expected_state() -> None:
    assert {m.kind for m in load_examples(EXAMPLES, MANIFEST_DATA_DIR)} == set(EXPECTED)


def test_data_paths_are_those_of_the_manifests() -> None:
    paths = data_paths(load_examples(EXAMPLES, MANIFEST_DATA_DIR), MANIFEST_DATA_DIR)
    assert MANIFEST_DATA_DIR / "lake/clicks" in paths
    assert MANIFEST_DATA_DIR / "models/churn" in paths
    assert all(p.is_relative_to(MANIFEST_DATA_DIR) for p in paths)


def test_another_data_dir_moves_every_path(tmp_path: Path) -> None:
    manifests = load_examples(EXAMPLES, tmp_path)
    assert all(str(MANIFEST_DATA_DIR) not in m.text for m in manifests)
    paths = data_paths(manifests, tmp_path)
    assert tmp_path / "lake/clicks" in paths
    assert len(paths) == len(data_paths(load_examples(EXAMPLES, MANIFEST_DATA_DIR), MANIFEST_DATA_DIR))
    stream = next(m for m in manifests if m.kind == "Stream")
    assert stream.spec()["sinks"][0]["lake"]["uri"] == f"file://{tmp_path}/lake/clicks"


def test_one_session_in_a_hundred_is_malformed() -> None:
    events = clickstream(1000, seed=7)
    assert sum(e["plan"] not in ("free", "pro", "team") for e in events) == 10
    assert clickstream(1000, seed=7) == events
