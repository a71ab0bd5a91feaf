"""The operator's own triggers (`gyre.operator.handlers`): a burst of changes to an owner's
workloads runs one pass, the earliest timer asked for wins, and a pass kopf did not run retries
on its own timer with a growing backoff."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gyre.core.workload import Owner
from gyre.operator.handlers import NUDGE_S, Handlers
from gyre.runtimes.local import LocalRuntime

# A TrainingJob whose Stream does not exist: every pass asks to be retried (backoff 1 s, 2 s, ...).
SPEC = {
    "dataset": {"stream": "clicks", "label": "y", "features": ["x"]},
    "output": {"uri": "file:///tmp/models"},
}


class Writes:
    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        pass

    async def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        return True

    async def write_status(self, kind: str, namespace: str, name: str, changes: dict[str, Any]) -> None:
        pass

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        pass


def test_a_burst_of_changes_runs_one_pass_then_retries_back_off(tmp_path: Path) -> None:
    passes: list[tuple[str, float]] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()
        async with LocalRuntime(tmp_path) as rt:
            handlers = Handlers(rt, Writes())
            handlers.attach(loop)
            key = ("TrainingJob", "ns", "job")
            body = {
                "metadata": {"name": "job", "namespace": "ns", "uid": "u1", "generation": 1},
                "spec": SPEC,
            }
            handlers.objects[key] = body
            handlers.indexes = {"gyre_trainingjobs": {("ns", "job"): [body]}}
            real = handlers.run

            async def counting(
                kind: str, trigger: str, body: Any, retry: int, kopf_retries: bool = False
            ) -> Any:
                passes.append((trigger, loop.time()))
                return await real(kind, trigger, body, retry, kopf_retries)

            handlers.run = counting  # type: ignore[method-assign]
            await handlers._reconcile_and_write(key, body, "resync")  # retry timer: 1 s
            start = loop.time()
            owner = Owner(kind="TrainingJob", namespace="ns", name="job", uid="u1")
            for _ in range(20):  # what a Job and its pods starting report
                rt._changed(owner)
            await asyncio.sleep(NUDGE_S + 2.8)
            passes[:] = [(t, at - start) for t, at in passes]

    asyncio.run(go())
    triggers = [t for t, _ in passes]
    # One pass for the whole burst, before the 1 s retry it replaced; then the retry, 2 s
    # after it (the second failure in a row: the backoff grows).
    assert triggers[:3] == ["resync", "workloads", "retry"], passes
    assert passes[1][1] < 1.0, passes
    assert 1.8 <= passes[2][1] - passes[1][1] < 2.6, passes
    assert len(passes) == 3, passes


def test_racing_passes_write_in_turn_and_never_undo_each_other(tmp_path: Path) -> None:
    """Two passes triggered by the same (stale) body: the second waits for the first's status
    write, starts from it, and writes nothing (it found nothing new)."""
    log: list[tuple[str, dict[str, Any]]] = []

    class SlowWrites(Writes):
        async def write_status(self, kind: str, namespace: str, name: str, changes: dict[str, Any]) -> None:
            log.append(("write-start", changes))
            await asyncio.sleep(0.3)  # a slow API server: the other pass is ready meanwhile
            log.append(("write-end", changes))

    async def go() -> None:
        async with LocalRuntime(tmp_path) as rt:
            handlers = Handlers(rt, SlowWrites())
            handlers.attach(asyncio.get_running_loop())
            key = ("TrainingJob", "ns", "job")
            body = {
                "metadata": {"name": "job", "namespace": "ns", "uid": "u1", "generation": 1},
                "spec": SPEC,
            }
            handlers.objects[key] = body
            handlers.indexes = {"gyre_trainingjobs": {("ns", "job"): [body]}}
            await asyncio.gather(
                handlers._reconcile_and_write(key, body, "resync"),
                handlers._reconcile_and_write(key, body, "workloads"),
            )

    asyncio.run(go())
    assert [what for what, _ in log] == ["write-start", "write-end"], log
    written = log[0][1]
    assert written["phase"] == "Waiting"
    assert written["observedGeneration"] == 1
