"""An Indexed Job's workload phase (`gyre.runtimes.k8s_status.compute_job_status`), and what
keeps its pods from starting."""

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


def waiting(index: int, reason: str, message: str = "") -> dict[str, Any]:
    p = pod(index, "Pending")
    p["status"]["containerStatuses"] = [
        {"name": "main", "state": {"waiting": {"reason": reason, "message": message}}}
    ]
    return p


def test_a_pod_whose_image_cannot_be_pulled_is_stuck() -> None:
    st = compute_job_status("run", job(1), [waiting(0, "ErrImageNeverPull", "image x is not present")])
    assert st.phase == WorkloadPhase.PENDING
    assert st.stuck == "pod j-0: ErrImageNeverPull: image x is not present"


def test_an_unschedulable_pod_is_stuck_with_the_schedulers_words() -> None:
    p = pod(0, "Pending")
    p["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/2 nodes: Insufficient cpu",
        }
    ]
    st = compute_job_status("run", job(1), [p])
    assert st.stuck == "pod j-0 unschedulable: 0/2 nodes: Insufficient cpu"


def test_a_container_being_created_is_not_stuck() -> None:
    st = compute_job_status("run", job(1), [waiting(0, "ContainerCreating")])
    assert st.phase == WorkloadPhase.PENDING
    assert st.stuck == ""


def test_an_oom_killed_container_is_named() -> None:
    p = pod(0, "Failed")
    p["status"]["containerStatuses"] = [
        {"name": "main", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
    ]
    st = compute_job_status("run", job(1, conditions=("Failed",)), [p])
    assert st.phase == WorkloadPhase.FAILED
    assert "pod j-0: container main OOMKilled (exit code 137)" in st.message
    assert st.stuck == ""
