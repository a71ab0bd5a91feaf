"""Conditions shaped like metav1.Condition, and the status conventions every kind shares.

`lastTransitionTime` changes only when a condition's status flips; reasons are CamelCase
constants defined here so that every kind speaks the same words.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Condition types.
READY = "Ready"
DRIFTED = "Drifted"  # inputs or features moved away from their reference distribution
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
DEPENDENCIES_READY = "DependenciesReady"

# Reasons.
DEPENDENCY_MISSING = "DependencyMissing"
DEPENDENCY_NOT_READY = "DependencyNotReady"
DEPENDENCIES_RESOLVED = "DependenciesResolved"
INVALID_SPEC = "InvalidSpec"
WORKLOADS_STARTING = "WorkloadsStarting"
WORKLOADS_READY = "WorkloadsReady"
WORKLOAD_FAILED = "WorkloadFailed"
RUNTIME_ERROR = "RuntimeError"
NOT_SUPPORTED = "NotSupportedYet"
AS_EXPECTED = "AsExpected"
RECONCILED = "Reconciled"


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Cond:
    """A desired condition; the time is filled in by `merge_conditions`."""

    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str = ""

    @property
    def status_str(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def merge_conditions(
    old: Iterable[Mapping[str, Any]] | None,
    desired: Iterable[Cond],
    generation: int | None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Apply desired conditions over the old list, keeping transition times that did not flip.

    Conditions of types not in ``desired`` are kept as they were (another part of the
    reconcile may own them); the result is ordered by type for stable comparisons.
    """
    when = now or now_rfc3339()
    by_type: dict[str, dict[str, Any]] = {c["type"]: dict(c) for c in (old or []) if "type" in c}
    for cond in desired:
        prev = by_type.get(cond.type)
        flipped = prev is None or prev.get("status") != cond.status_str
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status_str,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": when if flipped else prev.get("lastTransitionTime", when),  # type: ignore[union-attr]
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        by_type[cond.type] = entry
    return [by_type[t] for t in sorted(by_type)]


def condition(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type_: str = READY) -> bool:
    c = condition(conditions, type_)
    return c is not None and c.get("status") == "True"
