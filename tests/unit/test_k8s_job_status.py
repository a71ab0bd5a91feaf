"""An Indexed Job's workload phase (`gyre.runtimes.k8s_status.compute_job_status`)."""

from __future__ import annotations

from typing import Any

from gyre.core.workload import WorkloadPhase
from gyre.runtimes.k8s_status import compute_job_status


def job(completions: int, succeeded: int = 0, conditions: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "metadata": {"name": "j"},
        "spec": {"completions": completions},
        "status": {
            "succeeded": succeeded,
            "conditions": [{"type": t, "status": "True", "reason": t, "message": ""} for t in conditions],
        },
    }


def pod(index: int, phase: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"j-{index}",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {"phase": phase},
    }


def test_every_index_succeeded_is_done_before_the_job_controller_says_so() -> None:
    st = compute_job_status("worker", job(2, succeeded=2), [pod(0, "Succeeded"), pod(1, "Succeeded")])
    assert st.phase == WorkloadPhase.SUCCEEDED


def test_one_index_left_with_no_pod_running_is_pending() -> None:
    st = compute_job_status("worker", job(2, succeeded=1), [pod(0, "Succeeded"), pod(1, "Pending")])
    assert st.phase == WorkloadPhase.PENDING


def test_the_job_controllers_verdicts_win() -> None:
    assert compute_job_status("w", job(2, 1, ("Complete",)), []).phase == WorkloadPhase.SUCCEEDED
    assert compute_job_status("w", job(2, 2, ("Failed",)), []).phase == WorkloadPhase.FAILED
    assert compute_job_status("w", job(2, 0), [pod(0, "Running")]).phase == WorkloadPhase.RUNNING
