"""The per-object figures the operator exports from the statuses it computes."""

from __future__ import annotations

from gyre.operator import metrics
from prometheus_client import REGISTRY


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_featurejobs_last_run_and_online_store_are_exported_and_forgotten() -> None:
    status = {
        "phase": "Ready",
        "lastRun": {
            "rows": 1200,
            "entities": 300,
            "durationSeconds": 12.5,
            "succeeded": True,
            "time": "2026-01-02T03:04:05Z",
        },
        "online": {"keys": 300, "newestFeatureTime": "2026-01-02T00:00:00Z"},
        "validationFailures": 4,
        "drift": {"sessions_7d": 0.31, "views_7d": 0.02},
    }
    metrics.observe_status("FeatureJob", "ml", "churn-features", status)
    one = {"namespace": "ml", "featurejob": "churn-features"}
    assert value("gyre_featurejob_last_run_rows", **one) == 1200
    assert value("gyre_featurejob_last_run_entities", **one) == 300
    assert value("gyre_featurejob_last_run_duration_seconds", **one) == 12.5
    assert value("gyre_featurejob_last_run_succeeded", **one) == 1
    assert value("gyre_featurejob_last_run_timestamp_seconds", **one) == 1767323045
    assert value("gyre_featurejob_online_keys", **one) == 300
    assert value("gyre_featurejob_online_newest_feature_timestamp_seconds", **one) == 1767312000
    assert value("gyre_featurejob_validation_failures", **one) == 4
    assert value("gyre_featurejob_drift_score", **one, feature="sessions_7d") == 0.31

    failed = {
        **status,
        "lastRun": {**status["lastRun"], "succeeded": False},
        "validationFailures": None,
        "drift": {"views_7d": 0.5},  # a feature no longer scored loses its series
    }
    metrics.observe_status("FeatureJob", "ml", "churn-features", failed)
    assert value("gyre_featurejob_last_run_succeeded", **one) == 0
    assert value("gyre_featurejob_validation_failures", **one) == 0
    assert value("gyre_featurejob_drift_score", **one, feature="sessions_7d") is None
    assert value("gyre_featurejob_drift_score", **one, feature="views_7d") == 0.5

    metrics.forget("FeatureJob", "ml", "churn-features")
    assert value("gyre_featurejob_last_run_rows", **one) is None
    assert value("gyre_featurejob_online_keys", **one) is None
    assert value("gyre_featurejob_drift_score", **one, feature="views_7d") is None


def test_a_featurejob_before_its_first_run_exports_nothing() -> None:
    metrics.observe_status("FeatureJob", "ml", "fresh", {"phase": "WaitingForData"})
    assert value("gyre_featurejob_last_run_rows", namespace="ml", featurejob="fresh") is None
    assert value("gyre_featurejob_validation_failures", namespace="ml", featurejob="fresh") is None
