"""FeatureJob reconcile: a Spark run per spec change, its offline versions and online store.

The run (`gyre.pipelines.features`) serves its progress and result on ``/status``
(`FeatureRunStatus`); once it has been read, the result is kept in the FeatureJob's status
(`lastRun`, `offline`, `online`), which is what dependents read: a TrainingJob with
``dataset.featureJob`` trains on ``status.offline.latestUri``, an InferenceService reads
``status.online``. A failed run keeps the previous version published. The phase and
conditions are decided by a small pure function (`decide`) of what the run reported.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from croniter import croniter

from gyre.api.featurejob import (
    CurrentRun,
    FeatureJobSpec,
    FeatureJobStatus,
    LastRun,
    OfflineStatus,
    OfflineVersionStatus,
    OnlineStatus,
)
from gyre.api.stream import StreamSpec, StreamStatus
from gyre.builders.featurejob import REDIS, RUN, ResolvedSource, build_featurejob, wants_redis
from gyre.controllers.base import Controller, Listing, ObjectMeta, Ref, Resolved, StatusInput, StatusOutput
from gyre.core import conditions as cnd
from gyre.core.children import ChildKind
from gyre.core.durations import format_time, parse_duration, parse_time, seconds_since
from gyre.core.workload import Workload, WorkloadPhase
from gyre.pipelines.features import status as run_status
from gyre.pipelines.features.status import FeatureRunStatus
from gyre.runtimes.base import Runtime

POLL_S = 2.0
FRESHNESS_RECHECK_S = 60.0
# Condition reasons of a FeatureJob.
FEATURES_AVAILABLE = "FeaturesAvailable"
RUNNING = "Running"
WAITING_FOR_DATA = "WaitingForData"
WAITING_FOR_LAKE = "WaitingForLake"
ONLINE_STALE = "OnlineStale"
ONLINE_STORE_DOWN = "OnlineStoreDown"
NO_VERSION = "NoVersionYet"
DRIVER_STARTING = "DriverStarting"  # its pod is kept from starting, not for long yet
DRIVER_NOT_STARTING = "DriverNotStarting"  # ... for longer than spec.spark.startTimeout
HISTORY = 20  # finished runs kept in status.history
FEATURES_DRIFTED = "FeaturesDrifted"
NO_DRIFT = "NoDrift"
DRIFT_NOT_SCORED = "NotScoredYet"


def next_schedule_time(schedule: str, current: CurrentRun, last_schedule_time: str | None) -> dt.datetime:
    """The schedule's first time after the last one a run was started for (or, before any, after
    the current run's start)."""
    base = parse_time(last_schedule_time or current.start_time)
    assert base is not None
    nxt: dt.datetime = croniter(schedule, base).get_next(dt.datetime)
    return nxt


def plan_run(old: FeatureJobStatus, generation: int, schedule: str | None, now: dt.datetime) -> CurrentRun:
    """The run the FeatureJob should be on now. Pure.

    A new generation (or no run yet) starts a run at once (trigger spec). Otherwise, with a
    schedule, the current run once finished (its result recorded in lastRun) is followed by a
    new one when the schedule's next time has come: for the latest of the schedule's times that
    have passed (missed ones are not run one by one); a time that passes while a run is in
    progress waits for it, so runs never overlap."""
    cur = old.current_run
    if cur is None or cur.generation != generation:
        number = cur.number + 1 if cur is not None else 1
        return CurrentRun(number=number, generation=generation, trigger="spec", start_time=format_time(now))
    if schedule is None:
        return cur
    finished = old.last_run is not None and old.last_run.run == cur.number
    if not finished or now < next_schedule_time(schedule, cur, old.last_schedule_time):
        return cur
    due: dt.datetime = croniter(schedule, now + dt.timedelta(seconds=1)).get_prev(dt.datetime)
    return CurrentRun(
        number=cur.number + 1,
        generation=generation,
        trigger="schedule",
        scheduled_time=format_time(due),
        start_time=format_time(now),
    )


def _source(spec: FeatureJobSpec, deps: Mapping[str, Resolved]) -> ResolvedSource | None:
    if spec.source.path:
        return ResolvedSource("parquet", spec.source.path)
    dep = deps.get("spec.source.stream")
    if dep is None:
        return None
    st = dep.status_as(StreamStatus)
    if not st.lake_uri:
        return None
    return ResolvedSource("lake", st.lake_uri, [(f.name, f.type) for f in st.schema_fields])


