"""Prometheus metrics of the operator: reconciles, errors and durations per kind, and the
figures of objects the operator computes (an Experiment's trials by state, its best value, an
online Experiment's traffic share per variant; a FeatureJob's last run,
online store and validation failures)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from gyre.api import KINDS
from gyre.core.durations import parse_time

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
TRIAL_STATES = ("running", "completed", "pruned", "failed", "stopped")
EXPERIMENT_TRAFFIC = Gauge(
    "gyre_experiment_traffic_share",
    "Share of each online Experiment's traffic its variant gets now (the policy's allocation, or 1 "
    "for a promoted winner), 0 to 1",
    ["namespace", "experiment", "variant"],
)

_FJ = ["namespace", "featurejob"]
FEATURE_RUN_ROWS = Gauge("gyre_featurejob_last_run_rows", "Rows of each FeatureJob's last finished run", _FJ)
FEATURE_RUN_ENTITIES = Gauge(
    "gyre_featurejob_last_run_entities", "Entities of each FeatureJob's last finished run", _FJ
)
FEATURE_RUN_SECONDS = Gauge(
    "gyre_featurejob_last_run_duration_seconds", "Wall time of each FeatureJob's last finished run", _FJ
)
FEATURE_RUN_SUCCEEDED = Gauge(
    "gyre_featurejob_last_run_succeeded", "1 when each FeatureJob's last finished run succeeded, else 0", _FJ
)
FEATURE_RUN_TIME = Gauge(
    "gyre_featurejob_last_run_timestamp_seconds", "When each FeatureJob's last run finished (Unix time)", _FJ
)
FEATURE_ONLINE_KEYS = Gauge(
    "gyre_featurejob_online_keys",
    "Entities each FeatureJob's last materialization wrote to the online store",
    _FJ,
)
FEATURE_NEWEST = Gauge(
    "gyre_featurejob_online_newest_feature_timestamp_seconds",
    "Feature time of the newest row in each FeatureJob's online store (Unix time; its age is staleness)",
    _FJ,
)
FEATURE_VIOLATIONS = Gauge(
    "gyre_featurejob_validation_failures",
    "Rows of each FeatureJob's last run that broke a validation expectation",
    _FJ,
)
FEATURE_DRIFT = Gauge(
    "gyre_featurejob_drift_score",
    "Each feature's drift score against its FeatureJob's baseline in the last successful run",
    [*_FJ, "feature"],
)
_drift_features: dict[tuple[str, str], set[str]] = {}  # the feature labels set, per FeatureJob
_variants: dict[tuple[str, str], set[str]] = {}  # the variant labels set, per online Experiment
FEATURE_GAUGES = (
    FEATURE_RUN_ROWS, FEATURE_RUN_ENTITIES, FEATURE_RUN_SECONDS, FEATURE_RUN_SUCCEEDED,
    FEATURE_RUN_TIME, FEATURE_ONLINE_KEYS, FEATURE_NEWEST, FEATURE_VIOLATIONS,
)  # fmt: skip


def _unix(rfc3339: Any) -> float | None:
    if not isinstance(rfc3339, str):
        return None
    try:
        t = parse_time(rfc3339)
    except ValueError:
        return None
    return t.timestamp() if t is not None else None


def _set(gauge: Gauge, labels: tuple[str, ...], value: Any) -> None:
    if isinstance(value, bool):
        value = 1.0 if value else 0.0
    if isinstance(value, int | float):
        gauge.labels(*labels).set(value)


def _experiment(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    for state, count in (status.get("trials") or {}).items():
        EXPERIMENT_TRIALS.labels(namespace, name, state).set(count)
    _set(EXPERIMENT_BEST, (namespace, name), (status.get("best") or {}).get("value"))
    variants = [v for v in status.get("variants") or [] if isinstance(v, Mapping) and v.get("name")]
    known = _variants.setdefault((namespace, name), set())
    for gone in known - {str(v["name"]) for v in variants}:
        with contextlib.suppress(KeyError):
            EXPERIMENT_TRAFFIC.remove(namespace, name, gone)
    known.clear()
    for v in variants:
        labels = (namespace, name, str(v["name"]))
        known.add(labels[2])
        _set(EXPERIMENT_TRAFFIC, labels, v.get("allocation"))


def _featurejob(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    labels = (namespace, name)
    run = status.get("lastRun") or {}
    online = status.get("online") or {}
    _set(FEATURE_RUN_ROWS, labels, run.get("rows"))
    _set(FEATURE_RUN_ENTITIES, labels, run.get("entities"))
    _set(FEATURE_RUN_SECONDS, labels, run.get("durationSeconds"))
    _set(FEATURE_RUN_SUCCEEDED, labels, run.get("succeeded"))
    _set(FEATURE_RUN_TIME, labels, _unix(run.get("time")))
    _set(FEATURE_ONLINE_KEYS, labels, online.get("keys"))
    _set(FEATURE_NEWEST, labels, _unix(online.get("newestFeatureTime")))
    if run:
        _set(FEATURE_VIOLATIONS, labels, status.get("validationFailures") or 0)
    drift = status.get("drift") or {}
    known = _drift_features.setdefault(labels, set())
    for feature in known - set(drift):
        FEATURE_DRIFT.remove(*labels, feature)
    for feature, score in drift.items():
        _set(FEATURE_DRIFT, (*labels, feature), score)
    known.clear()
    known.update(drift)


def _forget_experiment(namespace: str, name: str) -> None:
    for state in TRIAL_STATES:
        with contextlib.suppress(KeyError):  # never set
            EXPERIMENT_TRIALS.remove(namespace, name, state)
    with contextlib.suppress(KeyError):
        EXPERIMENT_BEST.remove(namespace, name)
    for variant in _variants.pop((namespace, name), set()):
        with contextlib.suppress(KeyError):
            EXPERIMENT_TRAFFIC.remove(namespace, name, variant)


def _forget_featurejob(namespace: str, name: str) -> None:
    for gauge in FEATURE_GAUGES:
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    for feature in _drift_features.pop((namespace, name), set()):
        FEATURE_DRIFT.remove(namespace, name, feature)


_OBSERVE = {"Experiment": _experiment, "FeatureJob": _featurejob}
_FORGET = {"Experiment": _forget_experiment, "FeatureJob": _forget_featurejob}


def observe_status(kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """The per-object figures of a status the operator just computed."""
    observe = _OBSERVE.get(kind)
    if observe is not None:
        observe(namespace, name, status)


def forget(kind: str, namespace: str, name: str) -> None:
    """Drop the per-object series of a deleted object."""
    drop = _FORGET.get(kind)
    if drop is not None:
        drop(namespace, name)
