"""TrainingJob reconcile: a launcher and N workers, their lifecycle, progress and artifact.

Lifecycle, as Kubeflow's training jobs: `runPolicy.suspend` stops the workers (a resume starts
again from the newest checkpoint); `activeDeadlineSeconds` fails a job that runs too long;
once finished, `cleanPodPolicy` decides which workloads stay (None: all, Running: the ones
that already ended, All: none) and `ttlSecondsAfterFinished` deletes the TrainingJob itself.
Progress and metrics come from the status file rank 0 writes next to the checkpoints, read
when the operator can reach it (the local runtime; on Kubernetes the phases come from the
Jobs alone).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gyre.api.trainingjob import TrainingJobSpec
from gyre.builders.trainingjob import (
    LAUNCHER,
    WORKER,
    artifact_uri,
    build_trainingjob,
    checkpoint_uri,
    model_version,
)
from gyre.controllers.base import Controller, ObjectMeta, Ref, Resolved, StatusInput, StatusOutput
from gyre.core import conditions as cnd
from gyre.core.workload import WorkloadPhase, WorkloadStatus
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


def dataset_refs(spec: TrainingJobSpec, path: str = "spec") -> list[Ref]:
    ds = spec.dataset
    if ds.feature_job:
        return [Ref("FeatureJob", ds.feature_job, f"{path}.dataset.featureJob")]
    if ds.stream:
        return [Ref("Stream", ds.stream, f"{path}.dataset.stream")]
    return []


def dataset_uri(spec: TrainingJobSpec, deps: Mapping[str, Resolved]) -> str | None:
    """Where the training data is: a path, a Stream's lake, or a FeatureJob's offline store."""
    if spec.dataset.path:
        return spec.dataset.path
    for dep in deps.values():
        if dep.ref.kind == "Stream":
            for sink in dep.spec.get("sinks", []):
                if sink.get("lake"):
                    return str(sink["lake"]["uri"])
        if dep.ref.kind == "FeatureJob":
            return str((dep.spec.get("offline") or {}).get("uri"))
    return None


def _local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" not in uri:
        return Path(uri)
    return None


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _seconds_since(text: str | None) -> float | None:
    t = _parse_time(text)
    return None if t is None else (dt.datetime.now(dt.UTC) - t).total_seconds()


def _replicas(st: WorkloadStatus | None) -> dict[str, int]:
    if st is None:
        return {"active": 0, "succeeded": 0, "failed": 0}
    active = (
        0
        if st.phase in (WorkloadPhase.SUCCEEDED, WorkloadPhase.FAILED, WorkloadPhase.MISSING)
        else st.replicas
    )
    return {"active": max(active - st.succeeded, 0), "succeeded": st.succeeded, "failed": st.failed}


class TrainingJobController(Controller[TrainingJobSpec]):
    kind = "TrainingJob"
    spec_model = TrainingJobSpec

    def references(self, spec: TrainingJobSpec) -> list[Ref]:
        return dataset_refs(spec)

    def check(self, meta: ObjectMeta, spec: TrainingJobSpec, deps: Mapping[str, Resolved]) -> list[str]:
        problems: list[str] = []
        for dep in deps.values():
            if dep.ref.kind != "Stream" or not dep.found:
                continue
            if not any(s.get("lake") for s in dep.spec.get("sinks", [])):
                problems.append(
                    f"Stream {dep.ref.name!r} has no lake sink to train from: add one to its spec.sinks"
                )
            fields = {f.get("name") for f in (dep.spec.get("schema") or {}).get("fields", [])}
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
        prepared: Mapping[str, Any],
    ) -> list[Any]:
        same_run = status.get("observedGeneration") == meta.generation
        phase = status.get("phase") if same_run else None
        if spec.run_policy.suspend:
            return []
        uri = dataset_uri(spec, deps)
        if uri is None:
            return []
        workloads = build_trainingjob(spec, meta.name, meta.generation, uri)
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
        prepared: Mapping[str, Any],
    ) -> Mapping[str, Any]:
        ckpt = _local_path(checkpoint_uri(spec, meta.name, meta.generation))
        art = _local_path(artifact_uri(spec, meta.name, meta.generation))
        return {
            "progress": _read_json(ckpt / "status.json" if ckpt else None),
            "artifact": _read_json(art / "metadata.json" if art else None),
        }

    def compute_status(self, spec: TrainingJobSpec, inp: StatusInput) -> StatusOutput:
        meta, old = inp.meta, inp.old_status
        same_run = old.get("observedGeneration") == meta.generation
        prev_phase = old.get("phase") if same_run else None
        launcher = inp.observed.get(LAUNCHER)
        workers = inp.observed.get(WORKER)
        progress: dict[str, Any] = dict(inp.facts.get("progress") or {})
        artifact = inp.facts.get("artifact")
        now = cnd.now_rfc3339()
        fields: dict[str, Any] = {}
        if not same_run:  # a new generation is a new run: forget the old run's figures
            fields.update(
                dict.fromkeys(("progress", "metrics", "model", "startTime", "completionTime", "restarts"))
            )
            fields.update({"resumedFromStep": None, "samplesPerSecond": None, "endedWorkloads": None})
        start = old.get("startTime") if same_run else None
        done_at = old.get("completionTime") if same_run else None
        restarts = max(launcher.restarts if launcher else 0, workers.restarts if workers else 0)
        fields["replicaStatuses"] = {LAUNCHER: _replicas(launcher), WORKER: _replicas(workers)}
        fields["restarts"] = restarts
        fields["endedWorkloads"] = sorted(
            name
            for name, st in inp.observed.items()
            if st.phase in (WorkloadPhase.SUCCEEDED, WorkloadPhase.FAILED)
        ) or (old.get("endedWorkloads") if same_run else None)
        self._progress_fields(spec, progress, fields)
        if artifact and (
            launcher is None or launcher.phase == WorkloadPhase.SUCCEEDED or prev_phase == "Succeeded"
        ):
            fields["model"] = {
                "uri": artifact_uri(spec, meta.name, meta.generation),
                "version": model_version(meta.name, meta.generation),
            }

        # Gang semantics before the launcher can judge: workers that cannot all be placed
        # (e.g. no node has the GPUs) fail the job after gangTimeoutSeconds instead of hanging.
        workers_pending = workers is not None and workers.phase == WorkloadPhase.PENDING
        pending_since = (old.get("gangPendingSince") if same_run else None) or (
            now if workers_pending else None
        )
        fields["gangPendingSince"] = pending_since if workers_pending else None
        gang_timed_out: str | None = None
        timeout = spec.run_policy.gang_timeout_seconds
        if workers_pending and (_seconds_since(pending_since) or 0) > timeout and workers is not None:
            gang_timed_out = (
                f"GangTimeout: {workers.replicas - workers.ready_replicas} of {workers.replicas} workers "
                f"not started within gangTimeoutSeconds={timeout}: {workers.message or 'pending'}"
            )
        conds: list[cnd.Cond] = [
            cnd.Cond(CREATED, True, "WorkloadsCreated", "launcher and workers are applied")
        ]
        total = spec.run_policy.backoff_limit
        failed_msg = self._failure(launcher, workers, progress)
        if prev_phase in TERMINAL:
            phase = prev_phase
        elif spec.run_policy.suspend:
            phase = "Suspended"
        elif launcher and launcher.phase == WorkloadPhase.SUCCEEDED and not workers_pending:
            # The launcher exits 0 only once every worker reported done (as an MPIJob's
            # launcher decides its job); a straggling worker is cleaned by cleanPodPolicy.
            # A launcher that ended while no worker ever started trained nothing (a launcher
            # image that exits early; kwok, which runs no containers): the gang timeout
            # judges that job instead.
            phase = "Succeeded"
        elif failed_msg:
            phase = "Failed"
        elif (
            spec.run_policy.active_deadline_seconds
            and start
            and (_seconds_since(start) or 0) > spec.run_policy.active_deadline_seconds
        ):
            phase = "Failed"
            limit = spec.run_policy.active_deadline_seconds
            failed_msg = f"DeadlineExceeded: running longer than activeDeadlineSeconds={limit}"
        elif gang_timed_out:
            phase = "Failed"
            failed_msg = gang_timed_out
        elif (
            launcher
            and launcher.phase in (WorkloadPhase.RUNNING, WorkloadPhase.READY)
            and not workers_pending
        ):
            phase = "Running"
        else:
            phase = "Created"
        if phase in ("Running", "Succeeded", "Failed") and not start:
            start = now
        if phase in TERMINAL and not done_at:
            done_at = now
        fields["startTime"] = start
        fields["completionTime"] = done_at

        restarting = phase == "Running" and progress.get("phase") == "failed"
        if phase == "Suspended":
            conds += [
                cnd.Cond(SUSPENDED, True, "Suspended", "runPolicy.suspend is true: workers are stopped"),
                cnd.Cond(RUNNING, False, "Suspended"),
                cnd.Cond(cnd.READY, False, "Suspended", "resume by setting runPolicy.suspend to false"),
                cnd.Cond(cnd.PROGRESSING, False, "Suspended"),
            ]
        else:
            conds.append(cnd.Cond(SUSPENDED, False, "NotSuspended"))
        if phase == "Succeeded":
            metric = (fields.get("metrics") or {}).get("validation")
            conds += [
                cnd.Cond(
                    SUCCEEDED,
                    True,
                    "TrainingSucceeded",
                    f"model {model_version(meta.name, meta.generation)}"
                    + (f", validation {metric:.4f}" if isinstance(metric, float) else ""),
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
        elif phase == "Failed":
            message = failed_msg or str(old.get("failureMessage") or "training failed")
            head = message.split(":", 1)[0]
            reason = head if head in ("DeadlineExceeded", "GangTimeout") else "BackoffLimitExceeded"
            conds += [
                cnd.Cond(FAILED, True, reason, message),
                cnd.Cond(RUNNING, False, reason),
                cnd.Cond(RESTARTING, False, reason),
                cnd.Cond(SUCCEEDED, False, reason),
                cnd.Cond(cnd.READY, False, reason, message),
                cnd.Cond(cnd.PROGRESSING, False, reason),
                cnd.Cond(cnd.DEGRADED, True, reason, message),
            ]
            fields["failureMessage"] = message
        elif phase in ("Running", "Created"):
            step = progress.get("step")
            conds += [
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
                    f"restart {restarts} of backoffLimit {total}; resuming from the newest checkpoint"
                    if restarting
                    else "",
                ),
                cnd.Cond(SUCCEEDED, False, "Training"),
                cnd.Cond(FAILED, False, "Training"),
                cnd.Cond(cnd.READY, False, "Training", "the model is not trained yet"),
                cnd.Cond(cnd.PROGRESSING, True, "Training", progress.get("message") or ""),
            ]
        ttl = spec.run_policy.ttl_seconds_after_finished
        delete = bool(phase in TERMINAL and ttl is not None and (_seconds_since(done_at) or 0) >= ttl)
        still_running = any(
            st.phase not in (WorkloadPhase.SUCCEEDED, WorkloadPhase.FAILED, WorkloadPhase.MISSING)
            for st in inp.observed.values()
        )
        requeue = None if phase in TERMINAL and ttl is None and not still_running else POLL_S
        if phase in TERMINAL and ttl is not None and not still_running:
            requeue = max(1.0, ttl - (_seconds_since(done_at) or 0))
        if phase == "Suspended":
            requeue = None
        return StatusOutput(
            fields=fields, conditions=conds, phase=phase, requeue_after=requeue, delete_object=delete
        )

    @staticmethod
    def _failure(
        launcher: WorkloadStatus | None, workers: WorkloadStatus | None, progress: Mapping[str, Any]
    ) -> str | None:
        for st in (launcher, workers):
            if st is not None and st.phase == WorkloadPhase.FAILED:
                detail = st.message.strip().splitlines()[-1] if st.message.strip() else ""
                reason = progress.get("message") or detail or f"{st.name} failed"
                return f"{st.name} failed after {st.restarts} restart(s): {reason}"
        return None

    @staticmethod
    def _progress_fields(spec: TrainingJobSpec, progress: Mapping[str, Any], fields: dict[str, Any]) -> None:
        if not progress:
            return
        percent = progress.get("percent")
        fields["progress"] = {
            "epoch": progress.get("epoch"),
            "step": progress.get("step"),
            "totalSteps": progress.get("total_steps"),
            "percent": f"{percent:.0f}%" if isinstance(percent, int | float) else None,
            "etaSeconds": progress.get("eta_s"),
        }
        metrics: dict[str, float] = {}
        for key, value in (progress.get("metrics") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[_camel(key)] = float(value)
        main = "val_rmse" if spec.model.task == "regression" else "val_accuracy"
        if isinstance((progress.get("metrics") or {}).get(main), int | float):
            metrics["validation"] = float(progress["metrics"][main])
        if metrics:
            fields["metrics"] = metrics
        if progress.get("samples_per_s") is not None:
            fields["samplesPerSecond"] = round(float(progress["samples_per_s"]), 1)
        if progress.get("resumed_from_step") is not None:
            fields["resumedFromStep"] = int(progress["resumed_from_step"])


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.capitalize() for p in rest)
