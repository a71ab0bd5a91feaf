"""TrainingJob status: the pure phase decision and the status computed from the launcher's
`/status` document (the status contract), without any runtime."""

from __future__ import annotations

from typing import Any

import pytest
from gyre.api.trainingjob import TrainingJobSpec
from gyre.builders.trainingjob import LAUNCHER, WORKER
from gyre.controllers.base import ObjectMeta, StatusInput
from gyre.controllers.trainingjob import (
    PhaseDecision,
    PhaseInput,
    TrainingFacts,
    TrainingJobController,
    decide_phase,
)
from gyre.core.workload import WorkloadPhase as P
from gyre.core.workload import WorkloadStatus
from gyre.pipelines.trainer.status import GangStatus, TrainerProgress, TrainerStatus

CASES: list[tuple[str, PhaseInput, PhaseDecision]] = [
    ("nothing applied yet", PhaseInput(None, False, None, None), PhaseDecision("Created")),
    ("launcher up, workers pending", PhaseInput(None, False, P.RUNNING, P.PENDING), PhaseDecision("Created")),
    ("launcher and workers running", PhaseInput(None, False, P.RUNNING, P.RUNNING), PhaseDecision("Running")),
    ("launcher ready counts as running", PhaseInput(None, False, P.READY, P.READY), PhaseDecision("Running")),
    ("launcher exited 0", PhaseInput(None, False, P.SUCCEEDED, P.SUCCEEDED), PhaseDecision("Succeeded")),
    (
        "launcher exited 0, workers still exiting: waited for",
        PhaseInput(None, False, P.SUCCEEDED, P.RUNNING, finishing_s=29.0),
        PhaseDecision("Running"),
    ),
    (
        "launcher exited 0, workers exiting past the grace: done (cleanPodPolicy takes them)",
        PhaseInput(None, False, P.SUCCEEDED, P.RUNNING, finishing_s=30.0),
        PhaseDecision("Succeeded"),
    ),
    (
        "launcher exited 0 while no worker ever started: not a success",
        PhaseInput(None, False, P.SUCCEEDED, P.PENDING),
        PhaseDecision("Created"),
    ),
    (
        "a finished run stays finished",
        PhaseInput("Succeeded", False, P.FAILED, None),
        PhaseDecision("Succeeded"),
    ),
    ("a failed run stays failed", PhaseInput("Failed", True, P.RUNNING, P.RUNNING), PhaseDecision("Failed")),
    (
        "suspend wins over running",
        PhaseInput("Running", True, P.RUNNING, P.RUNNING),
        PhaseDecision("Suspended"),
    ),
    (
        "a workload past its restarts fails the run",
        PhaseInput(None, False, P.FAILED, P.RUNNING, failure="launcher failed after 6 restart(s): boom"),
        PhaseDecision("Failed", "BackoffLimitExceeded", "launcher failed after 6 restart(s): boom"),
    ),
    (
        "success beats a straggler's failure",
        PhaseInput(None, False, P.SUCCEEDED, P.FAILED, failure="worker failed"),
        PhaseDecision("Succeeded"),
    ),
    (
        "past the active deadline",
        PhaseInput(None, False, P.RUNNING, P.RUNNING, running_s=11.0, active_deadline_s=10),
        PhaseDecision(
            "Failed", "DeadlineExceeded", "DeadlineExceeded: running longer than activeDeadlineSeconds=10"
        ),
    ),
    (
        "at the active deadline: still running",
        PhaseInput(None, False, P.RUNNING, P.RUNNING, running_s=10.0, active_deadline_s=10),
        PhaseDecision("Running"),
    ),
    (
        "workers unplaceable past the gang timeout",
        PhaseInput(
            None,
            False,
            P.RUNNING,
            P.PENDING,
            pending_s=31.0,
            gang_timeout_s=30,
            pending_workers=2,
            worker_count=2,
            pending_detail="Insufficient nvidia.com/gpu",
        ),
        PhaseDecision(
            "Failed",
            "GangTimeout",
            "GangTimeout: 2 of 2 workers not started within gangTimeoutSeconds=30: "
            "Insufficient nvidia.com/gpu",
        ),
    ),
    (
        "workers unplaceable within the gang timeout",
        PhaseInput(None, False, P.RUNNING, P.PENDING, pending_s=29.0, gang_timeout_s=30),
        PhaseDecision("Created"),
    ),
]


@pytest.mark.parametrize(("case", "inp", "want"), CASES, ids=[c[0] for c in CASES])
def test_decide_phase(case: str, inp: PhaseInput, want: PhaseDecision) -> None:
    assert decide_phase(inp) == want


