"""Comparing a shadow's answer with the answer the client got: pure.

A model server answers V1 with ``{"predictions": [...], "fallback": bool, ...}`` and V2 with
``{"outputs": [{"name": ..., "data": [...]}, ...], "parameters": {"fallback": bool}}``. The
numbers of both answers are compared in order; the difference is the largest absolute one.
Answers that cannot be compared — not JSON, no predictions, a different number of them, or a
fallback on either side (a default response says nothing about the model) — are None.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_COMPARED_BYTES = 64 * 1024


def prediction_values(doc: Any) -> list[float] | None:
    """The numbers a model server's answer predicts, in order; None when there are none or
    the answer is a fallback."""
    if not isinstance(doc, dict):
        return None
    if doc.get("fallback") is True or (doc.get("parameters") or {}).get("fallback") is True:
        return None
    if "predictions" in doc:
        values = _numbers(doc["predictions"])
    elif isinstance(doc.get("outputs"), list):
        values = [x for out in doc["outputs"] if isinstance(out, dict) for x in _numbers(out.get("data"))]
    else:
        return None
    return values or None


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _numbers(value[k])]
    return []


def _parse(content: bytes) -> Any:
    if len(content) > MAX_COMPARED_BYTES:
        return None
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return None


def difference(primary: bytes, shadow: bytes) -> float | None:
    """The largest absolute difference between the two answers' predictions (None: not
    comparable)."""
    a, b = prediction_values(_parse(primary)), prediction_values(_parse(shadow))
    if a is None or b is None or len(a) != len(b):
        return None
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return max(diffs) if all(math.isfinite(d) for d in diffs) else None
