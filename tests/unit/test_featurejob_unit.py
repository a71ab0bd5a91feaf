"""FeatureJob: what the builder turns a spec into, and the pure status decision."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import yaml
from gyre.api.featurejob import FeatureJobSpec, LastRun
from gyre.builders import featurejob as bf
from gyre.controllers.base import ObjectMeta, StatusInput
from gyre.controllers.featurejob import (
    DecisionInput,
    FeatureFacts,
    FeatureJobController,
    decide,
    plan_run,
)
from gyre.core.workload import ConfigDirRef, EndpointRef, RestartPolicy, WorkloadKind, WorkloadStatus
from gyre.core.workload import WorkloadPhase as P
from gyre.manifests import repo_root
from gyre.pipelines.features.config import FeatureJobConfig
from gyre.pipelines.features.status import FeatureRunStatus, OfflineVersion, OnlineResult

EXAMPLE = next(
    doc
    for doc in (yaml.safe_load(p.read_text()) for p in (repo_root() / "manifests/examples").glob("*.yaml"))
    if doc["kind"] == "FeatureJob"
)
LAKE = bf.ResolvedSource("lake", "file:///lake/clicks", [("user_id", "string"), ("ts", "timestamp")])


def spec(**changes: Any) -> FeatureJobSpec:
    return FeatureJobSpec.model_validate({**EXAMPLE["spec"], **changes})


def config_of(w: Any) -> FeatureJobConfig:
    return FeatureJobConfig.model_validate(json.loads(w.config_files[bf.CONFIG_FILE]))


def test_the_example_becomes_a_redis_and_a_spark_run() -> None:
    redis, run = bf.build_featurejob(spec(), "demo", "churn-features", 3, LAKE)
    assert (redis.name, redis.kind, redis.command[0]) == ("redis", WorkloadKind.SERVICE, "redis-server")
    assert redis.readiness is not None
    assert redis.readiness.port == "redis"
    assert redis.on_kubernetes is not None
    assert redis.on_kubernetes.image.startswith("redis:")
    assert (run.name, run.kind, run.restart_policy) == ("spark", WorkloadKind.BATCH, RestartPolicy.ON_FAILURE)
    assert run.command == ("python", "-m", "gyre.pipelines.features")
    assert run.env["GYRE_CONFIG"] == ConfigDirRef(bf.CONFIG_FILE)
    assert run.env["GYRE_REDIS_ADDR"] == EndpointRef("redis", "redis")
    assert run.status_port == "status"
    cfg = config_of(run)
    assert cfg.generation == 3
    assert cfg.master == "local[1]"
    assert cfg.source.kind == "lake"
    assert [f.name for f in cfg.source.fields] == ["user_id", "ts"]
    windows = {f.name: f.window_s for f in cfg.features}
    assert windows["sessions_7d"] == 7 * 86400
    assert windows["tickets_30d"] == 30 * 86400
    assert cfg.features[-1].sql is not None
    assert cfg.features[-1].aggregation is None
    assert [(lab.name, lab.horizon_s) for lab in cfg.labels] == [("churned", 2 * 86400)]
    assert cfg.spine.kind == "events"
    assert cfg.online is not None
    assert cfg.online.redis_url is None
    assert (cfg.online.key_prefix, cfg.online.ttl_s) == ("gyre:demo:churn-features:", 48 * 3600)
    assert cfg.spark_conf["spark.driver.bindAddress"] == "127.0.0.1"


def test_an_external_redis_runs_none_and_the_spark_settings_reach_the_run() -> None:
    s = spec(
        online={"redisUrl": "redis://cache:6379/0", "ttl": "1h"},
        spark={
            "executors": 2,
            "executor": {"cpu": "1500m"},
            "driver": {"memory": "2Gi"},
            "conf": {"spark.sql.shuffle.partitions": "7"},
        },
        spine={"every": "1d"},
    )
    (run,) = bf.build_featurejob(s, "ns", "f", 1, LAKE)
    cfg = config_of(run)
    assert "GYRE_REDIS_ADDR" not in run.env
    assert cfg.online is not None
    assert cfg.online.redis_url == "redis://cache:6379/0"
    assert cfg.master == "local[4]"  # 2 executors x 2 cores (1.5 rounded up)
    assert cfg.driver_memory == "2048m"
    assert cfg.spark_conf["spark.sql.shuffle.partitions"] == "7"
    assert (cfg.spine.kind, cfg.spine.every_s) == ("every", 86400)


def test_no_online_store_and_a_file_spine() -> None:
    (run,) = bf.build_featurejob(
        spec(online={"enabled": False}, spine={"path": "file:///spine"}), "ns", "f", 1, LAKE
    )
    cfg = config_of(run)
    assert cfg.online is None
    assert cfg.spine.path == "file:///spine"


def _in(**over: Any) -> DecisionInput:
    base: dict[str, Any] = {
        "source_known": True,
        "run_phase": P.RUNNING,
        "run_message": "",
        "doc": None,
        "last": None,
        "has_version": False,
        "online_wanted": True,
        "online_expires_in_s": None,
        "redis_down": False,
    }
    return DecisionInput(**(base | over))


OK = LastRun(generation=1, succeeded=True)
BAD = LastRun(generation=1, succeeded=False, reason="InvalidExpression", message="feature 'x': bad")


@pytest.mark.parametrize(
    ("case", "inp", "phase", "ready", "progressing", "degraded"),
    [
        (
            "a Stream without a lake yet",
            _in(source_known=False),
            "Waiting",
            ("False", "WaitingForLake"),
            ("True", "WaitingForLake"),
            None,
        ),
        (
            "no data yet: waiting, not failed",
            _in(doc=FeatureRunStatus(phase="waiting", message="empty")),
            "Waiting",
            ("False", "SourceEmpty"),
            ("True", "WaitingForData"),
            None,
        ),
        (
            "the first run computing",
            _in(doc=FeatureRunStatus(phase="running", step="computing")),
            "Running",
            ("False", "NoVersionYet"),
            ("True", "Running"),
            None,
        ),
        (
            "a second run computing keeps Ready",
            _in(doc=FeatureRunStatus(phase="running"), has_version=True),
            "Running",
            ("True", "FeaturesAvailable"),
            ("True", "Running"),
            None,
        ),
        (
            "succeeded, fresh",
            _in(run_phase=P.SUCCEEDED, last=OK, has_version=True, online_expires_in_s=99),
            "Ready",
            ("True", "FeaturesAvailable"),
            ("False", "FeaturesAvailable"),
            None,
        ),
        (
            "succeeded, online values past their TTL",
            _in(run_phase=P.SUCCEEDED, last=OK, has_version=True, online_expires_in_s=-1),
            "Degraded",
            ("False", "OnlineStale"),
            ("False", "OnlineStale"),
            ("True", "OnlineStale"),
        ),
        (
            "succeeded, the Redis is down",
            _in(run_phase=P.SUCCEEDED, last=OK, has_version=True, redis_down=True),
            "Degraded",
            ("False", "OnlineStoreDown"),
            ("False", "OnlineStoreDown"),
            ("True", "OnlineStoreDown"),
        ),
        (
            "an invalid expression, no version",
            _in(run_phase=P.SUCCEEDED, last=BAD),
            "Failed",
            ("False", "InvalidExpression"),
            ("False", "InvalidExpression"),
            ("True", "InvalidExpression"),
        ),
        (
            "an invalid expression keeps the previous version Ready",
            _in(run_phase=P.SUCCEEDED, last=BAD, has_version=True),
            "Failed",
            ("True", "FeaturesAvailable"),
            ("False", "InvalidExpression"),
            ("True", "InvalidExpression"),
        ),
        (
            "a failure being retried",
            _in(run_phase=P.PENDING, last=BAD),
            "Retrying",
            ("False", "InvalidExpression"),
            ("True", "Retrying"),
            ("True", "InvalidExpression"),
        ),
        (
            "the run failed past its restarts without a word",
            _in(run_phase=P.FAILED, run_message="exit 1\nOOM"),
            "Failed",
            ("False", "RunFailed"),
            ("False", "RunFailed"),
            ("True", "RunFailed"),
        ),
        (
            "starting",
            _in(run_phase=P.PENDING),
            "Running",
            ("False", "NoVersionYet"),
            ("True", "WorkloadsStarting"),
            None,
        ),
        (
            "the driver's pod cannot start, not for long yet",
            _in(run_phase=P.PENDING, run_stuck="pod f-0: ErrImagePull", run_age_s=5, start_timeout_s=60),
            "Running",
            ("False", "DriverStarting"),
            ("True", "DriverStarting"),
            None,
        ),
        (
            "the driver's pod cannot start past spark.startTimeout",
            _in(run_phase=P.PENDING, run_stuck="pod f-0 unschedulable", run_age_s=61, start_timeout_s=60),
            "Degraded",
            ("False", "DriverNotStarting"),
            ("True", "DriverNotStarting"),
            ("True", "DriverNotStarting"),
        ),
        (
            "a stuck driver keeps the previous version Ready",
            _in(
                run_phase=P.PENDING,
                run_stuck="pod f-0: ErrImagePull",
                run_age_s=61,
                start_timeout_s=60,
                has_version=True,
            ),
            "Degraded",
            ("True", "FeaturesAvailable"),
            ("True", "DriverNotStarting"),
            ("True", "DriverNotStarting"),
        ),
    ],
)
def test_decide(
    case: str, inp: DecisionInput, phase: str, ready: Any, progressing: Any, degraded: Any
) -> None:
    d = decide(inp)
    conds = {c.type: (("True" if c.status else "False"), c.reason) for c in d.conditions}
    assert d.phase == phase, case
    assert conds["Ready"] == ready, case
    assert conds["Progressing"] == progressing, case
    assert conds.get("Degraded") == degraded, case


def _status(doc: FeatureRunStatus | None, old: dict[str, Any], run: P = P.SUCCEEDED) -> Any:
    meta = ObjectMeta(kind="FeatureJob", namespace="ns", name="f", uid="u", generation=2)
    inp = StatusInput(
        meta=meta,
        old_status=old,
        deps={},
        workloads=[],
        observed={
            "spark": WorkloadStatus("spark", run),
            "redis": WorkloadStatus("redis", P.READY),
        },
        facts=FeatureFacts(run=doc, source=LAKE),
    )
    return FeatureJobController().compute_status(spec(), inp)


def test_a_finished_run_is_published_and_a_failed_one_keeps_it() -> None:
    v = OfflineVersion(
        version="20260101T000000Z-aaaaaa", uri="file:///f/versions/v1", rows=10, source_version="p0:5"
    )
    doc = FeatureRunStatus(
        phase="succeeded",
        generation=2,
        rows=10,
        unlabeled_rows=3,
        entities=4,
        version=v,
        versions=[v],
        partitions_read=["date=2026-01-01"],
        finished_at="2026-01-01T00:00:00Z",
        duration_s=12.5,
        online=OnlineResult(
            address="127.0.0.1:6379",
            key_prefix="gyre:ns:f:",
            keys=4,
            ttl_s=3600,
            materialized_at="2999-01-01T00:00:00Z",
            newest_feature_time="2026-01-01T00:00:00Z",
        ),
    )
    out = _status(doc, {})
    st = out.status
    assert out.phase == "Ready"
    assert st.offline.latest_version == v.version
    assert st.offline.latest_uri == v.uri
    assert st.offline.rows == 10
    assert st.last_run.partitions_read == ["date=2026-01-01"]
    assert st.last_run.succeeded
    assert st.online.keys == 4
    assert st.online.address == "127.0.0.1:6379"
    assert st.features == [
        "sessions_7d",
        "page_views_7d",
        "avg_session_seconds_7d",
        "tickets_30d",
        "mobile_share_7d",
        "free_plan_share_7d",
    ]
    stored = st.model_dump(mode="json", by_alias=True, exclude_unset=True) | {"observedGeneration": 2}
    failed = FeatureRunStatus(
        phase="failed", generation=2, reason="InvalidExpression", message="feature 'x': no"
    )
    out2 = _status(failed, stored)
    assert "offline" not in out2.status.model_fields_set, (
        "a failed run must not replace the published version"
    )
    assert out2.status.failure_message == "InvalidExpression: feature 'x': no"
    conds = {c.type: c for c in out2.conditions}
    assert conds["Degraded"].status
    assert conds["Degraded"].reason == "InvalidExpression"
    assert conds["Ready"].status, "the previous version is still served"


def test_on_kubernetes_the_run_is_a_job_and_redis_a_deployment_of_the_redis_image() -> None:
    from gyre.core.workload import Owner
    from gyre.runtimes import k8s_render

    owner = Owner(kind="FeatureJob", namespace="ml", name="churn-features", uid="u-1")
    manifests = k8s_render.render(owner, bf.build_featurejob(spec(), "ml", "churn-features", 1, LAKE), "ml")
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds.count("Job") == 1
    assert kinds.count("Deployment") == 1
    job = next(m for m in manifests if m["kind"] == "Job")
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    redis = deployment["spec"]["template"]["spec"]["containers"][0]
    assert redis["image"] == bf.REDIS_IMAGE
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GYRE_REDIS_ADDR"] == f"churn-features-redis.ml.svc:{bf.REDIS_PORT}"
    assert all(m["metadata"]["ownerReferences"][0]["uid"] == "u-1" for m in manifests)


def test_expectations_reach_the_run_and_must_name_an_output_column() -> None:
    (_, run) = bf.build_featurejob(spec(), "ns", "f", 1, LAKE)
    (rule,) = config_of(run).expectations
    assert (rule.column, rule.not_null, rule.min, rule.max) == ("sessions_7d", True, 0, None)
    assert config_of(run).fail_on_violation
    meta = ObjectMeta(kind="FeatureJob", namespace="ns", name="f", uid="u", generation=1)
    bad = spec(validation={"expectations": [{"column": "page_views", "min": 0}]})
    (problem,) = FeatureJobController().check(meta, bad, {})
    assert "'page_views'" in problem
    assert "sessions_7d" in problem


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def stored(
    current: dict[str, Any] | None, last_run: int | None = None, last_schedule: str | None = None
) -> Any:
    from gyre.api.featurejob import FeatureJobStatus

    return FeatureJobStatus.model_validate(
        {
            "currentRun": current,
            "lastRun": {"run": last_run, "succeeded": True} if last_run is not None else None,
            "lastScheduleTime": last_schedule,
        }
    )


FIRST = {"number": 1, "generation": 2, "trigger": "spec", "startTime": "2026-01-01T10:00:00Z"}


def test_a_new_generation_starts_a_run_at_once_and_a_schedule_starts_the_next_when_due() -> None:
    hourly = "0 * * * *"
    first = plan_run(stored(None), 2, hourly, at("2026-01-01T10:00:00"))
    assert (first.number, first.trigger, first.scheduled_time) == (1, "spec", None)
    # No schedule: the finished run stays the run, whatever the time.
    assert plan_run(stored(FIRST, last_run=1), 2, None, at("2026-01-09T00:00:00")).number == 1
    # Finished, the schedule's next time (11:00) not come yet.
    assert plan_run(stored(FIRST, last_run=1), 2, hourly, at("2026-01-01T10:59:59")).number == 1
    due = plan_run(stored(FIRST, last_run=1), 2, hourly, at("2026-01-01T11:00:30"))
    assert (due.number, due.trigger, due.scheduled_time) == (2, "schedule", "2026-01-01T11:00:00Z")
    # Missed times are not run one by one: one run, for the latest of them.
    late = plan_run(stored(FIRST, last_run=1), 2, hourly, at("2026-01-01T15:20:00"))
    assert (late.number, late.scheduled_time) == (2, "2026-01-01T15:00:00Z")
    # The next time is counted from the last scheduled time, not from when that run started.
    second = {**FIRST, "number": 2, "trigger": "schedule", "scheduledTime": "2026-01-01T11:00:00Z",
              "startTime": "2026-01-01T11:07:00Z"}  # fmt: skip
    s = stored(second, last_run=2, last_schedule="2026-01-01T11:00:00Z")
    assert plan_run(s, 2, hourly, at("2026-01-01T11:59:00")).number == 2
    assert plan_run(s, 2, hourly, at("2026-01-01T12:00:01")).scheduled_time == "2026-01-01T12:00:00Z"
    # A spec change starts a new run at once, numbered on.
    assert plan_run(s, 3, hourly, at("2026-01-01T11:30:00")).model_dump() == {
        "number": 3, "generation": 3, "trigger": "spec", "scheduled_time": None,
        "start_time": "2026-01-01T11:30:00Z",
    }  # fmt: skip


def test_runs_never_overlap_a_due_time_waits_for_the_run_in_progress() -> None:
    running = stored(FIRST, last_run=None)  # run 1 has recorded no result yet
    assert plan_run(running, 2, "* * * * *", at("2026-01-01T10:30:00")).number == 1
    finished = stored(FIRST, last_run=1)
    assert plan_run(finished, 2, "* * * * *", at("2026-01-01T10:30:00")).number == 2


META = ObjectMeta(kind="FeatureJob", namespace="ns", name="f", uid="u", generation=2)


def test_an_invalid_schedule_is_refused_with_what_a_schedule_looks_like() -> None:
    problems = FeatureJobController().check(META, spec(schedule="61 * * * *"), {})
    assert any("is not a cron schedule" in p for p in problems), problems
    assert FeatureJobController().check(META, spec(schedule="@daily"), {}) == []


def test_each_finished_run_enters_the_history_once_newest_first() -> None:
    from gyre.api.featurejob import CurrentRun

    def finish(number: int, old: dict[str, Any]) -> Any:
        plan = CurrentRun(number=number, generation=2, trigger="schedule" if number > 1 else "spec",
                          scheduled_time="2026-01-01T11:00:00Z" if number > 1 else None,
                          start_time="2026-01-01T11:00:05Z")  # fmt: skip
        v = OfflineVersion(version=f"v{number}", uri=f"file:///f/versions/v{number}", rows=number)
        doc = FeatureRunStatus(
            phase="succeeded",
            generation=2,
            run=number,
            rows=number,
            version=v,
            versions=[v],
            finished_at="2026-01-01T11:01:00Z",
        )
        inp = StatusInput(META, old, {}, [], {"spark": WorkloadStatus("spark", P.SUCCEEDED)},
                          FeatureFacts(run=doc, source=LAKE, plan=plan))  # fmt: skip
        out = FeatureJobController().compute_status(spec(schedule="0 * * * *"), inp)
        return out.status.model_dump(by_alias=True, exclude_none=True)

    one = finish(1, {})
    assert [h["run"] for h in one["history"]] == [1]
    two = finish(2, one)
    assert [(h["run"], h["trigger"]) for h in two["history"]] == [(2, "schedule"), (1, "spec")]
    assert two["lastScheduleTime"] == "2026-01-01T11:00:00Z"
    assert two["nextScheduleTime"] == "2026-01-01T12:00:00Z"
    assert two["lastRun"]["run"] == 2
    again = finish(2, two)  # the same run's /status read by a later pass
    assert [h["run"] for h in again["history"]] == [2, 1]


def test_a_removed_schedule_clears_the_next_scheduled_time() -> None:
    old = {"currentRun": FIRST, "nextScheduleTime": "2026-01-01T11:00:00Z"}
    inp = StatusInput(
        META, old, {}, [], {"spark": WorkloadStatus("spark", P.SUCCEEDED)}, FeatureFacts(source=LAKE)
    )
    out = FeatureJobController().compute_status(spec(schedule=None), inp).status
    assert "next_schedule_time" in out.model_fields_set
    assert out.next_schedule_time is None


def test_a_stuck_driver_says_why_and_for_how_long() -> None:
    d = decide(
        _in(
            run_phase=P.PENDING,
            run_stuck="pod f-0: ErrImageNeverPull: image x not present",
            run_age_s=130,
            start_timeout_s=120,
            has_version=True,
        )
    )
    (degraded,) = [c for c in d.conditions if c.type == "Degraded"]
    assert "ErrImageNeverPull: image x not present" in degraded.message
    assert "for 130s (spark.startTimeout 120s)" in degraded.message
    assert "the previous version stays published" in degraded.message
    assert d.failure is not None
    assert d.failure.startswith("DriverNotStarting")
    early = decide(
        _in(run_phase=P.PENDING, run_stuck="pod f-0 unschedulable", run_age_s=100, start_timeout_s=120)
    )
    assert early.requeue_after is not None
    assert early.requeue_after <= 20, "looked at again by the time it is late"
