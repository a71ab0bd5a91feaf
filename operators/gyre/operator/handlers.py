"""Registers all five kinds with kopf; every trigger runs the same reconcile pass.

create, update, resume and a timer call `gyre.controllers.base.reconcile`; the status it
returns is compared with the stored one and written once, as a patch of only what changed.
Dependencies are looked up in kopf indexes (kept current by watches), so resolving a
reference costs no API call.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import kopf
from kopf._core.actions.execution import HandlerChildrenRetry

from gyre.api import GROUP, KINDS, VERSION
from gyre.controllers.base import Controller, ObjectMeta, Outcome, reconcile
from gyre.controllers.registry import CONTROLLERS
from gyre.operator import metrics
from gyre.runtimes.base import Runtime

log = logging.getLogger("gyre.operator")

PLURALS = {kind: model.INFO.plural for kind, model in KINDS.items()}
TIMER_INTERVAL_S = 60.0


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
    )


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level status keys whose value changed (a merge patch; removed keys become None)."""
    out = {k: v for k, v in new.items() if old.get(k) != v}
    out.update({k: None for k in old if k not in new and k != "kopf"})
    return out


class Handlers:
    """Holds the runtime and per-object locks; methods are registered as kopf handlers."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # A timer and a change handler of the same object may run at once; reconciles of one
        # object are serialized so the runtime never sees two applies racing.
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def _lookup(self, indexes: Mapping[str, Any]) -> Any:
        def lookup(kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
            index = indexes.get(_index_name(kind)) if kind in PLURALS else None
            if index is None:
                return None
            store = index.get((namespace, name))
            if store is None:
                return None
            for value in store:
                return value  # type: ignore[no-any-return]
            return None

        return lookup

    async def run(
        self,
        kind: str,
        trigger: str,
        body: Mapping[str, Any],
        patch: kopf.Patch,
        retry: int,
        indexes: Mapping[str, Any],
    ) -> Outcome:
        controller: Controller[Any] = CONTROLLERS[kind]
        meta = _meta(kind, body)
        old_status = copy.deepcopy(dict(body.get("status") or {}))
        started = time.perf_counter()
        async with self._locks[meta.owner.key]:
            try:
                outcome = await reconcile(
                    controller,
                    meta,
                    body.get("spec") or {},
                    old_status,
                    self._lookup(indexes),
                    self.runtime,
                    retry=retry,
                )
            except Exception:
                metrics.ERRORS.labels(kind).inc()
                metrics.RECONCILES.labels(kind, trigger, "error").inc()
                raise
            finally:
                metrics.DURATION.labels(kind).observe(time.perf_counter() - started)
        changes = status_patch(old_status, outcome.status)
        if changes:
            for key, value in changes.items():
                patch.status[key] = value
            metrics.STATUS_WRITES.labels(kind).inc()
        result = "invalid" if outcome.permanent_error else ("requeue" if outcome.retry_after else "ok")
        metrics.RECONCILES.labels(kind, trigger, result).inc()
        metrics.WORKLOADS.labels(kind).set(outcome.workloads)
        return outcome


def register(registry: kopf.OperatorRegistry, runtime: Runtime, *, finalizers: bool) -> Handlers:
    """Register every kind's handlers into ``registry``.

    ``finalizers``: add a deletion handler (and so a finalizer) because the runtime keeps
    things outside the cluster (the local runtime's processes). On Kubernetes, owner
    references let the garbage collector remove children, and no finalizer is needed.
    """
    handlers = Handlers(runtime)
    for kind, plural in PLURALS.items():
        _register_kind(registry, handlers, kind, plural, finalizers)
    return handlers


def _register_kind(
    registry: kopf.OperatorRegistry, handlers: Handlers, kind: str, plural: str, finalizers: bool
) -> None:
    async def on_change(body: kopf.Body, patch: kopf.Patch, retry: int, reason: str, **kwargs: Any) -> None:
        outcome = await handlers.run(kind, str(reason), body, patch, retry, kwargs)
        if outcome.permanent_error:
            raise kopf.PermanentError(outcome.permanent_error)
        if outcome.retry_after is not None:
            # Waiting (for a dependency, or for workloads to come up) is normal: retried
            # quietly, without the error log and event a TemporaryError would produce.
            raise HandlerChildrenRetry(delay=outcome.retry_after)

    async def on_timer(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        await handlers.run(kind, "timer", body, patch, 0, kwargs)

    def index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
        md = body.get("metadata", {})
        return {
            (md.get("namespace"), md.get("name")): {
                "spec": copy.deepcopy(dict(body.get("spec") or {})),
                "status": copy.deepcopy(dict(body.get("status") or {})),
            }
        }

    res = (GROUP, VERSION, plural)
    hid = f"reconcile-{plural}"
    kopf.index(*res, id=_index_name(kind), registry=registry)(index)
    kopf.on.resume(*res, id=hid, registry=registry)(on_change)
    kopf.on.create(*res, id=hid, registry=registry)(on_change)
    kopf.on.update(*res, id=hid, registry=registry, field="spec")(on_change)
    kopf.timer(
        *res,
        id=f"timer-{plural}",
        interval=TIMER_INTERVAL_S,
        initial_delay=TIMER_INTERVAL_S,
        registry=registry,
    )(on_timer)
    if finalizers:

        async def on_delete(body: kopf.Body, **_: Any) -> None:
            meta = _meta(kind, body)
            async with handlers._locks[meta.owner.key]:
                await CONTROLLERS[kind].finalize(meta, handlers.runtime)
            handlers._locks.pop(meta.owner.key, None)
            log.info("Stopped the workloads of %s %s/%s", kind, meta.namespace, meta.name)

        kopf.on.delete(*res, id=f"finalize-{plural}", registry=registry)(on_delete)
