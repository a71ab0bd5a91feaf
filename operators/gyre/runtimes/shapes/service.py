"""SERVICE: long-lived, interchangeable replicas; Kubernetes: a Deployment behind a ClusterIP
Service. Locally a replica that exits is restarted (per its restart policy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gyre.core.workload import Workload, WorkloadKind, WorkloadStatus
from gyre.runtimes import k8s_status
from gyre.runtimes.shapes.base import Manifest, ResourceKind, Shape, register

if TYPE_CHECKING:
    from gyre.runtimes.k8s_render import RenderContext


class ServiceShape(Shape):
    kind = WorkloadKind.SERVICE
    controller = ResourceKind("Deployment", "apps/v1", "deployments")
    autoscales = True

    def build_controller(self, ctx: RenderContext, workload: Workload, template: Manifest) -> Manifest:
        from gyre.runtimes import k8s_render as r

        spec: Manifest = {
            "selector": {"matchLabels": r.selector_labels(ctx.owner, workload)},
            "template": template,
        }
        if workload.autoscale is None:
            spec["replicas"] = workload.replicas
        # else: the HorizontalPodAutoscaler sets replicas; an apply that named them would undo
        # each of its decisions.
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": r.object_metadata(ctx, workload, r.child_name(ctx.owner, workload.name)),
            "spec": spec,
        }

    def replica_index_env(self, workload: Workload) -> dict[str, Any]:
        # Deployment replicas are interchangeable and have no ordinal; workloads that need one
        # are STATEFUL or BATCH.
        return {"name": "GYRE_REPLICA_INDEX", "value": "0"}

    def observe(self, workload: str, obj: Manifest, pods: Sequence[Manifest]) -> WorkloadStatus:
        return k8s_status.compute_replicated_status(workload, obj, pods)


register(ServiceShape())