@dataclass(frozen=True)
class FeatureFacts:
    run: FeatureRunStatus | None = None  # the run's /status (None: not answering)
    source: ResolvedSource | None = None
    plan: CurrentRun | None = None  # the run this pass is on (`plan_run`)


class FeatureJobController(Controller[FeatureJobSpec]):
    kind = "FeatureJob"
    spec_model = FeatureJobSpec

    def references(self, spec: FeatureJobSpec) -> list[Ref]:
        if spec.source.stream:
            return [Ref("Stream", spec.source.stream, "spec.source.stream")]
        return []

    def check(self, meta: ObjectMeta, spec: FeatureJobSpec, deps: Mapping[str, Resolved]) -> list[str]:
        problems: list[str] = []
        names = [f.name for f in spec.features] + [lab.name for lab in spec.labels]
        for col in (spec.entity, spec.timestamp_field):
            if col in names:
                problems.append(
                    f"feature or label {col!r} has the name of the entity or timestampField column"
                )
        if len(set(names)) != len(names):
            problems.append("feature and label names must differ from each other")
        if spec.schedule is not None and not croniter.is_valid(spec.schedule):
            problems.append(
                f"spec.schedule {spec.schedule!r} is not a cron schedule (five fields, minute hour"
                " day-of-month month day-of-week, e.g. '0 3 * * *', or @hourly, @daily, @weekly)"
            )
        columns = {*names, spec.entity, spec.timestamp_field}
        for e in spec.validation.expectations if spec.validation else []:
            if e.column not in columns:
                problems.append(
                    f"validation expectation on {e.column!r}: not a feature, label, entity or timestampField "
                    f"column (columns: {', '.join(sorted(columns))})"
                )
        stream = deps.get("spec.source.stream")
        source = stream.spec_as(StreamSpec) if stream is not None else None
        if stream is None or source is None:
            return problems
        if not any(s.lake for s in source.sinks):
            problems.append(f"Stream {stream.ref.name!r} has no lake sink to read: add one to its spec.sinks")
        retention_text = source.topic.retention
        retention = parse_duration(retention_text)
        for f in spec.features:
            if f.window and parse_duration(f.window) > retention:
                problems.append(
                    f"feature {f.name!r} has window {f.window}, longer than the retention "
                    f"{retention_text} of Stream {stream.ref.name!r}: shorten the window or "
                    "raise the Stream's spec.topic.retention"
                )
        fields = {f.name for f in source.schema_.fields}
        for what, col in (("entity", spec.entity), ("timestampField", spec.timestamp_field)):
            if col not in fields:
                problems.append(
                    f"spec.{what} {col!r} is not a field of Stream {stream.ref.name!r}'s schema "
                    f"(fields: {', '.join(sorted(str(x) for x in fields))})"
                )
        return problems

    async def prepare(
        self,
        meta: ObjectMeta,
        spec: FeatureJobSpec,
        status: Mapping[str, Any],
        runtime: Runtime,
        listing: Listing,
    ) -> CurrentRun:
        """The run to be on (`plan_run`): what `build` renders and `compute_status` records."""
        return plan_run(_stored(status), meta.generation, spec.schedule, dt.datetime.now(dt.UTC))

    def build(
        self,
        meta: ObjectMeta,
        spec: FeatureJobSpec,
        deps: Mapping[str, Resolved],
        status: Mapping[str, Any],
        prepared: Any,
        *,
        served: frozenset[ChildKind] = frozenset(),
    ) -> list[Workload]:
        source = _source(spec, deps)
        if source is None:
            return []
        plan: CurrentRun = prepared
        return build_featurejob(spec, meta.namespace, meta.name, meta.generation, source, plan.number)

    async def converge(
        self,
        meta: ObjectMeta,
        spec: FeatureJobSpec,
        deps: Mapping[str, Resolved],
        runtime: Runtime,
        prepared: Any,
        workloads: Sequence[Workload],
    ) -> FeatureFacts:
        plan: CurrentRun = prepared
        run = next((w for w in workloads if w.name == RUN), None)
        if run is None:
            return FeatureFacts(source=_source(spec, deps), plan=plan)
        docs = await runtime.read_status(meta.owner, run)
        doc = FeatureRunStatus.parse(next(iter(docs), None))
        if doc is not None and doc.run != plan.number:
            doc = None  # the previous run, still exiting
        return FeatureFacts(run=doc, source=_source(spec, deps), plan=plan)

    def compute_status(self, spec: FeatureJobSpec, inp: StatusInput) -> StatusOutput:
        facts: FeatureFacts = inp.facts or FeatureFacts()
        old = _stored(inp.old_status)
        plan = facts.plan or plan_run(old, inp.meta.generation, spec.schedule, dt.datetime.now(dt.UTC))
        out = FeatureJobStatus(
            features=[f.name for f in spec.features],
            labels=[lab.name for lab in spec.labels],
            entity=spec.entity,
            timestamp_field=spec.timestamp_field,
            current_run=plan,
            last_schedule_time=plan.scheduled_time or old.last_schedule_time,
            history=list(old.history),
        )
        doc = facts.run
        if doc is not None and doc.phase in ("succeeded", "failed"):
            record_run(out, old, spec, doc)
            assert out.last_run is not None
            out.last_run.run, out.last_run.trigger = plan.number, plan.trigger
            out.last_run.scheduled_time = plan.scheduled_time
            if not any(h.run == plan.number for h in out.history):
                out.history = [out.last_run.model_copy(), *out.history][:HISTORY]
        last = out.last_run or old.last_run
        until_next: float | None = None
        if spec.schedule is not None:
            nxt = next_schedule_time(spec.schedule, plan, out.last_schedule_time)
            out.next_schedule_time = format_time(nxt)
            until_next = max(1.0, (nxt - dt.datetime.now(dt.UTC)).total_seconds())
        elif old.next_schedule_time is not None:
            out.next_schedule_time = None  # the schedule was removed
        offline = out.offline or old.offline
        online = out.online or old.online
        run = inp.observed.get(RUN)
        redis = inp.observed.get(REDIS)
        decision = decide(
            DecisionInput(
                source_known=facts.source is not None,
                run_phase=run.phase if run else None,
                run_message=(run.message if run else "") or "",
                run_stuck=run.stuck if run else "",
                run_age_s=seconds_since(plan.start_time),
                start_timeout_s=parse_duration(spec.spark.start_timeout),
                doc=doc,
                last=last if last is not None and last.run == plan.number else None,
                has_version=bool(offline and offline.latest_version),
                online_wanted=spec.online is not None and spec.online.enabled,
                online_expires_in_s=_expires_in(online),
                redis_down=wants_redis(spec) and (redis is None or redis.phase != WorkloadPhase.READY),
            )
        )
        if decision.failure is not None:
            out.failure_message = decision.failure
        conditions = list(decision.conditions)
        baseline = spec.validation.drift_baseline if spec.validation else None
        if baseline is not None:
            conditions.append(_drift_condition(out.drift or old.drift, baseline.metric, baseline.threshold))
        requeue = decision.requeue_after
        if until_next is not None:
            requeue = until_next if requeue is None else min(requeue, until_next)
        return StatusOutput(status=out, conditions=conditions, phase=decision.phase, requeue_after=requeue)


