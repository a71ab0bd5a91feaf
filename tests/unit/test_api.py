"""The API models, the CRDs rendered from them, and the committed generated files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from gyre.api import KINDS, StreamSpec, TrainingJobSpec
from gyre.api.crd import build_all, openapi_schema
from gyre.manifests import repo_root, stale_files
from pydantic import ValidationError

ROOT = repo_root()
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
# Short names of kinds that live beside Gyre's in real clusters (KServe, Katib, Kubeflow
# training, Strimzi, Spark operator); Gyre's must not shadow them.
FOREIGN_SHORT_NAMES = {
    "isvc",
    "inferenceservice",
    "exp",
    "trial",
    "tj",
    "pytorchjob",
    "kt",
    "k",
    "sparkapp",
}


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key in ("properties",):
            for name, sub in node.get(key, {}).items():
                out += _walk(sub, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                out += _walk(node[key], f"{path}[]")
    return out


def test_every_example_parses_into_its_typed_model() -> None:
    assert len(EXAMPLES) == 5
    kinds = set()
    for path in EXAMPLES:
        doc = yaml.safe_load(path.read_text())
        KINDS[doc["kind"]].model_validate(doc["spec"])
        kinds.add(doc["kind"])
    assert kinds == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_schema_is_structural(kind: str) -> None:
    """Every node has a type, no unions or references survive, objects say what they hold."""
    crd = build_all()[f"gyre.dev_{KINDS[kind].INFO.plural}.yaml"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "type" in node, f"{kind}{path} has no type"
        for banned in ("anyOf", "oneOf", "allOf", "$ref", "$defs", "title", "const"):
            assert banned not in node, f"{kind}{path} has {banned}"
        assert node.get("additionalProperties") is not False
        if node["type"] == "object" and path != ".metadata":  # the API server owns metadata
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), f"{kind}{path} is an object with no shape"
        assert node.get("default", 0) is not None, f"{kind}{path} defaults to null"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_names_status_and_columns(kind: str) -> None:
    crd = build_all()[f"gyre.dev_{KINDS[kind].INFO.plural}.yaml"]
    names = crd["spec"]["names"]
    assert names["categories"] == ["gyre"]
    assert not set(names["shortNames"]) & FOREIGN_SHORT_NAMES
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Ready", "Reason", "Age"} <= columns
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "reason", "lastTransitionTime"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def test_short_names_are_unique_across_kinds() -> None:
    seen: list[str] = []
    for model in KINDS.values():
        seen += model.INFO.short_names
    assert len(seen) == len(set(seen))


def test_schema_carries_bounds_enums_defaults_and_cel() -> None:
    schema = openapi_schema(StreamSpec)
    partitions = schema["properties"]["topic"]["properties"]["partitions"]
    assert (partitions["minimum"], partitions["maximum"], partitions["default"]) == (1, 1000, 3)
    policy = schema["properties"]["topic"]["properties"]["cleanupPolicy"]
    assert policy["enum"] == ["delete", "compact", "compact,delete"]
    rules = [r["rule"] for r in schema["properties"]["kafka"]["x-kubernetes-validations"]]
    assert any("has(self.managed)" in r and "has(self.external)" in r for r in rules)
    lr = openapi_schema(TrainingJobSpec)["properties"]["hyperparameters"]["properties"]["learningRate"]
    assert lr["exclusiveMinimum"] is True
    assert lr["minimum"] == 0


def test_models_reject_what_the_api_server_rejects() -> None:
    doc = yaml.safe_load((ROOT / "manifests/examples/01-stream.yaml").read_text())
    doc["spec"]["topic"]["partitions"] = 0
    with pytest.raises(ValidationError, match="partitions"):
        StreamSpec.model_validate(doc["spec"])
    doc["spec"]["topic"]["partitions"] = 3
    doc["spec"]["bogus"] = 1
    with pytest.raises(ValidationError, match="bogus"):
        StreamSpec.model_validate(doc["spec"])


def test_generated_files_are_up_to_date() -> None:
    """`make manifests` output is committed; this fails when the models changed without it."""
    assert stale_files(ROOT) == []


def test_stale_check_notices_an_edit(tmp_path: Path) -> None:
    for sub in ("manifests/crds", "charts/gyre/crds"):
        (tmp_path / sub).mkdir(parents=True)
        for f in (ROOT / sub).glob("gyre.dev_*.yaml"):
            (tmp_path / sub / f.name).write_text(f.read_text())
    assert stale_files(tmp_path) == []
    target = tmp_path / "charts/gyre/crds/gyre.dev_streams.yaml"
    target.write_text(target.read_text().replace("maximum: 1000", "maximum: 999"))
    assert stale_files(tmp_path) == ["charts/gyre/crds/gyre.dev_streams.yaml"]
