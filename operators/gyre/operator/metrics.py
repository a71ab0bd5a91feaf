"""Prometheus metrics of the operator: reconciles, errors and durations per kind, and the
figures of objects the operator computes (an Experiment's trials by state, its best value)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from gyre.api import KINDS

RECONCILES = Counter(
    "gyre_reconciles_total", "Reconcile passes, by kind, trigger and result", ["kind", "trigger", "result"]
)
ERRORS = Counter("gyre_reconcile_errors_total", "Reconcile passes that raised or failed, by kind", ["kind"])
DURATION = Histogram(
    "gyre_reconcile_duration_seconds",
    "Wall time of one reconcile pass, by kind",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STATUS_WRITES = Counter("gyre_status_writes_total", "Status patches written, by kind", ["kind"])
OBJECTS = Gauge("gyre_objects", "Objects of each kind the operator knows", ["kind"])
WORKLOADS = Gauge(
    "gyre_workloads",
    "Workloads the operator applied for the objects of each kind (a total over them)",
    ["kind"],
)

# Every kind's error count exists from the start, at zero: a healthy operator then reports an
# error rate of 0 per kind instead of no series at all (which a dashboard shows as "No data").
for _kind in KINDS:
    ERRORS.labels(_kind)

EXPERIMENT_TRIALS = Gauge(
    "gyre_experiment_trials",
    "Trials of each Experiment's search, by state (running, completed, pruned, failed, stopped)",
    ["namespace", "experiment", "state"],
)
EXPERIMENT_BEST = Gauge(
    "gyre_experiment_best_value",
    "The best objective value of each Experiment's search so far (one objective)",
    ["namespace", "experiment"],
)


def observe_status(kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """The per-object figures of a status the operator just computed."""
    if kind != "Experiment":
        return
    for state, count in (status.get("trials") or {}).items():
        EXPERIMENT_TRIALS.labels(namespace, name, state).set(count)
    best = (status.get("best") or {}).get("value")
    if isinstance(best, int | float):
        EXPERIMENT_BEST.labels(namespace, name).set(best)


def forget(kind: str, namespace: str, name: str) -> None:
    """Drop the per-object series of a deleted object."""
    if kind != "Experiment":
        return
    for state in ("running", "completed", "pruned", "failed", "stopped"):
        with contextlib.suppress(KeyError):  # never set
            EXPERIMENT_TRIALS.remove(namespace, name, state)
    with contextlib.suppress(KeyError):
        EXPERIMENT_BEST.remove(namespace, name)