def drifted(scores: Mapping[str, float], threshold: float) -> list[str]:
    """The features whose drift score is above ``threshold``, by name."""
    return sorted(f for f, v in scores.items() if v > threshold)


def _drift_condition(scores: Mapping[str, float], metric: str, threshold: float) -> cnd.Cond:
    if not scores:
        return cnd.Cond(cnd.DRIFTED, False, DRIFT_NOT_SCORED, "no successful run has been scored yet")
    moved = drifted(scores, threshold)
    if moved:
        detail = ", ".join(f"{f} {scores[f]:.3f}" for f in moved)
        return cnd.Cond(cnd.DRIFTED, True, FEATURES_DRIFTED, f"{metric} above {threshold:g}: {detail}")
    top = max(scores.values())
    return cnd.Cond(cnd.DRIFTED, False, NO_DRIFT, f"largest {metric} {top:.3f}, at most {threshold:g}")


def _stored(status: Mapping[str, Any]) -> FeatureJobStatus:
    return FeatureJobStatus.model_validate({k: v for k, v in status.items() if k != "conditions"})


def record_run(
    out: FeatureJobStatus, old: FeatureJobStatus, spec: FeatureJobSpec, doc: FeatureRunStatus
) -> None:
    """The figures of a finished run into the status; a failed run keeps the old version."""
    ok = doc.phase == "succeeded"
    if doc.violations:
        out.violations = dict(doc.violations)
        out.validation_failures = sum(doc.violations.values())
    out.last_run = LastRun(
        generation=doc.generation,
        time=doc.finished_at or cnd.now_rfc3339(),
        duration_seconds=doc.duration_s,
        rows=doc.rows,
        unlabeled_rows=doc.unlabeled_rows,
        entities=doc.entities,
        version=doc.version.version if doc.version else None,
        partitions_read=list(doc.partitions_read),
        partitions_changed=list(doc.partitions_changed),
        incremental=doc.incremental if doc.partitions_read else None,
        recomputed_from=doc.recomputed_from or None,
        full_run_reason=doc.full_reason or None,
        source_version=doc.source_version or None,
        succeeded=ok,
        reason=None if ok else (doc.reason or run_status.RUN_FAILED),
        message=doc.message,
    )
    if ok and doc.drift is not None:
        out.drift = dict(doc.drift)
        out.drift_score = max(doc.drift.values(), default=None)
        baseline = spec.validation.drift_baseline if spec.validation else None
        out.drifted_features = drifted(doc.drift, baseline.threshold) if baseline is not None else []
        out.drift_baseline = doc.drift_baseline or None
    if ok and doc.version is not None:
        out.offline = OfflineStatus(
            uri=spec.offline.uri,
            latest_version=doc.version.version,
            latest_uri=doc.version.uri,
            rows=doc.version.rows,
            source_version=doc.version.source_version or None,
            versions=[
                OfflineVersionStatus(
                    version=v.version,
                    uri=v.uri,
                    rows=v.rows,
                    source_version=v.source_version or None,
                    created=v.created or None,
                )
                for v in doc.versions
            ],
        )
        if doc.online is not None:
            o = doc.online
            out.online = OnlineStatus(
                address=o.address,
                key_prefix=o.key_prefix,
                keys=o.keys,
                newest_feature_time=o.newest_feature_time,
                oldest_feature_time=o.oldest_feature_time,
                materialized_at=o.materialized_at,
                ttl_seconds=o.ttl_s,
            )
        out.failure_message = None
    elif not ok:
        out.failure_message = f"{doc.reason or run_status.RUN_FAILED}: {doc.message}"


