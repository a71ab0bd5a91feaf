"""Registers all five kinds with kopf; every trigger runs the same reconcile pass.

create, update and resume call `gyre.controllers.base.reconcile` through kopf handlers, and a
resync loop calls it for every known object at a fixed interval (the periodic trigger that
repairs drift and refreshes observed figures). Two more triggers are the operator's own
timers, one per object: a pass whose work is in progress asks to look again after a while
(``requeue_after``: a training run's progress), and a change to any object the runtime runs
for an owner (a pod started, a Job finished: `Runtime.subscribe`) brings that owner's next
pass forward to `NUDGE_S` from then. Either way, an object has at most one pending timer,
set to the earliest time asked for, so a burst of changes costs one pass. These passes are
not kopf's: they leave kopf's annotations alone and write nothing when nothing changed.

The status a pass returns is compared with the one it started from and written once, as a
merge patch of only what changed, before the object's lock is released; a pass starts from the
status this operator last wrote (the body a trigger carries may predate it), so passes that
race never undo one another's writes. Every pass, whichever trigger ran it, reports its Events through one
`EventRecorder` (deduplicated, rate-limited).

Dependencies are looked up in kopf indexes, kept current by watches: resolving a reference
costs no API call, and handlers start only once the indexes hold every existing object, so a
restart never reports a dependency as missing that merely was not listed yet.

No finalizers: on Kubernetes, owner references let the garbage collector remove children;
the local runtime's processes end with the operator, so nothing outlives a deleted object.
(kopf timers would put a finalizer on every object, and a deletion would then wait for the
operator; the resync loop avoids that.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Protocol

import kopf

from gyre.api import GROUP, KINDS, VERSION
from gyre.controllers.base import (
    Children,
    Controller,
    NoChildren,
    ObjectMeta,
    Outcome,
    ReconcileContext,
    reconcile,
)
from gyre.controllers.registry import CONTROLLERS
from gyre.operator import metrics
from gyre.operator.events import WARNING, Event, EventRecorder, EventWriter, events_for
from gyre.operator.retry import Waiting
from gyre.runtimes.base import Runtime
from gyre.runtimes.k8s_render import label_value

log = logging.getLogger("gyre.operator")

PLURALS = {kind: model.INFO.plural for kind, model in KINDS.items()}
NUDGE_S = 0.5  # after a change to an owner's workloads, its next pass runs within this

Key = tuple[str, str, str]  # (kind, namespace, name)


class Writer(EventWriter, Protocol):
    """Writes to the API server: every pass's status (kopf's patch is not used, so the write
    happens under the object's lock), deletions on request, Events."""

    async def write_status(self, kind: str, namespace: str, name: str, changes: dict[str, Any]) -> None: ...

    async def delete(self, kind: str, namespace: str, name: str) -> None: ...


def _index_name(kind: str) -> str:
    return f"gyre_{PLURALS[kind]}"


def _meta(kind: str, body: Mapping[str, Any]) -> ObjectMeta:
    md = body.get("metadata", {})
    return ObjectMeta(
        kind=kind,
        namespace=md.get("namespace", "default"),
        name=md["name"],
        uid=md.get("uid", ""),
        generation=int(md.get("generation", 0)),
        labels=dict(md.get("labels") or {}),
        annotations=dict(md.get("annotations") or {}),
        created=str(md.get("creationTimestamp") or ""),
    )