SPEC = TrainingJobSpec.model_validate(
    {
        "dataset": {"path": "file:///data", "label": "churned"},
        "model": {"architecture": "mlp", "task": "binary"},
        "workers": 2,
        "output": {"uri": "file:///models/churn"},
    }
)
META = ObjectMeta(kind="TrainingJob", namespace="ns", name="churn", uid="u", generation=3)


def status_of(
    observed: dict[str, P], trainer: TrainerStatus | None, old: dict[str, Any] | None = None
) -> Any:
    return TrainingJobController().compute_status(
        SPEC,
        StatusInput(
            meta=META,
            old_status=old or {},
            deps={},
            workloads=[],
            observed={
                n: WorkloadStatus(name=n, phase=ph, replicas=2, ready_replicas=2)
                for n, ph in observed.items()
            },
            facts=TrainingFacts(trainer),
        ),
    )


def wire(out: Any) -> dict[str, Any]:
    """The status fields as written to the object (camelCase), only those the pass set."""
    fields: dict[str, Any] = out.status.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return fields


def running_trainer(**progress: Any) -> TrainerStatus:
    base = {
        "phase": "running", "epoch": 1, "epochs": 4, "step": 50, "total_steps": 200, "percent": 25.0,
        "eta_s": 12.5, "samples_per_s": 4321.06, "metrics": {"val_accuracy": 0.81, "val_loss": 0.4},
        "resumed_from_step": 40, "workers": 2, "backend": "horovod", "message": "epoch 1",
    }  # fmt: skip
    return TrainerStatus(
        gang=GangStatus(phase="running", size=2, joined=[0, 1]),
        progress=TrainerProgress.model_validate({**base, **progress}),
    )


def test_progress_comes_from_the_launchers_status_document() -> None:
    out = status_of({LAUNCHER: P.RUNNING, WORKER: P.RUNNING}, running_trainer())
    assert out.phase == "Running"
    f = wire(out)
    assert f["replicaStatuses"]["worker"] == {"active": 2, "succeeded": 0, "failed": 0}
    assert f["progress"] == {"epoch": 1, "step": 50, "totalSteps": 200, "percent": "25%", "etaSeconds": 12.5}
    assert f["metrics"] == {"valAccuracy": 0.81, "valLoss": 0.4, "validation": 0.81}
    assert f["samplesPerSecond"] == 4321.1
    assert f["resumedFromStep"] == 40
    running = next(c for c in out.conditions if c.type == "Running")
    assert (running.status, running.message) == (True, "step 50")


def test_per_epoch_metrics_become_the_status_history() -> None:
    """What early stopping compares: each epoch's metrics, typed, epochs counted from 1."""
    history = [
        {"epoch": 0, "val_accuracy": 0.7, "val_loss": 0.6, "model_parameters": 33.0},
        {"epoch": 1, "val_accuracy": 0.8, "val_loss": 0.5, "model_parameters": 33.0},
    ]
    out = status_of({LAUNCHER: P.RUNNING, WORKER: P.RUNNING}, running_trainer(history=history))
    assert wire(out)["history"] == [
        {
            "epoch": 1,
            "metrics": {"valAccuracy": 0.7, "valLoss": 0.6, "modelParameters": 33.0, "validation": 0.7},
        },
        {
            "epoch": 2,
            "metrics": {"valAccuracy": 0.8, "valLoss": 0.5, "modelParameters": 33.0, "validation": 0.8},
        },
    ]


def test_no_status_document_keeps_the_stored_figures() -> None:
    """A launcher not answering (restarting) must not blank the figures already shown."""
    out = status_of(
        {LAUNCHER: P.RUNNING, WORKER: P.RUNNING}, None, {"observedGeneration": 3, "phase": "Running"}
    )
    assert "progress" not in wire(out)
    assert "metrics" not in wire(out)


def test_a_failed_gang_while_running_is_reported_as_restarting() -> None:
    trainer = running_trainer()
    trainer = trainer.model_copy(
        update={"gang": GangStatus(phase="failed", message="worker 1 failed", size=2)}
    )
    out = status_of({LAUNCHER: P.RUNNING, WORKER: P.RUNNING}, trainer)
    restarting = next(c for c in out.conditions if c.type == "Restarting")
    assert restarting.status is True


def test_failure_message_is_the_runs_own_words() -> None:
    trainer = TrainerStatus(
        gang=GangStatus(phase="failed", message="gang timeout: 1 of 2 workers joined", size=2)
    )
    out = status_of({LAUNCHER: P.FAILED, WORKER: P.RUNNING}, trainer)
    assert out.phase == "Failed"
    assert (
        wire(out)["failureMessage"]
        == "launcher failed after 0 restart(s): gang timeout: 1 of 2 workers joined"
    )