def _expires_in(online: OnlineStatus | None) -> float | None:
    if online is None or not online.materialized_at or online.ttl_seconds is None:
        return None
    at = parse_time(online.materialized_at)
    assert at is not None
    return online.ttl_seconds - (dt.datetime.now(dt.UTC) - at).total_seconds()


@dataclass(frozen=True)
class DecisionInput:
    """What the FeatureJob's phase and conditions depend on (`decide`)."""

    source_known: bool  # the source's location is known (a Stream published its lake)
    run_phase: WorkloadPhase | None  # the run workload (None: not applied)
    run_message: str  # the runtime's words about it (exit status, last log lines)
    doc: FeatureRunStatus | None  # what the run serves now (None: not answering)
    last: LastRun | None  # the recorded result of this generation's run
    has_version: bool  # a good offline version is published (from any run)
    online_wanted: bool
    online_expires_in_s: float | None  # until the materialized values expire (None: none)
    redis_down: bool  # the Redis this FeatureJob runs is not ready
    run_stuck: str = ""  # why the run's pod cannot start (the runtime's words; "" : nothing blocks it)
    run_age_s: float | None = None  # since the run was started
    start_timeout_s: float = 120.0  # spec.spark.startTimeout


@dataclass(frozen=True)
class Decision:
    phase: str
    conditions: list[cnd.Cond]
    requeue_after: float | None = None
    failure: str | None = None


