"""Kubernetes Events on Gyre objects: what the operator did and what went wrong.

`events_for` turns one reconcile's `Outcome` into events (pure): a condition that persists in a
bad state (a dependency missing or not ready, a Degraded reason) is reported on every pass, a
transition (Ready, recovered, a dependency resolved, a kind's own milestone such as
TrainingSucceeded) once, and a change in the set of applied workloads once.

`EventLimiter` decides which of them reach the API server, as Kubernetes' own event
correlator does: the same (type, reason, message) on one object is written once and then at
most once per window, the later write updating the first Event's count and lastTimestamp
("x12 over 10m" in `kubectl describe`); and every object has a token bucket, so even a stream
of different messages cannot flood the API server. A retry loop thus yields one Event, whose
count grows slowly.

`EventRecorder` queues the admitted writes and performs them in order in the background: a
reconcile never waits for an Event, and a failed write is logged, never raised.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gyre.api import API_VERSION
from gyre.controllers.base import ObjectMeta, Outcome, Transition
from gyre.core import conditions as cnd

log = logging.getLogger("gyre.operator.events")

NORMAL: Literal["Normal"] = "Normal"
WARNING: Literal["Warning"] = "Warning"
COMPONENT = "gyre-operator"
MAX_MESSAGE = 1024

# Condition types whose change says nothing the other events do not: Progressing follows
# Ready; a TrainingJob's Created is the workloads event, its Failed is Degraded's reason.
QUIET = {cnd.PROGRESSING, "Created", "Failed"}
# Kind-specific condition types that are bad news when they become True.
WARN_WHEN_TRUE = {"Restarting"}


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str  # CamelCase, as the condition reasons
    message: str


def _persisting(conditions: Iterable[Mapping[str, Any]]) -> list[Event]:
    out = []
    for c in conditions:
        bad = (c.get("type") == cnd.DEPENDENCIES_READY and c.get("status") == "False") or (
            c.get("type") == cnd.DEGRADED and c.get("status") == "True"
        )
        if bad:
            out.append(Event(WARNING, str(c.get("reason")), str(c.get("message") or "")))
    return out


def _transition(t: Transition) -> Event | None:
    detail = f"{t.reason}: {t.message}" if t.message else t.reason
    if t.type == cnd.READY:
        if t.status == "True":
            return Event(NORMAL, "Ready", detail)
        if t.was_status == "True":
            return Event(WARNING, "NotReady", detail)
        return None
    if t.type == cnd.DEPENDENCIES_READY:
        # Not ready: a persisting condition, reported by `_persisting`.
        if t.status == "True" and t.was_status == "False":
            return Event(NORMAL, cnd.DEPENDENCIES_RESOLVED, t.message or "dependencies are Ready")
        return None
    if t.type == cnd.DEGRADED:
        if t.status == "False" and t.was_status == "True":
            return Event(NORMAL, "Recovered", f"no longer degraded (was {t.was_reason})")
        return None
    if t.type in QUIET or t.status != "True":
        return None
    return Event(WARNING if t.type in WARN_WHEN_TRUE else NORMAL, t.reason, t.message or f"{t.type} is True")


def events_for(outcome: Outcome, applied_before: tuple[str, ...] | None) -> list[Event]:
    """The events one reconcile pass warrants (``applied_before``: the workloads the previous
    pass applied, None when unknown, as after a restart)."""
    out = _persisting(outcome.status.get("conditions") or [])
    out += [e for e in map(_transition, outcome.transitions) if e is not None]
    applied = outcome.applied
    if applied is not None and applied != applied_before:
        if applied:
            noun = "workload" if len(applied) == 1 else "workloads"
            out.append(
                Event(NORMAL, "WorkloadsApplied", f"Applied {len(applied)} {noun}: {', '.join(applied)}")
            )
        elif applied_before:
            out.append(Event(NORMAL, "WorkloadsRemoved", f"Removed workloads: {', '.join(applied_before)}"))
    return out


@dataclass
class Occurrence:
    """One (object, type, reason, message) as the limiter tracks it."""

    name: str  # the Event object's name
    count: int  # occurrences so far, written or not
    first: str  # RFC 3339 time of the first occurrence
    written_at: float  # limiter clock of the last write
    seen_at: float


@dataclass(frozen=True)
class Write:
    """An admitted write: create the Event or update its count (as of the admission)."""

    create: bool
    occurrence: Occurrence
    count: int


@dataclass
class _Bucket:
    tokens: float
    at: float


ObjectKey = tuple[str, str, str]  # namespace, name, uid


class EventLimiter:
    """Deduplicates and rate-limits events per object (see the module docstring)."""

    def __init__(
        self,
        *,
        window_s: float = 600.0,
        burst: int = 25,
        refill_s: float = 300.0,
        forget_after_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.burst = burst
        self.refill_s = refill_s
        # The API server drops Events after an hour (--event-ttl): older entries would only
        # update an Event that no longer exists.
        self.forget_after_s = forget_after_s
        self.clock = clock
        self._seen: dict[tuple[ObjectKey, str, str, str], Occurrence] = {}
        self._buckets: dict[ObjectKey, _Bucket] = {}
        self._pruned_at = clock()

    def _take(self, obj: ObjectKey, now: float) -> bool:
        b = self._buckets.get(obj)
        if b is None:
            b = self._buckets[obj] = _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) / self.refill_s)
        b.at = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True

    def admit(self, obj: ObjectKey, event: Event) -> Write | None:
        """Count one occurrence of ``event`` on ``obj``; the write to make, if any."""
        now = self.clock()
        self._prune(now)
        key = (obj, event.type, event.reason, event.message)
        occ = self._seen.get(key)
        if occ is not None:
            occ.count += 1
            occ.seen_at = now
            if now - occ.written_at < self.window_s or not self._take(obj, now):
                return None
            occ.written_at = now
            return Write(create=False, occurrence=occ, count=occ.count)
        if not self._take(obj, now):
            return None
        occ = Occurrence(
            name=f"{obj[1]}.{time.time_ns():x}",
            count=1,
            first=cnd.now_rfc3339(),
            written_at=now,
            seen_at=now,
        )
        self._seen[key] = occ
        return Write(create=True, occurrence=occ, count=1)

    def forget(self, uid: str) -> None:
        """Drop what is known about a deleted object."""
        self._seen = {k: v for k, v in self._seen.items() if k[0][2] != uid}
        self._buckets = {k: v for k, v in self._buckets.items() if k[2] != uid}

    def _prune(self, now: float) -> None:
        if now - self._pruned_at < 60.0:
            return
        self._pruned_at = now
        self._seen = {k: v for k, v in self._seen.items() if now - v.seen_at < self.forget_after_s}
        live = {k[0] for k in self._seen}
        self._buckets = {
            k: b for k, b in self._buckets.items() if k in live or now - b.at < self.forget_after_s
        }


class EventWriter(Protocol):
    async def create_event(self, namespace: str, body: dict[str, Any]) -> None: ...

    async def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """Merge-patch an Event; False when it no longer exists."""
        ...


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Admits events through the limiter and writes them, in order, in the background."""

    def __init__(self, writer: EventWriter, limiter: EventLimiter | None = None) -> None:
        self.writer = writer
        self.limiter = limiter or EventLimiter()
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        self._queue: asyncio.Queue[tuple[ObjectMeta, Event, Write]] = asyncio.Queue(maxsize=10000)
        self._worker: asyncio.Task[None] | None = None

    def record(self, meta: ObjectMeta, events: Iterable[Event]) -> None:
        obj = (meta.namespace, meta.name, meta.uid)
        for event in events:
            write = self.limiter.admit(obj, event)
            if write is None:
                continue
            try:
                self._queue.put_nowait((meta, event, write))
            except asyncio.QueueFull:
                log.warning(
                    "Dropped event %s on %s %s/%s: queue full",
                    event.reason,
                    meta.kind,
                    meta.namespace,
                    meta.name,
                )
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._work())

    def forget(self, uid: str) -> None:
        self.limiter.forget(uid)

    async def idle(self) -> None:
        """Wait until every admitted write was attempted."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            meta, event, write = await self._queue.get()
            try:
                await self._write(meta, event, write)
            except Exception as exc:  # Events are best effort; reconciles go on
                log.warning(
                    "Could not record event %s on %s %s/%s: %s",
                    event.reason,
                    meta.kind,
                    meta.namespace,
                    meta.name,
                    exc,
                )
            finally:
                self._queue.task_done()

    async def _write(self, meta: ObjectMeta, event: Event, write: Write) -> None:
        occ = write.occurrence
        now = _now()
        if not write.create:
            patch = {"count": write.count, "lastTimestamp": now}
            if await self.writer.patch_event(meta.namespace, occ.name, patch):
                return
            occ.name = f"{meta.name}.{time.time_ns():x}"  # expired: a new Event, same count
        await self.writer.create_event(meta.namespace, self.body(meta, event, occ, write.count, now))
        log.debug("Recorded event %s on %s %s/%s", event.reason, meta.kind, meta.namespace, meta.name)

    def body(self, meta: ObjectMeta, event: Event, occ: Occurrence, count: int, now: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": occ.name,
                "namespace": meta.namespace,
                "labels": {"app.kubernetes.io/managed-by": "gyre"},
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": meta.kind,
                "namespace": meta.namespace,
                "name": meta.name,
                "uid": meta.uid,
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:MAX_MESSAGE],
            "count": count,
            "firstTimestamp": occ.first,
            "lastTimestamp": now,
            "source": {"component": COMPONENT},
            "reportingComponent": f"gyre.dev/{COMPONENT}",
            "reportingInstance": self.instance,
        }
