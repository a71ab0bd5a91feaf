"""Condition bookkeeping: transition times move only when a status flips."""

from __future__ import annotations

import pytest
from gyre.core.conditions import Cond, merge_conditions
from gyre.core.durations import parse_duration


def test_transition_time_changes_only_when_status_flips() -> None:
    first = merge_conditions([], [Cond("Ready", False, "DependencyMissing", "a")], 1, now="T1")
    assert first[0]["lastTransitionTime"] == "T1"
    same = merge_conditions(first, [Cond("Ready", False, "DependencyNotReady", "b")], 2, now="T2")
    assert same[0]["lastTransitionTime"] == "T1"
    assert (same[0]["reason"], same[0]["message"], same[0]["observedGeneration"]) == (
        "DependencyNotReady",
        "b",
        2,
    )
    flipped = merge_conditions(same, [Cond("Ready", True, "WorkloadsReady")], 2, now="T3")
    assert flipped[0]["lastTransitionTime"] == "T3"
    assert flipped[0]["status"] == "True"


def test_conditions_not_mentioned_are_kept_and_order_is_stable() -> None:
    old = merge_conditions([], [Cond("Progressing", True, "X"), Cond("Ready", False, "Y")], 1, now="T")
    new = merge_conditions(old, [Cond("Degraded", False, "AsExpected")], 1, now="T")
    assert [c["type"] for c in new] == ["Degraded", "Progressing", "Ready"]
    assert merge_conditions(new, [], 1, now="T9") == new


def test_durations() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("2w") == 14 * 86400
    with pytest.raises(ValueError, match="ms, s, m, h, d, w"):
        parse_duration("7 days")