def decide(i: DecisionInput) -> Decision:
    """Pure: first match wins."""
    ready = _ready(i)
    if not i.source_known:
        msg = "waiting for the Stream to publish its lake (status.lakeUri)"
        return Decision(
            "Waiting",
            [
                cnd.Cond(cnd.READY, False, WAITING_FOR_LAKE, msg),
                cnd.Cond(cnd.PROGRESSING, True, WAITING_FOR_LAKE, msg),
            ],
            POLL_S,
        )
    doc = i.doc
    if i.run_stuck and doc is None:
        # The driver's pod is kept from starting: said at once, Degraded past the timeout.
        age = i.run_age_s or 0.0
        late = age >= i.start_timeout_s
        msg = f"the Spark driver cannot start: {i.run_stuck}"
        reason = DRIVER_NOT_STARTING if late else DRIVER_STARTING
        conds = [
            ready or cnd.Cond(cnd.READY, False, reason, msg),
            cnd.Cond(cnd.PROGRESSING, True, reason, msg),
        ]
        if not late:
            return Decision("Running", conds, max(1.0, min(POLL_S * 5, i.start_timeout_s - age)))
        kept = " (the previous version stays published)" if i.has_version else ""
        detail = f"{msg}, for {age:.0f}s (spark.startTimeout {i.start_timeout_s:g}s){kept}"
        conds.append(cnd.Cond(cnd.DEGRADED, True, DRIVER_NOT_STARTING, detail))
        return Decision("Degraded", conds, POLL_S * 5, failure=f"{DRIVER_NOT_STARTING}: {msg}")
    if doc is not None and doc.phase == "waiting":
        return Decision(
            "Waiting",
            [
                ready
                or cnd.Cond(cnd.READY, False, run_status.SOURCE_EMPTY, f"waiting for data: {doc.message}"),
                cnd.Cond(cnd.PROGRESSING, True, WAITING_FOR_DATA, doc.message),
            ],
            POLL_S,
        )
    if doc is not None and doc.phase in ("starting", "running"):
        msg = f"run of generation {doc.generation}: {doc.step or doc.phase}"
        return Decision(
            "Running",
            [
                ready or cnd.Cond(cnd.READY, False, NO_VERSION, "the first run is in progress"),
                cnd.Cond(cnd.PROGRESSING, True, RUNNING, msg),
            ],
            POLL_S,
        )
    last = i.last
    if last is not None and not last.succeeded:
        reason = last.reason or run_status.RUN_FAILED
        message = last.message or "the run failed"
        retrying = i.run_phase not in (WorkloadPhase.SUCCEEDED, WorkloadPhase.FAILED)
        kept = " (the previous version stays published)" if i.has_version else ""
        return Decision(
            "Failed" if not retrying else "Retrying",
            [
                ready or cnd.Cond(cnd.READY, False, reason, message),
                cnd.Cond(
                    cnd.PROGRESSING, retrying, "Retrying" if retrying else reason, message if retrying else ""
                ),
                cnd.Cond(cnd.DEGRADED, True, reason, message + kept),
            ],
            POLL_S if retrying else None,
            failure=f"{reason}: {message}",
        )
    if i.run_phase == WorkloadPhase.FAILED and (last is None or not last.succeeded):
        message = i.run_message.strip().splitlines()[-1] if i.run_message.strip() else "the Spark run failed"
        return Decision(
            "Failed",
            [
                ready or cnd.Cond(cnd.READY, False, run_status.RUN_FAILED, message),
                cnd.Cond(cnd.PROGRESSING, False, run_status.RUN_FAILED),
                cnd.Cond(cnd.DEGRADED, True, run_status.RUN_FAILED, message),
            ],
            failure=f"{run_status.RUN_FAILED}: {message}",
        )
    if last is not None and last.succeeded:
        if ready is not None and ready.status:
            requeue = FRESHNESS_RECHECK_S
            if i.online_expires_in_s is not None:
                requeue = max(1.0, min(requeue, i.online_expires_in_s))
            return Decision("Ready", [ready, cnd.Cond(cnd.PROGRESSING, False, FEATURES_AVAILABLE)], requeue)
        assert ready is not None
        return Decision(
            "Degraded",
            [
                ready,
                cnd.Cond(cnd.PROGRESSING, False, ready.reason),
                cnd.Cond(cnd.DEGRADED, True, ready.reason, ready.message),
            ],
            FRESHNESS_RECHECK_S,
        )
    return Decision(
        "Running",
        [
            ready or cnd.Cond(cnd.READY, False, NO_VERSION, "the run is starting"),
            cnd.Cond(cnd.PROGRESSING, True, cnd.WORKLOADS_STARTING, "the Spark run is starting"),
        ],
        POLL_S,
    )


def _ready(i: DecisionInput) -> cnd.Cond | None:
    """Ready from what is published: a good version, and fresh online values (None: no version)."""
    if not i.has_version:
        return None
    if i.online_wanted:
        if i.redis_down:
            return cnd.Cond(cnd.READY, False, ONLINE_STORE_DOWN, "the online store's Redis is not ready")
        if i.online_expires_in_s is not None and i.online_expires_in_s <= 0:
            return cnd.Cond(cnd.READY, False, ONLINE_STALE, "the online values are older than online.ttl")
    return cnd.Cond(
        cnd.READY,
        True,
        FEATURES_AVAILABLE,
        "an offline version is published" + (" and the online values are fresh" if i.online_wanted else ""),
    )
