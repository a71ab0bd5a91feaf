"""The interface every runtime implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gyre.core.workload import Owner, Workload, WorkloadStatus


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

    def endpoint(self, owner: Owner, workload: str, port: str) -> str | None:
        """``host:port`` at which a workload's port is reached from the operator and clients."""
        ...

    async def close(self) -> None:
        """Release what the runtime holds (the local runtime stops its processes)."""
        ...