def _ready(status: Mapping[str, Any]) -> str | None:
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("status"))
    return None


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level status keys whose value changed (a merge patch; removed keys become None)."""
    out = {k: v for k, v in new.items() if old.get(k) != v}
    out.update({k: None for k in old if k not in new})
    return out


class Handlers:
    """The runtime, per-object locks, the objects seen, and the reconcile entry point."""

    def __init__(self, runtime: Runtime, writer: Writer, children: Children | None = None) -> None:
        self.runtime = runtime
        self.writer = writer
        self.children: Children = children or NoChildren()
        # Change handlers and the resync loop may reach the same object at once; its
        # reconciles are serialized so the runtime never sees two applies racing.
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.objects: dict[tuple[str, str, str], Mapping[str, Any]] = {}  # (kind, ns, name) → body
        self.last_reconciled: dict[tuple[str, str, str], float] = {}
        self.workloads: dict[tuple[str, str, str], int] = {}  # per object, as last applied
        self.applied: dict[tuple[str, str, str], tuple[str, ...]] = {}  # workload names, likewise
        self.events = EventRecorder(writer)
        self.indexes: Mapping[str, Any] = {}
        # uids of deleted objects: a reconcile queued before the deletion must not start
        # their workloads again.
        self.deleted: set[str] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        # The operator's own timers: per object, when its next pass is due, and the handle.
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[Key, int] = defaultdict(int)  # passes in a row that asked to retry
        self._by_label: dict[tuple[str, str, str], Key] = {}  # owner labels → object
        # Per object uid, the status this operator last wrote: a pass starts from it, not from
        # the (possibly older) body its trigger carried, so no pass undoes a newer one's write.
        self._written: dict[str, dict[str, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the operator's own triggers ------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start hearing the runtime's changes (called once the event loop runs)."""
        self._loop = loop
        self.runtime.subscribe(self._on_runtime_change)
        self.children.subscribe(self._on_runtime_change)

    def _on_runtime_change(self, namespace: str, kind: str, name: str) -> None:
        # Called in whichever thread the runtime reports from.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._nudge, namespace, kind, name)

    def _nudge(self, namespace: str, kind: str, name: str) -> None:
        key = self._by_label.get((namespace, kind, name))
        if key is not None:
            self.schedule(key, NUDGE_S, "workloads")

    def schedule(self, key: Key, delay: float, trigger: str) -> None:
        """Run ``key``'s pass after ``delay`` seconds, unless one is due sooner."""
        loop = self._loop or asyncio.get_running_loop()
        due = loop.time() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= due:
                return
            pending[1].cancel()
        self._timers[key] = (due, loop.call_at(due, self._fire, key, trigger))

    def _fire(self, key: Key, trigger: str) -> None:
        self._timers.pop(key, None)
        body = self.objects.get(key)
        if body is not None and self.lookup(*key) is not None:
            self._background(self._reconcile_and_write(key, body, trigger))

    def _forget(self, key: Key) -> None:
        pending = self._timers.pop(key, None)
        if pending is not None:
            pending[1].cancel()
        self._failures.pop(key, None)
        self._by_label.pop((key[1], label_value(key[0]), label_value(key[2])), None)

    def lookup(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        index = self.indexes.get(_index_name(kind)) if kind in PLURALS else None
        if index is None:
            return None
        store = index.get((namespace, name))
        if store is None:
            return None
        for value in store:
            return value  # type: ignore[no-any-return]
        return None

    def listing(self, kind: str, namespace: str) -> list[Mapping[str, Any]]:
        """Every object of ``kind`` in ``namespace`` the index holds, less those being deleted."""
        index = self.indexes.get(_index_name(kind)) if kind in PLURALS else None
        if index is None:
            return []
        out: list[Mapping[str, Any]] = []
        for (ns, _name), store in list(index.items()):
            if ns != namespace:
                continue
            for value in store:
                if (value.get("metadata") or {}).get("uid") not in self.deleted:
                    out.append(value)
                break
        return out

    async def run(
        self, kind: str, trigger: str, body: Mapping[str, Any], retry: int, kopf_retries: bool = False
    ) -> tuple[Outcome, dict[str, Any]]:
        """One reconcile pass, its status written before the object's lock is released (so two
        passes never interleave compute and write); returns the outcome and the changes written.

        ``kopf_retries``: kopf ran it and retries it itself when it asks to (``retry_after``)."""
        controller: Controller[Any] = CONTROLLERS[kind]
        meta = _meta(kind, body)
        started = time.perf_counter()
        async with self._locks[meta.owner.key]:
            old_status = dict(self._written.get(meta.uid) or body.get("status") or {})
            if meta.uid in self.deleted:
                return Outcome(status=old_status), {}
            try:
                ctx = ReconcileContext(self.lookup, self.runtime, self.listing, self.children, retry)
                outcome = await reconcile(controller, meta, body.get("spec") or {}, old_status, ctx)
            except Exception as exc:
                metrics.ERRORS.labels(kind).inc()
                metrics.RECONCILES.labels(kind, trigger, "error").inc()
                self.events.record(meta, [Event(WARNING, "ReconcileError", f"{type(exc).__name__}: {exc}")])
                raise
            finally:
                metrics.DURATION.labels(kind).observe(time.perf_counter() - started)
            changes = status_patch(old_status, outcome.status)
            if changes:
                await self.writer.write_status(kind, meta.namespace, meta.name, changes)
                metrics.STATUS_WRITES.labels(kind).inc()
            self._written[meta.uid] = dict(outcome.status)
        self.last_reconciled[(kind, meta.namespace, meta.name)] = time.monotonic()
        metrics.observe_status(kind, meta.namespace, meta.name, outcome.status)
        result = (
            "invalid"
            if outcome.permanent_error
            else ("requeue" if outcome.retry_after or outcome.requeue_after else "ok")
        )
        metrics.RECONCILES.labels(kind, trigger, result).inc()
        key = (kind, meta.namespace, meta.name)
        self._by_label[(meta.namespace, label_value(kind), label_value(meta.name))] = key
        if outcome.retry_after is not None:
            self._failures[key] += 1
        else:
            self._failures.pop(key, None)
        if outcome.requeue_after is not None:
            self.schedule(key, outcome.requeue_after, "requeue")
        elif outcome.retry_after is not None and not kopf_retries:
            self.schedule(key, outcome.retry_after, "retry")  # kopf retries its own passes
        self.workloads[key] = outcome.workloads
        self._publish_workloads(kind)
        self.events.record(meta, events_for(outcome, self.applied.get(key)))
        if outcome.applied is not None:
            self.applied[key] = outcome.applied
        if outcome.delete_object:
            await self.writer.delete(kind, meta.namespace, meta.name)
            log.info(
                "Deleted %s %s/%s as its spec asks (finished, TTL passed)", kind, meta.namespace, meta.name
            )
        return outcome, changes

    def _publish_workloads(self, kind: str) -> None:
        metrics.WORKLOADS.labels(kind).set(sum(n for k, n in self.workloads.items() if k[0] == kind))

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _nudge_waiting(self, namespace: str, changed: tuple[str, str, str]) -> None:
        for key, body in list(self.objects.items()):
            if key == changed or key[1] != namespace:
                continue
            if (body.get("status") or {}).get("phase") not in ("Waiting", "Invalid"):
                continue
            await self._reconcile_and_write(key, body, "dependency")

    async def _reconcile_and_write(
        self, key: tuple[str, str, str], body: Mapping[str, Any], trigger: str
    ) -> None:
        kind, namespace, name = key
        try:
            await self.run(kind, trigger, body, self._failures.get(key, 0))
        except Exception as exc:  # the next trigger retries
            log.warning("Reconcile (%s) of %s %s/%s failed: %s", trigger, kind, namespace, name, exc)

    async def resync_forever(self, interval: float) -> None:
        """Reconcile every known object once per ``interval``, spread over the interval."""
        while True:
            keys = list(self.objects)
            for kind in PLURALS:
                metrics.OBJECTS.labels(kind).set(sum(1 for k in keys if k[0] == kind))
            pause = interval / max(len(keys), 1)
            if not keys:
                await asyncio.sleep(interval)
            for key in keys:
                await asyncio.sleep(pause)
                kind, namespace, name = key
                if self.lookup(kind, namespace, name) is None:  # deleted: gone from the index
                    gone = self.objects.pop(key, None)
                    self._written.pop(str(((gone or {}).get("metadata") or {}).get("uid")), None)
                    self._forget(key)
                    self.last_reconciled.pop(key, None)
                    self.applied.pop(key, None)
                    if self.workloads.pop(key, None) is not None:
                        self._publish_workloads(kind)
                    continue
                body = self.objects.get(key)
                if body is None or time.monotonic() - self.last_reconciled.get(key, 0) < interval / 2:
                    continue
                await self._reconcile_and_write(key, body, "resync")


def register(
    registry: kopf.OperatorRegistry, runtime: Runtime, writer: Writer, children: Children | None = None
) -> Handlers:
    """Register every kind's handlers into ``registry``."""
    handlers = Handlers(runtime, writer, children)
    for kind, plural in PLURALS.items():
        _register_kind(registry, handlers, kind, plural)
    return handlers


def _register_kind(registry: kopf.OperatorRegistry, handlers: Handlers, kind: str, plural: str) -> None:
    async def on_change(body: kopf.Body, retry: int, reason: str, **kwargs: Any) -> None:
        handlers.indexes = kwargs
        outcome, _ = await handlers.run(kind, str(reason), body, retry, kopf_retries=True)
        if outcome.permanent_error:
            raise kopf.PermanentError(outcome.permanent_error)
        if outcome.retry_after is not None:
            # Waiting (for a dependency, or for workloads to come up) is normal: retried
            # quietly, logged at DEBUG rather than as an error (gyre.operator.retry). Work in
            # progress (requeue_after) is the operator's own timer's, not kopf's.
            raise Waiting(outcome.retry_after)

    async def on_deleted(body: kopf.Body, **kwargs: Any) -> None:
        handlers.indexes = kwargs
        meta = _meta(kind, body)
        handlers.deleted.add(meta.uid)
        async with handlers._locks[meta.owner.key]:
            await CONTROLLERS[kind].finalize(meta, body.get("spec") or {}, handlers.runtime, handlers.listing)
        handlers._locks.pop(meta.owner.key, None)
        handlers._written.pop(meta.uid, None)
        handlers.events.forget(meta.uid)
        handlers.applied.pop((kind, meta.namespace, meta.name), None)
        handlers._forget((kind, meta.namespace, meta.name))
        metrics.forget(kind, meta.namespace, meta.name)
        if handlers.workloads.pop((kind, meta.namespace, meta.name), None) is not None:
            handlers._publish_workloads(kind)
        log.info("Released the workloads of %s %s/%s", kind, meta.namespace, meta.name)

    async def index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
        # Called for every change of every object of the kind: also the resync loop's view.
        md = body.get("metadata", {})
        key = (kind, md.get("namespace", ""), md.get("name", ""))
        previous = handlers.objects.get(key)
        handlers.objects[key] = body
        if previous is not None and _ready(previous.get("status") or {}) != _ready(body.get("status") or {}):
            # Objects waiting in this namespace may be waiting for this one: look at them
            # once this index holds the new state, rather than at their next backoff.
            handlers._background(handlers._nudge_waiting(key[1], key))
        if previous is not None and previous.get("status") != body.get("status"):
            # A Gyre child object (an Experiment's trial) changed: its parent looks at once.
            for ref in md.get("ownerReferences") or []:
                parent = (str(ref.get("kind")), key[1], str(ref.get("name")))
                if str(ref.get("apiVersion", "")).startswith(f"{GROUP}/") and parent in handlers.objects:
                    handlers._background(
                        handlers._reconcile_and_write(parent, handlers.objects[parent], "child")
                    )
        return {
            (md.get("namespace"), md.get("name")): {
                "metadata": {
                    "name": md.get("name"),
                    "uid": md.get("uid"),
                    "creationTimestamp": md.get("creationTimestamp"),
                },
                "spec": body.get("spec"),
                "status": body.get("status"),
            }
        }

    res = (GROUP, VERSION, plural)
    hid = f"reconcile-{plural}"
    kopf.index(*res, id=_index_name(kind), registry=registry)(index)
    kopf.on.resume(*res, id=hid, registry=registry)(on_change)
    kopf.on.create(*res, id=hid, registry=registry)(on_change)
    kopf.on.update(*res, id=hid, registry=registry, field="spec")(on_change)
    # No finalizer (see the module docstring): the workloads are released when the watch
    # reports the object gone. (An optional on.delete handler would not run without one.)
    kopf.on.event(
        *res,
        id=f"release-{plural}",
        registry=registry,
        when=lambda event, **_: event.get("type") == "DELETED",
    )(on_deleted)
