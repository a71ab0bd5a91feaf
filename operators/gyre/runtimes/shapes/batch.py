"""BATCH: replicas that run to completion, each with its index; Kubernetes: an Indexed Job
(with a headless Service when it has ports, so ranks resolve as ``<job>-<i>.<svc>``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gyre.core.workload import RestartPolicy, Workload, WorkloadKind, WorkloadStatus
from gyre.runtimes import k8s_status
from gyre.runtimes.shapes.base import Manifest, ResourceKind, Shape, register

if TYPE_CHECKING:
    from gyre.runtimes.k8s_render import RenderContext


class BatchShape(Shape):
    kind = WorkloadKind.BATCH
    controller = ResourceKind("Job", "batch/v1", "jobs")
    completes = True
    stable_pod_names = True
    headless = True

    def build_controller(self, ctx: RenderContext, workload: Workload, template: Manifest) -> Manifest:
        from gyre.runtimes import k8s_render as r

        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": r.object_metadata(ctx, workload, r.child_name(ctx.owner, workload.name)),
            "spec": {
                "completionMode": "Indexed",
                "completions": workload.replicas,
                "parallelism": workload.replicas,
                "backoffLimit": workload.backoff_limit,
                "template": template,
            },
        }

    def replica_index_env(self, workload: Workload) -> dict[str, Any]:
        path = f"metadata.annotations['{k8s_status.JOB_INDEX_ANNOTATION}']"
        return {"name": "GYRE_REPLICA_INDEX", "valueFrom": {"fieldRef": {"fieldPath": path}}}

    def pod_restart_policy(self, workload: Workload) -> str:
        # Jobs accept only OnFailure and Never.
        if workload.restart_policy is RestartPolicy.NEVER:
            return RestartPolicy.NEVER.value
        return RestartPolicy.ON_FAILURE.value

    def pod_spec(self, ctx: RenderContext, workload: Workload) -> Manifest:
        from gyre.runtimes import k8s_render as r

        if not workload.ports:
            return {}
        # Indexed Job pods are named <job>-<index>; with a subdomain they resolve as
        # <job>-<index>.<svc>.<ns>.svc through the headless Service of the same name.
        return {"subdomain": r.child_name(ctx.owner, workload.name)}

    def observe(self, workload: str, obj: Manifest, pods: Sequence[Manifest]) -> WorkloadStatus:
        return k8s_status.compute_job_status(workload, obj, pods)


register(BatchShape())
