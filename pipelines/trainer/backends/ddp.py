"""torch DDP backend: ``torch.distributed`` with gloo on CPU, NCCL on GPU.

Ranks arrive ``torchrun``-style (``MASTER_ADDR``/``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); the TCPStore lives in the launcher, as it lives in torchrun's agent, so no
worker has to be reachable before the others. ``DistributedDataParallel`` overlaps the
gradient allreduce with backward, so `step` has no separate wait to time and reports 0.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from gyre.pipelines.trainer.backends.base import Backend
from gyre.pipelines.trainer.topology import Slot, build_torch_env
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import Optimizer


class DDPBackend(Backend):
    name = "ddp"

    def init(
        self,
        slot: Slot,
        launcher_host: str,
        launcher_port: int,
        store_port: int | None,
        iface: str | None,
    ) -> None:
        if store_port is None:
            raise RuntimeError("the launcher published no TCPStore port for the ddp backend")
        os.environ.update(build_torch_env(slot, launcher_host, store_port, iface))
        self.rank, self.size, self.local_rank = slot.rank, slot.size, slot.local_rank
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(self.device)
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method="env://",
            rank=slot.rank,
            world_size=slot.size,
            timeout=datetime.timedelta(minutes=5),
        )

    def wrap(self, model: nn.Module, optimizer: Optimizer) -> tuple[nn.Module, Optimizer]:
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids), optimizer

    def broadcast_state(self, model: nn.Module, optimizer: Optimizer) -> None:
        # DDP broadcasts parameters from rank 0 when it wraps the model; optimizer state
        # (after a resume) goes as an object.
        state = self.broadcast_object(optimizer.state_dict() if self.rank == 0 else None)
        optimizer.load_state_dict(state)

    def step(self, optimizer: Optimizer) -> float:
        optimizer.step()
        return 0.0

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=root)
        return box[0]

    def allgather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def allreduce_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    def barrier(self) -> None:
        dist.barrier()

    def shutdown(self) -> None:
        dist.destroy_process_group()

    def unwrap(self, model: nn.Module) -> nn.Module:
        inner: nn.Module = model.module if isinstance(model, DistributedDataParallel) else model
        return inner
