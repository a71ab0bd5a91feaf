"""Events: which a reconcile warrants, which the limiter lets through, and that every path posts.

The limiter runs on an injected clock; the reconcile passes are real (`gyre.controllers.base`
with the local runtime), and the resync path is the operator's own `Handlers`, writing into
an in-memory event store in place of the API server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from gyre.controllers.base import (
    ObjectMeta,
    Outcome,
    ReconcileContext,
    Transition,
    condition_transitions,
    reconcile,
)
from gyre.controllers.registry import CONTROLLERS
from gyre.operator.events import (
    NORMAL,
    WARNING,
    Event,
    EventLimiter,
    EventRecorder,
    events_for,
)
from gyre.operator.handlers import Handlers
from gyre.runtimes.local import LocalRuntime

OBJ = ("ns", "job", "uid-1")
MISSING = Event(WARNING, "DependencyMissing", "Stream 'clicks' (spec.dataset.stream) does not exist")
TRAININGJOB = {
    "dataset": {"stream": "clicks", "label": "churned"},
    "output": {"uri": "file:///tmp/gyre-test/models"},
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_same_event_is_written_once_per_window_and_then_aggregated() -> None:
    clock = Clock()
    limiter = EventLimiter(window_s=600, burst=25, refill_s=300, clock=clock)
    first = limiter.admit(OBJ, MISSING)
    assert first is not None
    assert (first.create, first.count) == (True, 1)
    # A retry loop: every 10 s for 9 minutes, nothing more is written.
    for _ in range(54):
        clock.now += 10
        assert limiter.admit(OBJ, MISSING) is None
    clock.now += 70  # past the window: one update of the same Event, counting every occurrence
    again = limiter.admit(OBJ, MISSING)
    assert again is not None
    assert (again.create, again.count) == (False, 56)
    assert again.occurrence.name == first.occurrence.name
    clock.now += 10
    assert limiter.admit(OBJ, MISSING) is None


def test_other_messages_and_other_objects_are_separate() -> None:
    limiter = EventLimiter(clock=Clock())
    assert limiter.admit(OBJ, MISSING) is not None
    other = Event(WARNING, "DependencyMissing", "Stream 'views' (spec.dataset.stream) does not exist")
    assert limiter.admit(OBJ, other) is not None
    assert limiter.admit(("ns", "job2", "uid-2"), MISSING) is not None
    assert limiter.admit(OBJ, Event(NORMAL, "Ready", "WorkloadsReady")) is not None


def test_a_flood_of_different_messages_is_bounded_per_object() -> None:
    clock = Clock()
    limiter = EventLimiter(window_s=600, burst=5, refill_s=60, clock=clock)
    written = sum(
        limiter.admit(OBJ, Event(WARNING, "RuntimeError", f"attempt {i}")) is not None for i in range(100)
    )
    assert written == 5
    # Another object has its own bucket.
    assert limiter.admit(("ns", "other", "uid-3"), MISSING) is not None
    # Tokens come back one per refill period.
    clock.now += 120
    written = sum(
        limiter.admit(OBJ, Event(WARNING, "RuntimeError", f"later {i}")) is not None for i in range(100)
    )
    assert written == 2


def test_forget_starts_a_deleted_object_over() -> None:
    limiter = EventLimiter(clock=Clock())
    assert limiter.admit(OBJ, MISSING) is not None
    assert limiter.admit(OBJ, MISSING) is None
    limiter.forget("uid-1")
    write = limiter.admit(OBJ, MISSING)
    assert write is not None
    assert write.create


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def test_transitions_are_flips_and_new_reasons_not_new_messages() -> None:
    old = [cond("Ready", "False", "Training", "step 1"), cond("Running", "True", "GangRunning", "step 1")]
    new = [
        cond("Ready", "False", "Training", "step 2"),
        cond("Running", "False", "TrainingSucceeded"),
        cond("Succeeded", "True", "TrainingSucceeded", "model job-g1"),
    ]
    assert condition_transitions(old, new) == (
        Transition("Running", "False", "TrainingSucceeded", "", "True", "GangRunning"),
        Transition("Succeeded", "True", "TrainingSucceeded", "model job-g1", None, None),
    )


@pytest.mark.parametrize(
    ("was", "now", "expected"),
    [
        # Became Ready.
        (None, cond("Ready", "True", "ModelAvailable", "artifact at x"),
         [(NORMAL, "Ready", "ModelAvailable: artifact at x")]),
        (("True", "WorkloadsReady"), cond("Ready", "False", "WorkloadsStarting", "collector 0/1"),
         [(WARNING, "NotReady", "WorkloadsStarting: collector 0/1")]),
        # Not Ready and never was: the other conditions say why.
        (("False", "Training"), cond("Ready", "False", "WorkloadsStarting"), []),
        (("False", "DependencyMissing"),
         cond("DependenciesReady", "True", "DependenciesResolved", "Stream x Ready"),
         [(NORMAL, "DependenciesResolved", "Stream x Ready")]),
        (("True", "RuntimeError"), cond("Degraded", "False", "AsExpected"),
         [(NORMAL, "Recovered", "no longer degraded (was RuntimeError)")]),
        (("False", "Training"), cond("Succeeded", "True", "TrainingSucceeded", "model m-g1"),
         [(NORMAL, "TrainingSucceeded", "model m-g1")]),
        (("False", "NoRestart"), cond("Restarting", "True", "GangRestarting", "restart 1 of backoffLimit 3"),
         [(WARNING, "GangRestarting", "restart 1 of backoffLimit 3")]),
        (None, cond("Progressing", "True", "Training"), []),
        (None, cond("Created", "True", "WorkloadsCreated"), []),
    ],
)  # fmt: skip
def test_which_transitions_become_events(
    was: tuple[str, str] | None, now: dict[str, Any], expected: list[tuple[str, str, str]]
) -> None:
    t = Transition(now["type"], now["status"], now["reason"], now["message"], *(was or (None, None)))
    outcome = Outcome(status={"conditions": [now]}, transitions=(t,))
    assert [(e.type, e.reason, e.message) for e in events_for(outcome, None)] == expected


def test_bad_states_are_reported_on_every_pass_for_the_limiter_to_aggregate() -> None:
    conditions = [
        cond("DependenciesReady", "False", "DependencyMissing", "Stream 'clicks' does not exist"),
        cond("Degraded", "True", "InvalidSpec", "spec.workers: too many"),
        cond("Ready", "False", "DependencyMissing"),
    ]
    events = events_for(Outcome(status={"conditions": conditions}), None)
    assert [(e.type, e.reason) for e in events] == [(WARNING, "DependencyMissing"), (WARNING, "InvalidSpec")]


def test_applied_workloads_are_reported_when_they_change() -> None:
    def applied(now: tuple[str, ...] | None, before: tuple[str, ...] | None) -> list[str]:
        return [e.message for e in events_for(Outcome(status={}, applied=now), before)]

    assert applied(("launcher", "worker"), None) == ["Applied 2 workloads: launcher, worker"]
    assert applied(("launcher", "worker"), ("launcher", "worker")) == []
    assert applied(("collector",), ("collector", "sink-lake")) == ["Applied 1 workload: collector"]
    assert applied((), ("launcher", "worker")) == ["Removed workloads: launcher, worker"]
    assert applied(None, ("launcher", "worker")) == []  # the pass stopped before applying


class EventStore:
    """Stands in for the API server's events: what was created, and patches by name."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        assert body["metadata"]["name"] not in self.events
        self.events[body["metadata"]["name"]] = body

    async def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        if name not in self.events:
            return False
        self.events[name].update(patch)
        return True

    async def write_status(self, kind: str, namespace: str, name: str, changes: dict[str, Any]) -> None:
        pass

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        pass


