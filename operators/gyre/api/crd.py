"""Renders the typed models into CustomResourceDefinitions (structural `openAPIV3Schema`).

Pydantic's JSON Schema is the starting point; this module turns it into what the API server
accepts: `$ref`s inlined, optional `anyOf [X, null]` collapsed to `X`, exclusive bounds in
OpenAPI v3.0 form, `null`s dropped from defaults, `additionalProperties: false` removed (the API
server's strict field validation rejects unknown fields instead), CEL rules kept, and a
type's format note (durations, quantities, URIs) appended to each field's description.
"""

from __future__ import annotations

import copy
from typing import Any

from gyre.api import KINDS
from gyre.api._base import FORMAT_HINT, GROUP, VERSION, BaseStatus, Kind

_DROP = {"title", "$defs"}


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        target.update(node)  # siblings of $ref (default, description) win
        node = target
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"union types are not structural: {options}")
        merged = dict(options[0])
        merged.update(node)
        return _structural(merged, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = dict(node.pop("allOf")[0])
        merged.update(node)
        return _structural(merged, defs)
    if FORMAT_HINT in node:  # the type's format note goes after the field's own description
        hint = node.pop(FORMAT_HINT)
        own = str(node.get("description") or "").strip()
        node["description"] = f"{own} {hint}" if own else hint
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not isinstance(node[key], bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            node[bound] = node[key]
            node[key] = True
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "default" in node:
        if node["default"] is None:
            del node["default"]
        else:
            node["default"] = _strip_nulls(node["default"])
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _without_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    return node


def openapi_schema(model: type[Kind] | type[BaseStatus]) -> dict[str, Any]:
    """The structural schema of one model, every reference inlined."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return dict(_structural(raw, raw.get("$defs", {})))


def build_crd(spec_model: type[Kind]) -> dict[str, Any]:
    info = spec_model.INFO
    spec = openapi_schema(spec_model)
    status = _without_defaults(openapi_schema(spec_model.STATUS))  # the operator writes status whole
    status.pop("x-kubernetes-preserve-unknown-fields", None)
    status["x-kubernetes-preserve-unknown-fields"] = True  # figures a later version adds survive
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "gyre"},
            "annotations": {"gyre.dev/generated": "make manifests: do not edit"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": info.short_names,
                "categories": info.categories,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": info.printer_columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (spec_model.__doc__ or "").strip(),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def build_all() -> dict[str, dict[str, Any]]:
    """File name → CRD, for every kind."""
    return {f"{GROUP}_{m.INFO.plural}.yaml": build_crd(m) for m in KINDS.values()}
