"""Horovod backend: ring-allreduce over gloo on CPU, NCCL on GPU.

Ranks come from the ``HOROVOD_*`` environment ``horovodrun --gloo`` would set, derived from
the worker's slot; ``hvd.init()`` forms the rings through the launcher's rendezvous server.
Gradients are averaged by ``hvd.DistributedOptimizer``, which starts each tensor's allreduce
as soon as backward produces it; `step` waits for them (``synchronize``) and times that wait.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from gyre.pipelines.trainer.backends.base import Backend
from gyre.pipelines.trainer.topology import Slot, build_horovod_env
from torch import nn
from torch.optim.optimizer import Optimizer


class HorovodBackend(Backend):
    name = "horovod"
    _calls = 0  # names collective object calls alike on every rank (they run in step)

    def init(
        self,
        slot: Slot,
        launcher_host: str,
        launcher_port: int,
        store_port: int | None,
        iface: str | None,
    ) -> None:
        os.environ.update(build_horovod_env(slot, launcher_host, launcher_port, iface))
        # HOROVOD_CYCLE_TIME stays Horovod's own 1 ms (an operator may still set it). Every
        # cycle of Horovod's background thread coordinates all ranks with a small allreduce,
        # busy or idle, and a synchronous collective waits for the next cycle, so one
        # allreduce costs at least a cycle. `gyre bench train`, 2 ranks on 2 idle cores:
        # a 1 KiB allreduce takes 1.07 ms at 1 ms, 0.62 ms at 0.1 ms (torch gloo: 0.62),
        # 5.1 ms at 5 ms; but training gets 62k samples/s at 1 ms, 53k at 0.3 ms and 49k at
        # 0.1 ms, because the faster cycles take the CPU the ranks compute with (CPU per
        # step 8.2, 9.5, 10.4 ms). Where cores are few, 1 ms is the better trade.
        import horovod.torch as hvd

        self.hvd = hvd
        hvd.init()
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        if torch.cuda.is_available():
            torch.cuda.set_device(self.device)

    def wrap(self, model: nn.Module, optimizer: Optimizer) -> tuple[nn.Module, Optimizer]:
        dist_opt = self.hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), op=self.hvd.Average
        )
        return model, dist_opt

    def broadcast_state(self, model: nn.Module, optimizer: Optimizer) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def step(self, optimizer: Optimizer) -> float:
        start = time.perf_counter()
        optimizer.synchronize()  # type: ignore[attr-defined]
        waited = time.perf_counter() - start
        with optimizer.skip_synchronize():  # type: ignore[attr-defined]
            optimizer.step()
        return waited

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        # an explicit name: Horovod's default is the object's type name, which differs
        # between the root (a dict) and the receivers (None) and leaves them waiting forever
        self._calls += 1
        return self.hvd.broadcast_object(obj, root_rank=root, name=f"gyre.bcast.{self._calls}")

    def allgather_object(self, obj: Any) -> list[Any]:
        self._calls += 1
        result: list[Any] = self.hvd.allgather_object(obj, name=f"gyre.gather.{self._calls}")
        return result

    def allreduce_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        out = self.hvd.allreduce(t, op=self.hvd.Sum, name="gyre.metrics")
        return [float(v) for v in out.tolist()]

    def barrier(self) -> None:
        self.hvd.barrier()

    def shutdown(self) -> None:
        self.hvd.shutdown()
