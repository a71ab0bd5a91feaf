"""The interface a distributed-training backend implements (one module per framework).

The worker's training loop is written once against `Backend`; a backend only knows how to
join its collective group, wrap the model and optimizer, synchronise gradients, and move
small Python objects between ranks.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from gyre.pipelines.trainer.topology import Slot
from torch import nn
from torch.optim.optimizer import Optimizer


class Backend(abc.ABC):
    name: ClassVar[str]

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @abc.abstractmethod
    def init(
        self,
        slot: Slot,
        launcher_host: str,
        launcher_port: int,
        store_port: int | None,
        iface: str | None,
    ) -> None:
        """Join the collective group described by ``slot`` (blocks until every rank joined)."""

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    @abc.abstractmethod
    def wrap(self, model: nn.Module, optimizer: Optimizer) -> tuple[nn.Module, Optimizer]:
        """The model and optimizer to train with: gradients are averaged over all ranks."""

    @abc.abstractmethod
    def broadcast_state(self, model: nn.Module, optimizer: Optimizer) -> None:
        """Make every rank start from rank 0's parameters and optimizer state."""

    @abc.abstractmethod
    def step(self, optimizer: Optimizer) -> float:
        """Apply the averaged gradients; returns seconds spent waiting for the allreduce."""

    @abc.abstractmethod
    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """``obj`` from ``root`` on every rank (pickled)."""

    @abc.abstractmethod
    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""

    @abc.abstractmethod
    def allreduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks of a short list of floats (metrics)."""

    @abc.abstractmethod
    def barrier(self) -> None: ...

    @abc.abstractmethod
    def shutdown(self) -> None: ...

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain module inside whatever `wrap` returned (for checkpoints and artifacts)."""
        return model
