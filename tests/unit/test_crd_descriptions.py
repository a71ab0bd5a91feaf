"""`kubectl explain` documents every field: each property of every generated CRD has a description.

The committed CRDs (what `kubectl apply -f manifests/crds` and the chart install) are walked,
not the models, so the test sees exactly what the API server serves; `test_api` separately
fails when they are stale.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from gyre.api import KINDS
from gyre.manifests import repo_root

CRD_DIR = repo_root() / "manifests" / "crds"
# Too short to tell a user anything the name does not ("The name.").
MIN_WORDS = 3


def _crd(kind: str) -> dict[str, Any]:
    path = CRD_DIR / f"gyre.dev_{KINDS[kind].INFO.plural}.yaml"
    return dict(yaml.safe_load(Path(path).read_text()))


def properties(node: Any, path: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(path, property name, schema) for every property under ``node``, lists and maps included."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    if not isinstance(node, dict):
        return out
    for name, sub in (node.get("properties") or {}).items():
        out.append((f"{path}.{name}", name, sub))
        out += properties(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out += properties(node[key], f"{path}[]")
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text).lower())


def problems(schema: dict[str, Any], root: str) -> list[str]:
    out = []
    for path, name, sub in properties(schema, root):
        text = str(sub.get("description") or "").strip()
        if not text:
            out.append(f"{path}: no description")
        elif len(_words(text)) < MIN_WORDS or _words(text) == _words(name):
            out.append(f"{path}: description {text!r} only restates the name")
    return out


@pytest.mark.parametrize("part", ["spec", "status"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_field_has_a_description(kind: str, part: str) -> None:
    top = _crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert top["properties"][part].get("description"), f"{kind}.{part} has no description"
    found = problems(top["properties"][part], f"{kind}.{part}")
    assert not found, f"{len(found)} fields of {kind}.{part} lack a useful description:\n" + "\n".join(found)


def test_the_walk_sees_nested_lists_and_maps() -> None:
    """The check must reach fields inside list items and map values, and flag what it should."""
    schema = {
        "properties": {
            "sinks": {
                "type": "array",
                "description": "Where the events go.",
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
            "replicas": {
                "type": "object",
                "description": "Workers by role, counted.",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"active": {"type": "integer", "description": "Active."}},
                },
            },
            "topicName": {"type": "string", "description": "Topic name"},
        }
    }
    assert problems(schema, "x") == [
        "x.sinks[].name: no description",
        "x.replicas[].active: description 'Active.' only restates the name",
        "x.topicName: description 'Topic name' only restates the name",
    ]
