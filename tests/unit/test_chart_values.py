"""Specification tests for the chart's values: documented, validated by the schema, in README.

These need no helm: they read `values.yaml`, `values.schema.json` and `README.md` and run the
chart's `hack/generate_readme.py` in-process. That helm validates values against the schema (and
rejects bad ones) is specified in `test_chart_templates.py`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "gyre"


def load_hack(name: str) -> ModuleType:
    """Imports one of the chart's hack/ scripts (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"chart_hack_{name}", CHART / "hack" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    loaded = yaml.safe_load((CHART / "values.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded = json.loads((CHART / "values.schema.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def schema_paths(node: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """Dotted value path -> its schema node, for every property the schema declares."""
    paths = {}
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths[path] = child
        paths.update(schema_paths(child, f"{path}."))
    return paths


def test_should_describe_every_schema_property(schema: dict[str, Any]) -> None:
    undescribed = [path for path, node in schema_paths(schema).items() if "description" not in node]
    assert not undescribed


def test_should_give_every_value_a_schema_and_reject_unknown_keys(
    values: dict[str, Any], schema: dict[str, Any]
) -> None:
    declared = schema_paths(schema)
    assert schema["additionalProperties"] is False

    def check(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            assert path in declared, f"{path} has no schema"
            child = declared[path]
            if isinstance(value, dict) and "properties" in child:
                assert child.get("additionalProperties") is False, f"{path} accepts unknown keys"
                check(value, f"{path}.")

    check(values, "")


def test_should_document_every_value_with_an_at_param_line(values: dict[str, Any]) -> None:
    readme = load_hack("generate_readme")
    params = readme.read_params((CHART / "values.yaml").read_text())
    assert not readme.undocumented(values, {p.key for p in params})


def test_should_document_only_values_that_exist(values: dict[str, Any]) -> None:
    readme = load_hack("generate_readme")
    for param in readme.read_params((CHART / "values.yaml").read_text()):
        readme.lookup(values, param.key)  # raises KeyError for a stale @param


def test_should_keep_one_block_per_component_with_an_enabled_switch(
    values: dict[str, Any],
) -> None:
    components = [
        values["operator"],
        values["metrics"],
        values["metrics"]["serviceMonitor"],
        values["grafana"]["dashboards"],
        values["integrations"]["kafka"],
        values["integrations"]["spark"],
        values["integrations"]["kserve"],
    ]
    for component in components:
        assert isinstance(component["enabled"], bool)


def test_should_keep_the_readme_parameter_tables_in_sync_with_values() -> None:
    assert load_hack("generate_readme").main(["--check"]) == 0, (
        "run: python charts/gyre/hack/generate_readme.py"
    )
