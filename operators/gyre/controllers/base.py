"""One reconcile pass, the same for every kind.

parse the spec into its typed model → resolve references to other Gyre objects → check
cross-resource rules → build the desired workloads (pure) → apply them through the runtime →
observe → compute status. The caller (the kopf layer) writes the status once, if it changed.
Level-triggered: every trigger (create, update, resume, timer) runs this same pass, and it is
safe to repeat after a crash because every child has a deterministic name.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import ValidationError

from gyre.api._base import BaseStatus, Kind
from gyre.core import conditions as cnd
from gyre.core.children import ChildKind, ChildObject, ChildState
from gyre.core.workload import Owner, Workload, WorkloadStatus
from gyre.runtimes.base import OwnerListener, Runtime

log = logging.getLogger("gyre.controllers")

S = TypeVar("S", bound=Kind)
K = TypeVar("K", bound=Kind)
B = TypeVar("B", bound=BaseStatus)


@dataclass(frozen=True)
class ObjectMeta:
    kind: str
    namespace: str
    name: str
    uid: str
    generation: int
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    created: str = ""  # metadata.creationTimestamp (RFC 3339, so it sorts as text)

    @property
    def owner(self) -> Owner:
        return Owner(kind=self.kind, namespace=self.namespace, name=self.name, uid=self.uid)


@dataclass(frozen=True)
class Ref:
    """A reference from one Gyre object to another in the same namespace."""

    kind: str
    name: str
    field: str  # the spec path that names it, for messages: "spec.source.stream"


@dataclass(frozen=True)
class Resolved:
    """A reference and what the lookup found (``None`` when the object does not exist)."""

    ref: Ref
    body: Mapping[str, Any] | None

    @property
    def found(self) -> bool:
        return self.body is not None

    @property
    def status(self) -> Mapping[str, Any]:
        return (self.body or {}).get("status") or {}

    @property
    def spec(self) -> Mapping[str, Any]:
        return (self.body or {}).get("spec") or {}

    @property
    def ready(self) -> bool:
        return cnd.is_true(self.status.get("conditions"), cnd.READY)

    def spec_as(self, model: type[K]) -> K | None:
        """The dependency's spec through its kind's model, defaults included (None: absent,
        or a spec the API server let through that the model rejects)."""
        if self.body is None:
            return None
        try:
            return model.model_validate(dict(self.spec))
        except ValidationError:
            return None

    def status_as(self, model: type[B]) -> B:
        """What the dependency published in its status, through its kind's Status model."""
        try:
            return model.model_validate(dict(self.status))
        except ValidationError:
            return model()

    def describe(self) -> str:
        return f"{self.ref.kind} {self.ref.name!r} ({self.ref.field})"


class Children(Protocol):
    """Applies a parent's child objects (`gyre.core.children`) and reads them back."""

    async def served(self, kinds: Sequence[ChildKind]) -> frozenset[ChildKind]:
        """Which of ``kinds`` the cluster serves (discovery)."""
        ...

    async def apply(
        self, owner: Owner, kinds: Sequence[ChildKind], wanted: Sequence[ChildObject]
    ) -> dict[tuple[str, str], ChildState]:
        """Converge the owner's children of ``kinds`` to exactly ``wanted``; their states."""
        ...

    async def list(self, owner: Owner, kinds: Sequence[ChildKind]) -> dict[tuple[str, str], ChildState]:
        """The owner's children of ``kinds`` as the API server stores them now."""
        ...

    def subscribe(self, listener: OwnerListener) -> None:
        """Call ``listener`` whenever a served child's status changes or a child is deleted
        (Gyre kinds excepted: the operator watches those itself)."""
        ...


class NoChildren:
    """Where no API server holds objects (unit tests of workload-only kinds)."""

    async def served(self, kinds: Sequence[ChildKind]) -> frozenset[ChildKind]:
        return frozenset()

    async def apply(
        self, owner: Owner, kinds: Sequence[ChildKind], wanted: Sequence[ChildObject]
    ) -> dict[tuple[str, str], ChildState]:
        if wanted:
            raise RuntimeError(f"{owner.key} declares child objects, but no API server is connected")
        return {}

    async def list(self, owner: Owner, kinds: Sequence[ChildKind]) -> dict[tuple[str, str], ChildState]:
        return {}

    def subscribe(self, listener: OwnerListener) -> None:
        pass


