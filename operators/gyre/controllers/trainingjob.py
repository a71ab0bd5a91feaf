"""TrainingJob reconcile: a launcher and N workers, their lifecycle, progress and artifact.

Lifecycle, as Kubeflow's training jobs: `runPolicy.suspend` stops the workers (a resume starts
again from the newest checkpoint); `activeDeadlineSeconds` fails a job that runs too long;
once finished, `cleanPodPolicy` decides which workloads stay (None: all, Running: the ones
that already ended, All: none) and `ttlSecondsAfterFinished` deletes the TrainingJob itself.
Progress and metrics come from the launcher's ``/status`` (`TrainerStatus`, the status
contract), read through the runtime: loopback locally, the API server's pod proxy on
Kubernetes, so both runtimes show the same figures. The phase is decided by a small pure
function (`decide_phase`) of the workloads' states and the run's clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gyre.api.featurejob import FeatureJobStatus
from gyre.api.stream import StreamSpec, StreamStatus
from gyre.api.trainingjob import (
    DatasetRef,
    EpochMetrics,
    ModelRef,
    Progress,
    ReplicaStatus,
    TrainingJobSpec,
    TrainingJobStatus,
)
from gyre.builders.trainingjob import (
    LAUNCHER,
    WORKER,
    DatasetSource,
    artifact_uri,
    build_trainingjob,
    model_version,
)
from gyre.controllers.base import Controller, ObjectMeta, Ref, Resolved, StatusInput, StatusOutput
from gyre.core import conditions as cnd
from gyre.core.children import ChildKind
from gyre.core.durations import seconds_since
from gyre.core.workload import Workload, WorkloadPhase, WorkloadStatus
from gyre.pipelines.trainer.status import TrainerProgress, TrainerStatus
from gyre.runtimes.base import Runtime

# Condition types of a TrainingJob, as Kubeflow's.
CREATED = "Created"
RUNNING = "Running"
RESTARTING = "Restarting"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SUSPENDED = "Suspended"
TERMINAL = ("Succeeded", "Failed")
POLL_S = 2.0
# After the launcher exited 0 (every worker reported done), how long workers still exiting
# (tearing their process down) are waited for before the run is Succeeded and cleanPodPolicy
# removes what is left.
WORKER_EXIT_GRACE_S = 30.0
# A new generation is a new run: these figures of the old run are removed.
FIGURES_OF_A_RUN = (
    "progress", "metrics", "history", "model", "start_time", "completion_time", "restarts",
    "resumed_from_step", "samples_per_second", "ended_workloads", "dataset",
)  # fmt: skip


def dataset_refs(spec: TrainingJobSpec, path: str = "spec") -> list[Ref]:
    ds = spec.dataset
    if ds.feature_job:
        return [Ref("FeatureJob", ds.feature_job, f"{path}.dataset.featureJob")]
    if ds.stream:
        return [Ref("Stream", ds.stream, f"{path}.dataset.stream")]
    return []


DATASET_NOT_AVAILABLE = "DatasetNotAvailable"


def dataset_source(
    spec: TrainingJobSpec, deps: Mapping[str, Resolved], status: Mapping[str, Any], generation: int
) -> DatasetSource | None:
    """Where the training data is: a path, a Stream's lake, or a FeatureJob's offline version
    (the one this generation's run started with, else the pinned or newest one); None while
    there is none to train on (`dataset_missing` says why)."""
    source, _ = _dataset(spec, deps, status, generation)
    return source


def dataset_missing(spec: TrainingJobSpec, deps: Mapping[str, Resolved]) -> str | None:
    """Why there is no dataset to train on yet (None: there is one)."""
    return _dataset(spec, deps, {}, 0)[1]


def _dataset(
    spec: TrainingJobSpec, deps: Mapping[str, Resolved], status: Mapping[str, Any], generation: int
) -> tuple[DatasetSource | None, str | None]:
    if spec.dataset.path:
        return DatasetSource(spec.dataset.path), None
    for dep in deps.values():
        if dep.ref.kind == "Stream":
            uri = dep.status_as(StreamStatus).lake_uri  # what the Stream published
            if uri:
                return DatasetSource(uri), None
            return (
                None,
                f"Stream {dep.ref.name!r} has published no lake (status.lakeUri: it needs a lake sink)",
            )
        if dep.ref.kind == "FeatureJob":
            published = dep.status_as(FeatureJobStatus)
            features = tuple(published.features)
            recorded = status.get("dataset") if status.get("observedGeneration") == generation else None
            if recorded and recorded.get("uri"):
                return DatasetSource(recorded["uri"], recorded.get("version"), dep.ref.name, features), None
            offline = published.offline
            name = dep.ref.name
            if offline is None or not offline.latest_uri:
                return None, f"FeatureJob {name!r} has published no offline version yet"
            if spec.dataset.feature_version:
                pinned = next(
                    (v for v in offline.versions if v.version == spec.dataset.feature_version), None
                )
                if pinned is None:
                    kept = ", ".join(v.version for v in offline.versions)
                    return None, (
                        f"FeatureJob {name!r} keeps no offline version {spec.dataset.feature_version!r} "
                        f"(spec.dataset.featureVersion; kept: {kept})"
                    )
                version: str | None = pinned.version
                location: str = pinned.uri
                rows: int | None = pinned.rows
            else:
                version, location, rows = offline.latest_version, offline.latest_uri, offline.rows
            if rows == 0:
                return None, (
                    f"FeatureJob {name!r}'s offline version {version} has no training rows (its spine "
                    "found no observation whose label horizon has elapsed): waiting for a version with rows"
                )
            return DatasetSource(location, version, name, features), None
    return None, "spec.dataset names no data"


def dataset_uri(spec: TrainingJobSpec, deps: Mapping[str, Resolved]) -> str | None:
    source = dataset_source(spec, deps, {}, 0)
    return source.uri if source else None


def _replicas(st: WorkloadStatus | None) -> ReplicaStatus:
    if st is None:
        return ReplicaStatus()
    active = (
        0
        if st.phase in (WorkloadPhase.SUCCEEDED, WorkloadPhase.FAILED, WorkloadPhase.MISSING)
        else st.replicas
    )
    return ReplicaStatus(active=max(active - st.succeeded, 0), succeeded=st.succeeded, failed=st.failed)


@dataclass(frozen=True)
class TrainingFacts:
    """What a pass learned beyond the workloads' phases."""

    trainer: TrainerStatus | None = None  # the launcher's /status (None: not answering)


class TrainingJobController(Controller[TrainingJobSpec]):
    kind = "TrainingJob"
    spec_model = TrainingJobSpec

    def references(self, spec: TrainingJobSpec) -> list[Ref]:
        return dataset_refs(spec)

    def check(self, meta: ObjectMeta, spec: TrainingJobSpec, deps: Mapping[str, Resolved]) -> list[str]:
        problems: list[str] = []
        for dep in deps.values():
            stream = dep.spec_as(StreamSpec) if dep.ref.kind == "Stream" else None
            if stream is None:
                continue
            if not any(s.lake for s in stream.sinks):
                problems.append(
                    f"Stream {dep.ref.name!r} has no lake sink to train from: add one to its spec.sinks"
                )
            fields = {f.name for f in stream.schema_.fields}
            for col in [spec.dataset.label, *spec.dataset.features]:
                if col not in fields:
                    problems.append(
                        f"column {col!r} of spec.dataset is not a field of Stream {dep.ref.name!r}"
                    )
        return problems

    def build(
        self,
        meta: ObjectMeta,
        spec: TrainingJobSpec,
        deps: Mapping[str, Resolved],
        status: Mapping[str, Any],
        prepared: Any,
        *,
        served: frozenset[ChildKind] = frozenset(),
    ) -> list[Any]:
        same_run = status.get("observedGeneration") == meta.generation
        phase = status.get("phase") if same_run else None
        if spec.run_policy.suspend:
            return []
        source = dataset_source(spec, deps, status, meta.generation)
        if source is None:
            return []
        workloads = build_trainingjob(spec, meta.name, meta.generation, source)
        if phase in TERMINAL:
            policy = spec.run_policy.clean_pod_policy
            if policy == "All":
                return []
            if policy == "Running":
                ended = set(status.get("endedWorkloads") or [])
                return [w for w in workloads if w.name in ended]
        return workloads

    async def converge(
        self,
        meta: ObjectMeta,
        spec: TrainingJobSpec,
        deps: Mapping[str, Resolved],
        runtime: Runtime,
        prepared: Any,
        workloads: Sequence[Workload],
    ) -> TrainingFacts:
        launcher = next((w for w in workloads if w.name == LAUNCHER), None)
        if launcher is None:
            return TrainingFacts()
        docs = await runtime.read_status(meta.owner, launcher)
        return TrainingFacts(trainer=TrainerStatus.parse(next(iter(docs), None)))

    def compute_status(self, spec: TrainingJobSpec, inp: StatusInput) -> StatusOutput:
        meta, old = inp.meta, inp.old_status
        same_run = old.get("observedGeneration") == meta.generation
        if (
            not spec.run_policy.suspend
            and not inp.workloads
            and not (same_run and old.get("phase") in TERMINAL)
        ):
            missing = dataset_missing(spec, inp.deps)
            if missing is not None and dataset_source(spec, inp.deps, old, meta.generation) is None:
                return StatusOutput(
                    status=TrainingJobStatus(),
                    remove=() if same_run else FIGURES_OF_A_RUN,
                    conditions=[
                        cnd.Cond(cnd.READY, False, DATASET_NOT_AVAILABLE, missing),
                        cnd.Cond(cnd.PROGRESSING, True, DATASET_NOT_AVAILABLE, missing),
                    ],
                    phase="Waiting",
                    requeue_after=POLL_S,
                )
        launcher = inp.observed.get(LAUNCHER)
        workers = inp.observed.get(WORKER)
        facts: TrainingFacts = inp.facts or TrainingFacts()
        trainer = facts.trainer
        progress = trainer.progress if trainer else None
        now = cnd.now_rfc3339()
        out = TrainingJobStatus()
        start = old.get("startTime") if same_run else None
        done_at = old.get("completionTime") if same_run else None
        restarts = max(launcher.restarts if launcher else 0, workers.restarts if workers else 0)
        out.replica_statuses = {LAUNCHER: _replicas(launcher), WORKER: _replicas(workers)}
        source = dataset_source(spec, inp.deps, old, meta.generation)
        if source is not None and inp.workloads:
            out.dataset = DatasetRef(uri=source.uri, version=source.version, feature_job=source.feature_job)
        out.restarts = restarts
        out.ended_workloads = sorted(
            name
            for name, st in inp.observed.items()
            if st.phase in (WorkloadPhase.SUCCEEDED, WorkloadPhase.FAILED)
        ) or (old.get("endedWorkloads") if same_run else None)
        if progress is not None:
            set_progress(out, spec, progress)

        workers_pending = workers is not None and workers.phase == WorkloadPhase.PENDING
        pending_since = (old.get("gangPendingSince") if same_run else None) or (
            now if workers_pending else None
        )
        out.gang_pending_since = pending_since if workers_pending else None
        launcher_done = launcher is not None and launcher.phase == WorkloadPhase.SUCCEEDED
        if launcher_done and not done_at:
            done_at = now  # the run completed; workers may still be exiting (decide_phase)
        decision = decide_phase(
            PhaseInput(
                previous=(old.get("phase") if same_run else None),
                suspended=spec.run_policy.suspend,
                launcher=launcher.phase if launcher else None,
                workers=workers.phase if workers else None,
                failure=_failure(launcher, workers, trainer),
                running_s=seconds_since(start),
                active_deadline_s=spec.run_policy.active_deadline_seconds,
                pending_s=seconds_since(pending_since) if workers_pending else None,
                gang_timeout_s=spec.run_policy.gang_timeout_seconds,
                pending_workers=(workers.replicas - workers.ready_replicas) if workers else 0,
                worker_count=workers.replicas if workers else 0,
                pending_detail=(workers.message if workers else "") or "pending",
                finishing_s=seconds_since(done_at) if launcher_done else None,
            )
        )
        if decision.phase == "Failed" and not decision.message:  # failed in an earlier pass
            message = str(old.get("failureMessage") or "training failed")
            head = message.split(":", 1)[0]
            reason = head if head in ("DeadlineExceeded", "GangTimeout") else "BackoffLimitExceeded"
            decision = PhaseDecision("Failed", reason, message)
        phase = decision.phase
        if phase in ("Running", "Succeeded", "Failed") and not start:
            start = now
        if phase in TERMINAL and not done_at:
            done_at = now
        out.start_time = start
        out.completion_time = done_at
        written = progress is not None and progress.phase == "succeeded" and progress.artifact is not None
        if phase == "Succeeded" or written:
            # The launcher exits 0 only after rank 0 wrote the artifact and every worker ended;
            # rank 0's final report (read while the launcher lingers) says it is written and
            # names the features, which later passes keep.
            known = (old.get("model") or {}).get("features") if same_run else None
            out.model = ModelRef(
                uri=artifact_uri(spec, meta.name, meta.generation),
                version=model_version(meta.name, meta.generation),
                features=(progress.features if progress and progress.features else None) or known or [],
            )
        restarting = phase == "Running" and (
            (progress is not None and progress.phase == "failed")
            or (trainer is not None and trainer.gang.phase == "failed")
        )
        metric = (out.metrics or old.get("metrics") or {}).get("validation")
        conds = self._conditions(spec, meta, phase, decision, restarting, restarts, progress, metric)
        if phase == "Failed":
            out.failure_message = decision.message
        ttl = spec.run_policy.ttl_seconds_after_finished
        delete = bool(phase in TERMINAL and ttl is not None and (seconds_since(done_at) or 0) >= ttl)
        still_running = any(
            st.phase not in (WorkloadPhase.SUCCEEDED, WorkloadPhase.FAILED, WorkloadPhase.MISSING)
            for st in inp.observed.values()
        )
        requeue = None if phase in TERMINAL and ttl is None and not still_running else POLL_S
        if phase in TERMINAL and ttl is not None and not still_running:
            requeue = max(1.0, ttl - (seconds_since(done_at) or 0))
        if phase == "Suspended":
            requeue = None
        return StatusOutput(
            status=out,
            remove=() if same_run else FIGURES_OF_A_RUN,
            conditions=conds,
            phase=phase,
            requeue_after=requeue,
            delete_object=delete,
        )

    @staticmethod
    def _conditions(
        spec: TrainingJobSpec,
        meta: ObjectMeta,
        phase: str,
        decision: PhaseDecision,
        restarting: bool,
        restarts: int,
        progress: TrainerProgress | None,
        metric: Any,
    ) -> list[cnd.Cond]:
        conds = [cnd.Cond(CREATED, True, "WorkloadsCreated", "launcher and workers are applied")]
        if phase == "Suspended":
            return [
                *conds,
                cnd.Cond(SUSPENDED, True, "Suspended", "runPolicy.suspend is true: workers are stopped"),
                cnd.Cond(RUNNING, False, "Suspended"),
                cnd.Cond(cnd.READY, False, "Suspended", "resume by setting runPolicy.suspend to false"),
                cnd.Cond(cnd.PROGRESSING, False, "Suspended"),
            ]
        conds.append(cnd.Cond(SUSPENDED, False, "NotSuspended"))
        if phase == "Succeeded":
            version = model_version(meta.name, meta.generation)
            return [
                *conds,
                cnd.Cond(
                    SUCCEEDED,
                    True,
                    "TrainingSucceeded",
                    f"model {version}" + (f", validation {metric:.4f}" if isinstance(metric, float) else ""),
                ),
                cnd.Cond(RUNNING, False, "TrainingSucceeded"),
                cnd.Cond(RESTARTING, False, "TrainingSucceeded"),
                cnd.Cond(FAILED, False, "TrainingSucceeded"),
                cnd.Cond(
                    cnd.READY,
                    True,
                    "ModelAvailable",
                    f"artifact at {artifact_uri(spec, meta.name, meta.generation)}",
                ),
                cnd.Cond(cnd.PROGRESSING, False, "TrainingSucceeded"),
            ]
        if phase == "Failed":
            reason, message = decision.reason, decision.message or "training failed"
            return [
                *conds,
                cnd.Cond(FAILED, True, reason, message),
                cnd.Cond(RUNNING, False, reason),
                cnd.Cond(RESTARTING, False, reason),
                cnd.Cond(SUCCEEDED, False, reason),
                cnd.Cond(cnd.READY, False, reason, message),
                cnd.Cond(cnd.PROGRESSING, False, reason),
                cnd.Cond(cnd.DEGRADED, True, reason, message),
            ]
        step = progress.step if progress else None
        return [
            *conds,
            cnd.Cond(
                RUNNING,
                phase == "Running",
                "GangRunning" if phase == "Running" else "WaitingForGang",
                f"step {step}" if step is not None else "",
            ),
            cnd.Cond(
                RESTARTING,
                restarting,
                "GangRestarting" if restarting else "NoRestart",
                f"restart {restarts} of backoffLimit {spec.run_policy.backoff_limit}; "
                "resuming from the newest checkpoint"
                if restarting
                else "",
            ),
            cnd.Cond(SUCCEEDED, False, "Training"),
            cnd.Cond(FAILED, False, "Training"),
            cnd.Cond(cnd.READY, False, "Training", "the model is not trained yet"),
            cnd.Cond(cnd.PROGRESSING, True, "Training", progress.message if progress else ""),
        ]


@dataclass(frozen=True)
class PhaseInput:
    """What the phase of a run depends on (`decide_phase`)."""

    previous: str | None  # the stored phase of this generation's run
    suspended: bool
    launcher: WorkloadPhase | None  # None: not applied
    workers: WorkloadPhase | None
    failure: str | None = None  # a workload failed past its restarts: why
    running_s: float | None = None  # since the run started
    active_deadline_s: int | None = None
    pending_s: float | None = None  # since the workers became unplaceable (None: they are not)
    gang_timeout_s: float = 120.0
    pending_workers: int = 0
    worker_count: int = 0
    pending_detail: str = "pending"
    finishing_s: float | None = None  # since the launcher exited 0 (None: it has not)


@dataclass(frozen=True)
class PhaseDecision:
    phase: str  # Created | Running | Suspended | Succeeded | Failed
    reason: str = ""  # for Failed: BackoffLimitExceeded | DeadlineExceeded | GangTimeout
    message: str = ""


def decide_phase(i: PhaseInput) -> PhaseDecision:
    """The run's phase: pure, first match wins (the order is the precedence)."""
    if i.previous in TERMINAL:
        return PhaseDecision(i.previous)  # a finished run stays finished
    if i.suspended:
        return PhaseDecision("Suspended")
    workers_pending = i.workers == WorkloadPhase.PENDING
    if i.launcher == WorkloadPhase.SUCCEEDED and not workers_pending:
        # The launcher exits 0 only once every worker reported done (as an MPIJob's launcher
        # decides its job); workers still exiting are waited for a while, so their ends are
        # counted, then a straggler is cleaned by cleanPodPolicy. A launcher that ended while
        # no worker ever started trained nothing (kwok runs no containers): the gang timeout
        # judges that job instead.
        exiting = i.workers in (WorkloadPhase.RUNNING, WorkloadPhase.READY)
        if exiting and (i.finishing_s or 0.0) < WORKER_EXIT_GRACE_S:
            return PhaseDecision("Running")
        return PhaseDecision("Succeeded")
    if i.failure:
        return PhaseDecision("Failed", "BackoffLimitExceeded", i.failure)
    if i.active_deadline_s and (i.running_s or 0) > i.active_deadline_s:
        return PhaseDecision(
            "Failed",
            "DeadlineExceeded",
            f"DeadlineExceeded: running longer than activeDeadlineSeconds={i.active_deadline_s}",
        )
    if workers_pending and (i.pending_s or 0) > i.gang_timeout_s:
        # Gang semantics: workers that cannot all be placed (no node has the GPUs) fail the
        # job after gangTimeoutSeconds instead of hanging.
        return PhaseDecision(
            "Failed",
            "GangTimeout",
            f"GangTimeout: {i.pending_workers} of {i.worker_count} workers not started within "
            f"gangTimeoutSeconds={i.gang_timeout_s:g}: {i.pending_detail}",
        )
    if i.launcher in (WorkloadPhase.RUNNING, WorkloadPhase.READY) and not workers_pending:
        return PhaseDecision("Running")
    return PhaseDecision("Created")


def set_progress(out: TrainingJobStatus, spec: TrainingJobSpec, p: TrainerProgress) -> None:
    """The TrainingJob status fields the run's progress fills."""
    out.progress = Progress(
        epoch=p.epoch,
        step=p.step,
        total_steps=p.total_steps,
        percent=f"{p.percent:.0f}%",
        eta_seconds=p.eta_s,
    )
    main = "val_rmse" if spec.model.task == "regression" else "val_accuracy"
    metrics = status_metrics(p.metrics, main)
    if metrics:
        out.metrics = metrics
    if p.history:
        out.history = [
            EpochMetrics(
                epoch=int(h.get("epoch") or 0) + 1,
                metrics={k: v for k, v in status_metrics(h, main).items() if k != "epoch"},
            )
            for h in p.history
        ]
    if p.samples_per_s is not None:
        out.samples_per_second = round(p.samples_per_s, 1)
    if p.resumed_from_step is not None:
        out.resumed_from_step = p.resumed_from_step


def status_metrics(reported: Mapping[str, float | None], main: str) -> dict[str, float]:
    """The trainer's metrics as status shows them: camelCase, and validation (the ``main`` one)."""
    metrics = {_camel(k): float(v) for k, v in reported.items() if v is not None}
    if reported.get(main) is not None:
        metrics["validation"] = float(reported[main])  # type: ignore[arg-type]
    return metrics


def _failure(
    launcher: WorkloadStatus | None, workers: WorkloadStatus | None, trainer: TrainerStatus | None
) -> str | None:
    """Why a workload failed past its restarts, in the run's own words where it said them."""
    said = ""
    if trainer is not None:
        said = (
            trainer.progress.message if trainer.progress and trainer.progress.phase == "failed" else ""
        ) or (trainer.gang.message if trainer.gang.phase == "failed" else "")
    for st in (launcher, workers):
        if st is not None and st.phase == WorkloadPhase.FAILED:
            detail = st.message.strip().splitlines()[-1] if st.message.strip() else ""
            reason = said or detail or f"{st.name} failed"
            return f"{st.name} failed after {st.restarts} restart(s): {reason}"
    return None


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.capitalize() for p in rest)
