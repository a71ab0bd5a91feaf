"""Distributed-training backends by name; each lives in its own module and imports lazily."""

from __future__ import annotations

from gyre.pipelines.trainer.backends.base import Backend

BACKENDS = ("horovod", "ddp")


def get_backend(name: str) -> Backend:
    # imported on demand: the ddp backend must not need Horovod installed, and vice versa
    if name == "horovod":
        from gyre.pipelines.trainer.backends.horovod import HorovodBackend

        return HorovodBackend()
    if name == "ddp":
        from gyre.pipelines.trainer.backends.ddp import DDPBackend

        return DDPBackend()
    raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "get_backend"]