class Lookup(Protocol):
    def __call__(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None: ...


class Listing(Protocol):
    """Every live object of a kind in a namespace: bodies with ``metadata`` (``name``, ``uid``,
    ``creationTimestamp``), ``spec`` and ``status`` (for workloads several objects share)."""

    def __call__(self, kind: str, namespace: str) -> list[Mapping[str, Any]]: ...


def no_listing(kind: str, namespace: str) -> list[Mapping[str, Any]]:
    return []


@dataclass(frozen=True)
class StatusInput:
    """Everything `compute_status` may look at."""

    meta: ObjectMeta
    old_status: Mapping[str, Any]
    deps: Mapping[str, Resolved]
    workloads: Sequence[Workload]
    observed: Mapping[str, WorkloadStatus]
    facts: Any  # what `converge` learned: the kind's own typed facts (e.g. `StreamFacts`)
    children: Mapping[tuple[str, str], ChildState] = field(default_factory=dict)  # by (kind, name)
    served: frozenset[ChildKind] = frozenset()  # the child kinds the cluster serves


@dataclass(frozen=True)
class StatusOutput:
    status: BaseStatus  # the kind's Status model, with the fields this pass decided set
    conditions: Sequence[cnd.Cond]
    phase: str
    remove: Sequence[str] = ()  # fields of the Status model to remove unless set (a new run)
    requeue_after: float | None = None  # look again soon (work in progress)
    delete_object: bool = False  # the object asks to be deleted (e.g. a TTL after finishing)


@dataclass(frozen=True)
class Transition:
    """A condition this pass changed: a new one, a flipped status, or a new reason."""

    type: str
    status: str  # "True", "False" or "Unknown", now
    reason: str
    message: str
    was_status: str | None = None  # before this pass; None: the condition is new
    was_reason: str | None = None


def condition_transitions(
    old: Sequence[Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]]
) -> tuple[Transition, ...]:
    """The conditions of ``new`` whose status or reason differs from ``old`` (a message
    alone changing is no transition: progress messages change on every pass)."""
    before = {c.get("type"): c for c in old or []}
    out: list[Transition] = []
    for c in new:
        prev = before.get(c.get("type"))
        if (
            prev is not None
            and prev.get("status") == c.get("status")
            and prev.get("reason") == c.get("reason")
        ):
            continue
        out.append(
            Transition(
                type=str(c.get("type")),
                status=str(c.get("status")),
                reason=str(c.get("reason")),
                message=str(c.get("message") or ""),
                was_status=None if prev is None else str(prev.get("status")),
                was_reason=None if prev is None else str(prev.get("reason")),
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class Outcome:
    status: dict[str, Any]
    retry_after: float | None = None  # waiting on something outside this object (backoff)
    requeue_after: float | None = None  # work in progress: look again after this
    permanent_error: str | None = None  # the spec cannot work as written
    workloads: int = 0
    delete_object: bool = False
    transitions: tuple[Transition, ...] = ()  # conditions this pass changed, for events
    applied: tuple[str, ...] | None = None  # names of the workloads applied; None: none applied


class Controller(abc.ABC, Generic[S]):
    """What a kind adds to the shared reconcile pass."""

    kind: ClassVar[str]
    spec_model: ClassVar[type[Kind]]
    child_kinds: ClassVar[tuple[ChildKind, ...]] = ()
    """Every type of child object this kind may declare: what pruning looks at."""
    reads_children: ClassVar[bool] = False
    """True: `build_children` decides from the children that exist, read from the API server
    at the start of each pass (the API server, not the operator's memory, is what they are)."""

    def references(self, spec: S) -> list[Ref]:
        return []

    def check(self, meta: ObjectMeta, spec: S, deps: Mapping[str, Resolved]) -> list[str]:
        """Cross-resource rules the API server cannot check; each problem is one sentence."""
        return []

    async def prepare(
        self,
        meta: ObjectMeta,
        spec: S,
        status: Mapping[str, Any],
        runtime: Runtime,
        listing: Listing,
    ) -> Any:
        """Before `build`: converge what this object shares with others (a Kafka cluster
        several Streams use). Returns the kind's typed facts, which `build` and `converge`
        see (None: nothing to prepare)."""
        return None

    def build(
        self,
        meta: ObjectMeta,
        spec: S,
        deps: Mapping[str, Resolved],
        status: Mapping[str, Any],
        prepared: Any,
        *,
        served: frozenset[ChildKind] = frozenset(),
    ) -> list[Workload]:
        """The workloads wanted now (``status``: the stored status, for lifecycle decisions;
        ``prepared``: what `prepare` returned; ``served``: the `child_kinds` the cluster
        serves, for builders that fall back to workloads where a child kind is missing)."""
        return []

    def build_children(
        self,
        meta: ObjectMeta,
        spec: S,
        deps: Mapping[str, Resolved],
        status: Mapping[str, Any],
        prepared: Any,
        *,
        served: frozenset[ChildKind] = frozenset(),
        children: Mapping[tuple[str, str], ChildState] | None = None,
    ) -> list[ChildObject]:
        """The child objects wanted now, of `child_kinds` (only served ones may be used);
        ``children``: those that exist, by (kind, name), for a controller that `reads_children`."""
        return []

    async def converge(
        self,
        meta: ObjectMeta,
        spec: S,
        deps: Mapping[str, Resolved],
        runtime: Runtime,
        prepared: Any,
        workloads: Sequence[Workload],
    ) -> Any:
        """I/O beyond workloads (e.g. Kafka topics) and reading the applied ``workloads``'
        ``/status`` (`Runtime.read_status`). Returns the kind's typed facts for
        `compute_status` (by default what `prepare` returned)."""
        return prepared

    @abc.abstractmethod
    def compute_status(self, spec: S, inp: StatusInput) -> StatusOutput: ...

    async def finalize(
        self, meta: ObjectMeta, raw_spec: Mapping[str, Any], runtime: Runtime, listing: Listing
    ) -> None:
        """Release what lives outside the cluster when the object is deleted (``listing`` no
        longer shows it)."""
        await runtime.delete(meta.owner)


INVALID_RECHECK_S = 10.0


def _backoff(retry: int) -> float:
    return float(min(2 ** min(retry, 6), 10))


@dataclass(frozen=True)
class ReconcileContext:
    """What a pass reaches beyond the object itself."""

    lookup: Lookup  # other Gyre objects, by kind, namespace and name
    runtime: Runtime  # where the workloads run
    listing: Listing = no_listing  # every object of a kind in a namespace
    children: Children = field(default_factory=NoChildren)  # child objects on the API server
    retry: int = 0  # how many passes in a row asked to come back (for backoff)


def _dependencies_resolved(resolved: Mapping[str, Resolved]) -> cnd.Cond:
    return cnd.Cond(
        cnd.DEPENDENCIES_READY,
        True,
        cnd.DEPENDENCIES_RESOLVED,
        ", ".join(f"{d.ref.kind} {d.ref.name} Ready" for d in resolved.values()) or "none",
    )


async def reconcile(
    controller: Controller[Any],
    meta: ObjectMeta,
    raw_spec: Mapping[str, Any],
    old_status: Mapping[str, Any],
    ctx: ReconcileContext,
) -> Outcome:
    """One pass over one object; returns the status to write and whether to come back."""
    lookup, runtime, listing, children, retry = ctx.lookup, ctx.runtime, ctx.listing, ctx.children, ctx.retry
    old_conditions = old_status.get("conditions")
    base = {k: v for k, v in old_status.items() if k not in ("conditions",)}

    def finish(fields: Mapping[str, Any], conds: Sequence[cnd.Cond], phase: str, **kw: Any) -> Outcome:
        status = {**base, **fields, "observedGeneration": meta.generation, "phase": phase}
        status["conditions"] = cnd.merge_conditions(old_conditions, conds, meta.generation)
        return Outcome(
            status=status, transitions=condition_transitions(old_conditions, status["conditions"]), **kw
        )

    try:
        spec = controller.spec_model.model_validate(dict(raw_spec))
    except ValidationError as exc:
        message = "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return finish(
            {},
            [
                cnd.Cond(cnd.READY, False, cnd.INVALID_SPEC, message),
                cnd.Cond(cnd.DEGRADED, True, cnd.INVALID_SPEC, message),
            ],
            "Invalid",
            permanent_error=message,
        )

    resolved: dict[str, Resolved] = {}
    for ref in controller.references(spec):
        resolved[ref.field] = Resolved(ref, lookup(ref.kind, meta.namespace, ref.name))
    missing = [d for d in resolved.values() if not d.found]
    unready = [d for d in resolved.values() if d.found and not d.ready]

    # Cross-resource rules are checked as soon as the other objects exist, ready or not, so a
    # spec that can never work is reported without waiting.
    problems = [] if missing else controller.check(meta, spec, resolved)
    if problems:
        message = "; ".join(problems)
        # Every reference exists here: say so, replacing what an earlier pass found missing.
        deps_now = (
            cnd.Cond(
                cnd.DEPENDENCIES_READY,
                False,
                cnd.DEPENDENCY_NOT_READY,
                "; ".join(f"{d.describe()} is not Ready ({_ready_reason(d)})" for d in unready),
            )
            if unready
            else _dependencies_resolved(resolved)
        )
        return finish(
            {},
            [
                deps_now,
                cnd.Cond(cnd.READY, False, cnd.INVALID_SPEC, message),
                cnd.Cond(cnd.DEGRADED, True, cnd.INVALID_SPEC, message),
                cnd.Cond(
                    cnd.PROGRESSING, False, cnd.INVALID_SPEC, "fix the spec (or the object it refers to)"
                ),
            ],
            "Invalid",
            # Another object may change and make this valid: look again, unhurried.
            retry_after=INVALID_RECHECK_S,
        )
    if missing or unready:
        parts = [f"{d.describe()} does not exist in namespace {meta.namespace}" for d in missing]
        parts += [f"{d.describe()} is not Ready ({_ready_reason(d)})" for d in unready]
        reason = cnd.DEPENDENCY_MISSING if missing else cnd.DEPENDENCY_NOT_READY
        message = "; ".join(parts)
        return finish(
            {},
            [
                cnd.Cond(cnd.DEPENDENCIES_READY, False, reason, message),
                cnd.Cond(cnd.READY, False, reason, f"waiting for dependencies: {message}"),
                cnd.Cond(cnd.PROGRESSING, True, reason, "retrying until dependencies are ready"),
                cnd.Cond(cnd.DEGRADED, False, cnd.AS_EXPECTED),
            ],
            "Waiting",
            retry_after=_backoff(retry),
        )
    deps_cond = _dependencies_resolved(resolved)

    workloads: list[Workload] = []
    try:
        served = await children.served(controller.child_kinds) if controller.child_kinds else frozenset()
        prepared = await controller.prepare(meta, spec, old_status, runtime, listing)
        workloads = controller.build(meta, spec, resolved, old_status, prepared, served=served)
        existing = (
            await children.list(meta.owner, controller.child_kinds) if controller.reads_children else None
        )
        wanted = controller.build_children(
            meta, spec, resolved, old_status, prepared, served=served, children=existing
        )
        unserved = sorted({c.type.kind for c in wanted if c.type not in served})
        if unserved:
            raise RuntimeError(f"the cluster does not serve {', '.join(unserved)}")
        await runtime.apply(meta.owner, workloads)
        child_states = (
            await children.apply(meta.owner, controller.child_kinds, wanted) if controller.child_kinds else {}
        )
        facts = await controller.converge(meta, spec, resolved, runtime, prepared, workloads)
        observed = await runtime.observe(meta.owner)
    except Exception as exc:  # the runtime or an external system failed: retried
        log.warning("Reconcile of %s %s/%s failed: %s", meta.kind, meta.namespace, meta.name, exc)
        message = f"{type(exc).__name__}: {exc}"
        return finish(
            {},
            [
                deps_cond,
                cnd.Cond(cnd.READY, False, cnd.RUNTIME_ERROR, message),
                cnd.Cond(cnd.DEGRADED, True, cnd.RUNTIME_ERROR, message),
            ],
            "Error",
            retry_after=_backoff(retry),
        )
    out = controller.compute_status(
        spec,
        StatusInput(
            meta=meta,
            old_status=old_status,
            deps=resolved,
            workloads=workloads,
            observed=observed,
            facts=facts,
            children=child_states,
            served=served,
        ),
    )
    conds = [deps_cond, *out.conditions]
    if not any(c.type == cnd.DEGRADED for c in out.conditions):
        conds.append(cnd.Cond(cnd.DEGRADED, False, cnd.AS_EXPECTED))
    # Only the fields compute_status set are written (one set to None is removed); the
    # conditions, phase and generation are the pass's own.
    model = type(out.status)
    fields = {
        model.model_fields[name].alias or name: None
        for name in out.remove
        if name not in out.status.model_fields_set
    }
    fields |= out.status.model_dump(
        mode="json", by_alias=True, exclude_unset=True, exclude={"conditions", "phase", "observed_generation"}
    )
    return finish(
        fields,
        conds,
        out.phase,
        requeue_after=out.requeue_after,
        workloads=len(workloads),
        delete_object=out.delete_object,
        applied=tuple(w.name for w in workloads),
    )


def _ready_reason(dep: Resolved) -> str:
    cond = cnd.condition(dep.status.get("conditions"), cnd.READY)
    return str(cond.get("reason", "Unknown")) if cond else "no status yet"
