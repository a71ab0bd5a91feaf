"""How Kubernetes objects and their pods read back as `WorkloadStatus`: pure functions over
the objects' JSON, used by the workload shapes (`gyre.runtimes.shapes`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gyre.core.workload import WorkloadPhase, WorkloadStatus

JOB_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


def replica_index(pod: Mapping[str, Any]) -> int | None:
    """A pod's replica index (indexed Job or StatefulSet); None for a Deployment's pods."""
    md = pod.get("metadata") or {}
    raw = (md.get("annotations") or {}).get(JOB_INDEX_ANNOTATION) or (md.get("labels") or {}).get(
        POD_INDEX_LABEL
    )
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


# A waiting container's reasons that last until someone acts (an image made available, a
# missing ConfigMap or Secret created): the pod is stuck, not starting.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class PodProblems:
    unschedulable: bool  # some pod cannot be scheduled
    messages: list[str]  # what is wrong with the pods, for humans
    stuck: list[str]  # those of the messages that keep a pod from starting (`STUCK_REASONS`)


def pod_messages(pods: Sequence[dict[str, Any]]) -> PodProblems:
    """What is wrong with the pods: unschedulable, containers waiting for a reason other than
    being created, containers killed for exceeding their memory limit."""
    unschedulable = False
    messages: list[str] = []
    stuck: list[str] = []
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status", {})
        for cond in status.get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                unschedulable = True
                text = f"pod {name} unschedulable: {cond.get('message', '')}".strip()
                messages.append(text)
                stuck.append(text)
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating"):
                text = f"pod {name}: {waiting['reason']}"
                if waiting.get("message"):
                    text += f": {waiting['message']}"
                messages.append(text)
                if waiting["reason"] in STUCK_REASONS:
                    stuck.append(text)
            for key in ("state", "lastState"):
                terminated = (cs.get(key) or {}).get("terminated") or {}
                if terminated.get("reason") == "OOMKilled":
                    messages.append(
                        f"pod {name}: container {cs.get('name', '')} OOMKilled (exit code"
                        f" {terminated.get('exitCode', 137)}): it needs more memory than its limit"
                    )
                    break
    return PodProblems(unschedulable, messages, stuck)


def restarts(pods: Sequence[dict[str, Any]]) -> int:
    return sum(
        int(cs.get("restartCount", 0))
        for pod in pods
        for cs in (pod.get("status", {}).get("containerStatuses") or [])
    )


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def compute_replicated_status(
    workload: str, obj: dict[str, Any], pods: Sequence[dict[str, Any]]
) -> WorkloadStatus:
    """A Deployment's or StatefulSet's status: Ready once every desired replica is updated
    and ready."""
    spec_replicas = int(obj.get("spec", {}).get("replicas", 1))
    st = obj.get("status", {})
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    observed = int(st.get("observedGeneration") or 0) >= int(obj["metadata"].get("generation", 0))
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    problems = pod_messages(live)
    unschedulable, messages = problems.unschedulable, problems.messages
    if observed and ready >= spec_replicas and updated >= spec_replicas:
        phase = WorkloadPhase.READY
    elif unschedulable or not any(p.get("status", {}).get("phase") == "Running" for p in live):
        phase = WorkloadPhase.PENDING
    else:
        phase = WorkloadPhase.RUNNING
    return WorkloadStatus(
        name=workload,
        phase=phase,
        replicas=spec_replicas,
        ready_replicas=ready,
        restarts=restarts(live),
        message="; ".join(messages),
        stuck="; ".join(problems.stuck) if phase == WorkloadPhase.PENDING else "",
    )


def _exit_code(pod: dict[str, Any]) -> int | None:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        for key in ("state", "lastState"):
            terminated = (cs.get(key) or {}).get("terminated")
            if terminated is not None and "exitCode" in terminated:
                return int(terminated["exitCode"])
    return None


def compute_job_status(workload: str, obj: dict[str, Any], pods: Sequence[dict[str, Any]]) -> WorkloadStatus:
    """An Indexed Job's status, with the exit code of each index's latest pod."""
    spec = obj.get("spec", {})
    st = obj.get("status", {})
    replicas = int(spec.get("completions") or 1)
    succeeded = int(st.get("succeeded") or 0)
    failed = int(st.get("failed") or 0)
    ready = int(st.get("ready") or 0)
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    problems = pod_messages(live)
    unschedulable, messages = problems.unschedulable, problems.messages

    latest: dict[int, dict[str, Any]] = {}
    for pod in pods:
        i = replica_index(pod)
        if i is None or i < 0:
            continue
        created = pod["metadata"].get("creationTimestamp", "")
        if i not in latest or created >= latest[i]["metadata"].get("creationTimestamp", ""):
            latest[i] = pod
    exit_codes = tuple(_exit_code(latest[i]) if i in latest else None for i in range(replicas))

    failed_cond = _condition(obj, "Failed") or _condition(obj, "FailureTarget")
    done_cond = _condition(obj, "Complete") or _condition(obj, "SuccessCriteriaMet")
    if failed_cond is not None:
        phase = WorkloadPhase.FAILED
        messages.insert(0, f"{failed_cond.get('reason', '')}: {failed_cond.get('message', '')}")
    elif done_cond is not None or succeeded >= replicas:
        # Every index succeeded: done, although the Job controller may not have said so yet
        # (until then no pod runs, which would otherwise read as pending).
        phase = WorkloadPhase.SUCCEEDED
    elif unschedulable or not any(p.get("status", {}).get("phase") == "Running" for p in live):
        phase = WorkloadPhase.PENDING
    else:
        phase = WorkloadPhase.RUNNING
    return WorkloadStatus(
        name=workload,
        phase=phase,
        replicas=replicas,
        ready_replicas=ready,
        succeeded=succeeded,
        failed=failed,
        restarts=restarts(pods),
        message="; ".join(m for m in messages if m.strip(": ")),
        exit_codes=exit_codes,
        stuck="; ".join(problems.stuck) if phase == WorkloadPhase.PENDING else "",
    )
