"""The interface every runtime implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gyre.core.workload import Owner, Workload, WorkloadStatus

OwnerListener = Callable[[str, str, str], None]
"""``(namespace, owner kind, owner name)`` of an owner whose workloads changed; kind and name
as their labels spell them (`gyre.runtimes.k8s_render.label_value`)."""


class Runtime(Protocol):
    name: str

    async def apply(self, owner: Owner, workloads: Sequence[Workload]) -> None:
        """Converge the owner's workloads to exactly ``workloads``.

        Creates what is missing, updates what drifted, prunes what the owner no longer
        wants. Idempotent: applying the same list twice changes nothing.
        """
        ...

    async def observe(self, owner: Owner) -> dict[str, WorkloadStatus]:
        """The state of each of the owner's workloads, by workload name."""
        ...

    async def delete(self, owner: Owner) -> None:
        """Stop and remove everything the owner has (used when the resource is deleted)."""
        ...

    async def read_status(self, owner: Owner, workload: Workload) -> list[dict[str, Any]]:
        """What the workload's replicas serve on ``GET /status`` at ``workload.status_port``,
        one JSON object per replica that answered, in replica order.

        Empty when the workload declares no status port or no replica answers (not started
        yet, or gone). Controllers parse each with the workload's `StatusDoc` model.
        """
        ...

    def subscribe(self, listener: OwnerListener) -> None:
        """Call ``listener`` whenever something of an owner's workloads changes (a replica
        started, became ready, exited): the owner then reconciles without waiting for a timer.
        It may be called from another thread, and more than once per change."""
        ...

    def endpoint(self, owner: Owner, workload: str, port: str) -> str | None:
        """``host:port`` at which a workload's port is reached from the operator and clients."""
        ...

    async def close(self) -> None:
        """Release what the runtime holds (the local runtime stops its processes)."""
        ...