def _body(kind: str, name: str, spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    md = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1}
    return {"metadata": md, "spec": spec, "status": status or {}}


def test_the_resync_path_posts_events_once_however_often_it_runs(tmp_path: Path) -> None:
    """The periodic resync (not only kopf's handlers) records events, through the same limiter."""
    store = EventStore()

    async def go() -> None:
        async with LocalRuntime(tmp_path) as rt:
            handlers = Handlers(rt, store)
            key = ("TrainingJob", "ns", "job")
            body = _body("TrainingJob", "job", TRAININGJOB)
            for _ in range(5):  # the stored status never catches up: worst case for duplicates
                await handlers._reconcile_and_write(key, body, "resync")
            await handlers.events.idle()

    asyncio.run(go())
    events = list(store.events.values())
    assert [(e["type"], e["reason"], e["count"]) for e in events] == [(WARNING, "DependencyMissing", 1)]
    ev = events[0]
    assert ev["message"] == "Stream 'clicks' (spec.dataset.stream) does not exist in namespace ns"
    assert ev["involvedObject"] == {
        "apiVersion": "gyre.dev/v1alpha1",
        "kind": "TrainingJob",
        "namespace": "ns",
        "name": "job",
        "uid": "uid-job",
    }
    assert ev["source"] == {"component": "gyre-operator"}


def test_an_expired_event_is_created_again_with_its_count(tmp_path: Path) -> None:
    store = EventStore()
    clock = Clock()
    meta = ObjectMeta(kind="TrainingJob", namespace="ns", name="job", uid="uid-job", generation=1)

    async def go() -> None:
        recorder = EventRecorder(store, EventLimiter(window_s=60, clock=clock))
        recorder.record(meta, [MISSING])
        await recorder.idle()
        store.events.clear()  # the API server's event TTL passed
        clock.now += 61
        recorder.record(meta, [MISSING])
        await recorder.idle()

    asyncio.run(go())
    assert [(e["reason"], e["count"]) for e in store.events.values()] == [("DependencyMissing", 2)]


def test_a_real_pass_whose_dependency_appeared_reports_it_resolved(tmp_path: Path) -> None:
    """A FeatureJob whose Stream exists and is Ready: the dependency resolves (Normal event)."""

    async def go() -> Outcome:
        fields = [{"name": "user_id"}, {"name": "ts"}]
        stream = {
            "spec": {"topic": {"retention": "60d"}, "schema": {"fields": fields}},
            "status": {"conditions": [cond("Ready", "True", "WorkloadsReady")]},
        }
        spec = {
            "source": {"stream": "clicks"},
            "entity": "user_id",
            "timestampField": "ts",
            "features": [{"name": "n", "aggregation": "count"}],
            "offline": {"uri": "file:///tmp/gyre-test/features"},
        }
        old = {
            "conditions": [cond("DependenciesReady", "False", "DependencyMissing", "Stream 'clicks' missing")]
        }
        meta = ObjectMeta(kind="FeatureJob", namespace="ns", name="f", uid="uid-f", generation=1)
        async with LocalRuntime(tmp_path) as rt:
            ctx = ReconcileContext(lambda *_: stream, rt)
            return await reconcile(CONTROLLERS["FeatureJob"], meta, spec, old, ctx)

    events = events_for(asyncio.run(go()), None)
    assert (NORMAL, "DependenciesResolved") in [(e.type, e.reason) for e in events]
    assert not [e for e in events if e.type == WARNING]
