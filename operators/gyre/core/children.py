"""Child objects: API objects other than workloads that a reconcile declares and owns.

A controller may want, beside its workloads, any object of the API: a `SparkApplication`, a
KServe `InferenceService`, an `autoscaling/v2` HPA, a Gyre `TrainingJob` that is a trial of
an Experiment. It declares them as `ChildObject`s (pure data); the operator applies them
server-side under the one field manager with an owner reference to the parent and the owner
labels, prunes by label the ones of the controller's `child_kinds` it no longer wants, and
hands their stored status back to the parent's `compute_status` as `ChildState`. A controller
that decides its children from the ones that exist (`Controller.reads_children`: an
Experiment's next trial) gets them read from the API server before it builds. A parent is
reconciled again when one of its children's status changes.

Kinds outside Gyre's API group are used only when the cluster serves them (discovery): a
builder asks `served(kind)` and falls back to plain workloads otherwise, saying in status
which path it took. Gyre child objects live in the API server whichever runtime runs the
workloads. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChildKind:
    """A namespaced resource type children may have."""

    api_version: str  # "v1", "autoscaling/v2", "sparkoperator.k8s.io/v1beta2"
    kind: str
    plural: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]


@dataclass(frozen=True)
class ChildObject:
    """One object the parent wants to exist, exactly as given (apply is declarative: fields
    left out are removed from what Gyre manages)."""

    type: ChildKind
    name: str  # deterministic; unique per type within the parent's namespace
    body: Mapping[str, Any]  # the object less apiVersion, kind and metadata.name/namespace
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.type.kind, self.name)


@dataclass(frozen=True)
class ChildState:
    """A child as the API server stores it, seen by the parent's next `compute_status`."""

    type: ChildKind
    name: str
    uid: str
    generation: int
    status: Mapping[str, Any]
    annotations: Mapping[str, str] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.type.kind, self.name)
