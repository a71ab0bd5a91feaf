"""STATEFUL: long-lived replicas with identity and storage; Kubernetes: a StatefulSet with a
claim per volume and replica behind a headless Service (peers resolve each other by name)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gyre.core.workload import Workload, WorkloadKind, WorkloadStatus
from gyre.runtimes import k8s_status
from gyre.runtimes.shapes.base import Manifest, ResourceKind, Shape, register

if TYPE_CHECKING:
    from gyre.runtimes.k8s_render import RenderContext


class StatefulShape(Shape):
    kind = WorkloadKind.STATEFUL
    controller = ResourceKind("StatefulSet", "apps/v1", "statefulsets")
    stable_pod_names = True
    headless = True
    always_service = True
    claims_volumes = True

    def build_controller(self, ctx: RenderContext, workload: Workload, template: Manifest) -> Manifest:
        from gyre.runtimes import k8s_render as r

        name = r.child_name(ctx.owner, workload.name)
        claim_labels = r.workload_labels(ctx.owner, workload)
        return {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": r.object_metadata(ctx, workload, name),
            "spec": {
                "replicas": workload.replicas,
                "serviceName": name,
                # Peers start together (a Kafka quorum needs all of them to elect a leader).
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": r.selector_labels(ctx.owner, workload)},
                "template": template,
                "volumeClaimTemplates": [
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": {"name": v.name, "labels": claim_labels},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": v.size}},
                        },
                    }
                    for v in workload.volumes
                ],
                # Data lives as long as the workload: removing it (or its owner) removes the
                # PVCs; scaling down keeps them for when it scales back up.
                "persistentVolumeClaimRetentionPolicy": {
                    "whenDeleted": "Delete",
                    "whenScaled": "Retain",
                },
            },
        }

    def replica_index_env(self, workload: Workload) -> dict[str, Any]:
        path = f"metadata.labels['{k8s_status.POD_INDEX_LABEL}']"
        return {"name": "GYRE_REPLICA_INDEX", "valueFrom": {"fieldRef": {"fieldPath": path}}}

    def observe(self, workload: str, obj: Manifest, pods: Sequence[Manifest]) -> WorkloadStatus:
        return k8s_status.compute_replicated_status(workload, obj, pods)


register(StatefulShape())