def test_success_publishes_the_model_uri_and_version() -> None:
    done = running_trainer(
        phase="succeeded", step=200, artifact="file:///models/churn/churn-g3", features=["plan", "page_views"]
    )
    out = status_of({LAUNCHER: P.SUCCEEDED, WORKER: P.SUCCEEDED}, done)
    assert out.phase == "Succeeded"
    assert wire(out)["model"] == {
        "uri": "file:///models/churn/churn-g3",
        "version": "churn-g3",
        "features": ["plan", "page_views"],
    }
    # The final report is read while the launcher lingers (the run still Running); the next
    # pass, with the launcher gone, keeps the features.
    lingering = status_of({LAUNCHER: P.RUNNING, WORKER: P.SUCCEEDED}, done)
    assert lingering.phase == "Running"
    assert wire(lingering)["model"]["features"] == ["plan", "page_views"]
    old = {"observedGeneration": 3, "phase": "Running", "model": wire(lingering)["model"]}
    again = status_of({LAUNCHER: P.SUCCEEDED, WORKER: P.SUCCEEDED}, None, old)
    assert wire(again)["model"]["features"] == ["plan", "page_views"]
    ready = next(c for c in out.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == (True, "ModelAvailable")


def test_a_malformed_status_document_is_no_document() -> None:
    assert TrainerStatus.parse({"gang": {"phase": "running"}, "progress": {"step": "many"}}) is None
    assert TrainerStatus.parse(None) is None
    assert TrainerStatus.parse({"gang": {"phase": "running"}, "future_field": 1}) is not None


def test_a_new_generation_removes_the_old_runs_figures() -> None:
    old = {
        "observedGeneration": 2,
        "phase": "Succeeded",
        "metrics": {"validation": 0.9},
        "model": {"uri": "x"},
    }
    out = status_of({LAUNCHER: P.RUNNING, WORKER: P.RUNNING}, None, old)
    assert {"metrics", "model", "progress", "start_time"} <= set(out.remove)
    assert out.phase == "Running", "generation 3 is a new run, not the finished one of generation 2"


def _feature_job(offline: dict[str, Any] | None) -> Any:
    from gyre.controllers.base import Ref, Resolved

    status: dict[str, Any] = {"features": ["sessions_1d"]}
    if offline is not None:
        status["offline"] = offline
    return Resolved(Ref("FeatureJob", "clicks-features", "spec.dataset.featureJob"), {"status": status})


FJ_SPEC = TrainingJobSpec.model_validate(
    {
        "dataset": {"featureJob": "clicks-features", "label": "churned"},
        "model": {"architecture": "mlp", "task": "binary"},
        "output": {"uri": "file:///models/churn"},
    }
)


@pytest.mark.parametrize(
    ("offline", "says"),
    [
        (None, "has published no offline version yet"),
        (
            {"uri": "file:///f", "latestVersion": "v1", "latestUri": "file:///f/v1", "rows": 0,
             "versions": [{"version": "v1", "uri": "file:///f/v1", "rows": 0}]},
            "offline version v1 has no training rows",
        ),
    ],
)  # fmt: skip
def test_no_dataset_to_train_on_is_a_waiting_condition_not_a_failed_run(
    offline: dict[str, Any] | None, says: str
) -> None:
    from gyre.controllers.trainingjob import (
        build_trainingjob,  # noqa: F401 - the builder is not reached
        dataset_source,
    )

    deps = {"spec.dataset.featureJob": _feature_job(offline)}
    assert dataset_source(FJ_SPEC, deps, {}, 3) is None  # so build() applies no workloads
    out = TrainingJobController().compute_status(
        FJ_SPEC,
        StatusInput(meta=META, old_status={}, deps=deps, workloads=[], observed={}, facts=TrainingFacts()),
    )
    ready = next(c for c in out.conditions if c.type == "Ready")
    assert (out.phase, ready.status, ready.reason) == ("Waiting", False, "DatasetNotAvailable")
    assert says in ready.message
    assert out.requeue_after is not None


def test_a_version_with_rows_is_trained_on() -> None:
    from gyre.controllers.trainingjob import dataset_source

    offline = {"uri": "file:///f", "latestVersion": "v2", "latestUri": "file:///f/v2", "rows": 40}
    source = dataset_source(FJ_SPEC, {"spec.dataset.featureJob": _feature_job(offline)}, {}, 3)
    assert source is not None
    assert (source.uri, source.version) == ("file:///f/v2", "v2")
