"""The `Shape` interface: everything a runtime needs to know about one way a workload runs.

A shape (long-lived and stateless, long-lived with identity, run to completion, ...) knows how
it renders on Kubernetes (its controller object, its Service, what its pods add), how the
local runtime runs it (whether replicas run to completion) and how its state is read back
from the objects. Runtimes ask `shape_of(workload)` and never branch on the workload kind, so
a new shape is one module that subclasses `Shape` and calls `register`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from gyre.core.workload import RestartPolicy, Workload, WorkloadKind, WorkloadStatus

if TYPE_CHECKING:
    from gyre.runtimes.k8s_render import RenderContext

Manifest = dict[str, Any]


@dataclass(frozen=True)
class ResourceKind:
    """A Kubernetes resource type and its REST paths."""

    kind: str
    api_version: str
    plural: str

    def collection(self, namespace: str) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"

    def path(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"


class Shape(abc.ABC):
    kind: ClassVar[WorkloadKind]
    controller: ClassVar[ResourceKind]
    """The Kubernetes object that owns the workload's pods."""
    completes: ClassVar[bool] = False
    """Replicas run to completion: exit 0 ends a replica (both runtimes)."""
    stable_pod_names: ClassVar[bool] = False
    """Each replica resolves by name (``<pod>.<service>``): what `PeersRef` needs."""
    headless: ClassVar[bool] = False
    """Its Service has no cluster IP and publishes not-ready addresses (peers find each other
    before any is ready)."""
    always_service: ClassVar[bool] = False
    """A Service even without ports (a StatefulSet's ``serviceName``)."""
    claims_volumes: ClassVar[bool] = False
    """Volumes are claims per replica (kept across restarts), not emptyDirs."""
    autoscales: ClassVar[bool] = False
    """Its replicas may follow a metric (`Workload.autoscale`): a HorizontalPodAutoscaler."""

    @abc.abstractmethod
    def build_controller(self, ctx: RenderContext, workload: Workload, template: Manifest) -> Manifest:
        """The controller object, around the pod ``template`` the renderer built."""

    @abc.abstractmethod
    def replica_index_env(self, workload: Workload) -> dict[str, Any]:
        """The ``GYRE_REPLICA_INDEX`` env entry of the pod template."""

    def pod_restart_policy(self, workload: Workload) -> str:
        return RestartPolicy.ALWAYS.value  # what Deployments and StatefulSets accept

    def pod_spec(self, ctx: RenderContext, workload: Workload) -> Manifest:
        """Fields this shape adds to the pod spec."""
        return {}

    @abc.abstractmethod
    def observe(self, workload: str, obj: Manifest, pods: Sequence[Manifest]) -> WorkloadStatus:
        """The workload's state from its controller object and its pods."""


_SHAPES: dict[WorkloadKind, Shape] = {}


def register(shape: Shape) -> Shape:
    if shape.kind in _SHAPES:
        raise ValueError(f"a shape for {shape.kind} is registered already")
    _SHAPES[shape.kind] = shape
    return shape


def shape_of(workload: Workload) -> Shape:
    try:
        return _SHAPES[workload.kind]
    except KeyError:
        raise ValueError(f"workload {workload.name}: no shape is registered for {workload.kind}") from None


def shapes() -> tuple[Shape, ...]:
    return tuple(_SHAPES.values())
