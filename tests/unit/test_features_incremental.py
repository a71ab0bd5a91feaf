"""What an incremental run reads and recomputes, and every reason a run is full instead
(`gyre.pipelines.features.incremental`; the equality with a full run is proven on real Spark
in ``test_featurejob_local``)."""

from __future__ import annotations

from typing import Any

import pytest
from gyre.pipelines.features import incremental
from gyre.pipelines.features.config import (
    FeatureConfig,
    FeatureJobConfig,
    LabelConfig,
    SourceConfig,
    SpineConfig,
)
from gyre.pipelines.features.status import OfflineVersion

H = 3600.0
DAYS = [f"date=2025-01-{d:02d}" for d in range(1, 11)]
BASE = OfflineVersion(version="20250110T000000Z-abcdef", uri="file:///off/versions/v1", rows=1)


def config(**changes: Any) -> FeatureJobConfig:
    doc: dict[str, Any] = {
        "name": "churn",
        "generation": 1,
        "source": SourceConfig(kind="lake", uri="file:///lake"),
        "entity": "user_id",
        "timestamp_field": "ts",
        "features": (
            FeatureConfig(name="n_1d", aggregation="count", window_s=24 * H),
            FeatureConfig(name="max_3d", aggregation="max", field="v", window_s=72 * H),
        ),
        "labels": (LabelConfig(name="active", expression="count(*) > 0", horizon_s=48 * H),),
        "offline_uri": "file:///off",
    }
    return FeatureJobConfig(**(doc | changes))


def manifest(cfg: FeatureJobConfig, parts: list[str], as_of_day: str = "2025-01-08") -> dict[str, Any]:
    return {
        incremental.PIT_KEY: incremental.pit_key(cfg),
        incremental.INPUTS: {p: "f-" + p for p in parts},
        incremental.AS_OF_US: incremental.day_start_us(as_of_day) + 15 * 3_600_000_000,
    }


def fingerprints(parts: list[str], grown: tuple[str, ...] = ()) -> dict[str, str]:
    return {p: ("g-" if p in grown else "f-") + p for p in parts}


def test_new_days_recompute_from_the_horizon_before_them_and_read_the_window_before_that() -> None:
    cfg = config()
    plan = incremental.plan(cfg, DAYS, fingerprints(DAYS), BASE, manifest(cfg, DAYS[:8]))
    assert plan.incremental
    assert plan.full_reason == ""
    assert plan.changed == ("date=2025-01-09", "date=2025-01-10")
    # as_of was the 8th at 15:00: rows of the 6th onwards may still get their 2-day label.
    assert plan.recompute_from == "2025-01-06"
    assert plan.recompute_from_us == incremental.day_start_us("2025-01-06")
    assert plan.read == tuple(DAYS[2:]), "from the 3rd: the 3-day window before the 6th"
    assert plan.base == BASE


def test_a_grown_old_day_moves_the_first_recomputed_day_back() -> None:
    cfg = config()
    grown = ("date=2025-01-04",)
    plan = incremental.plan(cfg, DAYS[:8], fingerprints(DAYS[:8], grown), BASE, manifest(cfg, DAYS[:8]))
    assert plan.changed == grown
    assert plan.recompute_from == "2025-01-02"  # the 4th less the 2-day horizon
    assert plan.read == tuple(DAYS[:8]), "the window before the 2nd starts before the lake"


def test_nothing_new_recomputes_only_the_rows_whose_label_may_still_change() -> None:
    cfg = config(labels=())
    plan = incremental.plan(cfg, DAYS[:8], fingerprints(DAYS[:8]), BASE, manifest(cfg, DAYS[:8]))
    assert plan.incremental
    assert plan.changed == ()
    assert plan.recompute_from == "2025-01-08"
    assert plan.read == tuple(DAYS[4:8])


@pytest.mark.parametrize(
    ("cfg", "parts", "old", "reason"),
    [
        (config(), DAYS, None, "no earlier version"),
        (config(entity="account"), DAYS, config(), "differ from version"),
        (
            config(features=(FeatureConfig(name="n_all", aggregation="count"),)),
            DAYS,
            "same",
            "feature n_all has no window",
        ),
        (config(spine=SpineConfig(kind="path", path="/spine.parquet")), DAYS, "same", "the spine is a file"),
        (config(), [*DAYS, "extra.parquet"], "same", "extra.parquet is not a lake day"),
        (config(), DAYS[1:], "same", "date=2025-01-01 was removed"),
    ],
    ids=["first", "definition", "unbounded", "file-spine", "not-a-day", "removed"],
)
def test_full_runs_say_why(cfg: FeatureJobConfig, parts: list[str], old: Any, reason: str) -> None:
    doc = None if old is None else manifest(cfg if old == "same" else old, DAYS)
    plan = incremental.plan(cfg, parts, fingerprints(parts), None if old is None else BASE, doc)
    assert not plan.incremental
    assert reason in plan.full_reason
    assert plan.read == plan.changed == tuple(parts)
    assert plan.recompute_from == ""
    assert plan.recompute_from_us is None


def test_a_version_without_recorded_inputs_is_followed_by_a_full_run() -> None:
    cfg = config()
    doc = {incremental.PIT_KEY: incremental.pit_key(cfg)}
    plan = incremental.plan(cfg, DAYS, fingerprints(DAYS), BASE, doc)
    assert not plan.incremental
    assert "does not record its inputs" in plan.full_reason


def test_the_key_ignores_what_does_not_change_rows() -> None:
    assert incremental.pit_key(config()) == incremental.pit_key(config(generation=7, keep_versions=2))
    assert incremental.pit_key(config()) != incremental.pit_key(config(timestamp_field="event_time"))
