"""Comparing a shadow's answer with the client's: V1 and V2 bodies, fallbacks, mismatches."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gyre.pipelines.router.compare import difference, prediction_values


def v1(*preds: Any, fallback: bool = False) -> bytes:
    return json.dumps({"predictions": list(preds), "model_version": "m", "fallback": fallback}).encode()


def v2(*preds: float, fallback: bool = False) -> bytes:
    doc = {
        "outputs": [{"name": "predictions", "datatype": "FP32", "shape": [len(preds)], "data": list(preds)}]
    }
    return json.dumps({**doc, "parameters": {"fallback": fallback}}).encode()


def test_identical_answers_differ_by_nothing() -> None:
    assert difference(v1(0.25, 0.75), v1(0.25, 0.75)) == 0.0
    assert difference(v2(0.25, 0.75), v2(0.25, 0.75)) == 0.0


def test_the_difference_is_the_largest_absolute_one() -> None:
    assert difference(v1(0.2, 0.9), v1(0.25, 0.6)) == pytest.approx(0.3)
    assert difference(v2(0.5), v2(0.125)) == pytest.approx(0.375)
    assert difference(v1({"p": 0.5, "q": 0.1}), v1({"q": 0.2, "p": 0.5})) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("primary", "shadow"),
    [
        (v1(0.5), v1(0.5, 0.5)),  # not the same rows
        (v1(0.5), v1(0.5, fallback=True)),  # a default response says nothing about the model
        (v2(0.5, fallback=True), v2(0.5)),
        (v1(0.5), b"not json"),
        (b'{"error": "x"}', v1(0.5)),
        (v1(), v1()),
    ],
)
def test_answers_that_cannot_be_compared_are_none(primary: bytes, shadow: bytes) -> None:
    assert difference(primary, shadow) is None


def test_booleans_are_not_predictions() -> None:
    assert prediction_values({"predictions": [True, 0.5]}) == [0.5]
