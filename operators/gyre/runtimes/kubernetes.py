"""The ``kubernetes`` runtime: workloads as Deployments, StatefulSets, Jobs, Services, ConfigMaps.

`apply` renders the owner's workloads (`gyre.runtimes.k8s_render`), server-side applies
every object under one field manager (``gyre``, forcing conflicts: the operator is the
authority over what it renders, so drift is repaired) and prunes the owner's objects that
are no longer rendered, found by the owner labels. `observe` reads the controllers and
their pods back into `WorkloadStatus`, each through its shape (`gyre.runtimes.shapes`).
API calls go through `gyre.runtimes.kube_api`.

Reads come from a watch-fed cache of every object Gyre manages (`gyre.runtimes.kube_cache`),
so a pass that changes nothing costs no API call: `observe`, the prune and `read_status`'s
pod list read the cache; an object rendered as it was last applied and not changed since
(a controller's ``generation``, a ConfigMap's or Service's ``resourceVersion``, as the cache
sees them) is not applied again, except once per `REAPPLY_S`, which repairs drift the cache
cannot see (a label edited by hand). `subscribe` hears of every change to an owner's
objects, which is how the operator reconciles an owner when its pods move. Where the cache
cannot sync (no watch permission), every read is an API call, as it is before the cache
has synced.

Calls block, so each runs in a thread of the runtime's own pool, sized like the client's
connection pool: requests of many reconciles are in flight at once (the API server answers a
list in tens of milliseconds, mostly waiting, not computing), and a slow call elsewhere in the
operator cannot starve them. Within one pass the independent requests are concurrent too:
ConfigMaps and Services, then the controllers that mount and use them; the prune's and
`observe`'s lists. An apply prunes once per owner and whenever the set of rendered objects
changes: what it pruned before stays pruned. A ConfigMap or Service that is rendered as it was
last applied, and whose resourceVersion has not moved since, is read instead of applied again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes.client import ApiClient

from gyre.core.workload import Owner, Workload, WorkloadPhase, WorkloadStatus
from gyre.pipelines._common.status import STATUS_PATH
from gyre.runtimes import k8s_render as r
from gyre.runtimes.base import OwnerListener
from gyre.runtimes.k8s_status import replica_index
from gyre.runtimes.kube_api import KubeApi
from gyre.runtimes.kube_cache import ObjectCache
from gyre.runtimes.shapes import ResourceKind, Shape, shape_of, shapes

log = logging.getLogger(__name__)

T = TypeVar("T")

STATUS_TIMEOUT_S = 3.0
REAPPLY_S = 60.0  # an unchanged object is applied again this often (drift the cache misses)

CONFIG_MAP = ResourceKind("ConfigMap", "v1", "configmaps")
SERVICE = ResourceKind("Service", "v1", "services")
POD = ResourceKind("Pod", "v1", "pods")
PVC = ResourceKind("PersistentVolumeClaim", "v1", "persistentvolumeclaims")
AUTOSCALER = ResourceKind("HorizontalPodAutoscaler", "autoscaling/v2", "horizontalpodautoscalers")

# The controllers of every shape; every kind `apply` renders: what the controllers' pods mount
# and reach, the controllers, what acts on the controllers (`delete` and `prune` go through
# them all, in reverse).
CONTROLLERS = tuple(dict.fromkeys(sh.controller for sh in shapes()))
RENDERED_KINDS = (CONFIG_MAP, SERVICE, *CONTROLLERS, AUTOSCALER)
# Kinds whose spec changes move metadata.generation (their status writes do not): an object of
# these is unchanged while its generation is.
BY_GENERATION = (*CONTROLLERS, AUTOSCALER)
_BY_KIND = {k.kind: k for k in RENDERED_KINDS}


class KubernetesRuntime:
    """Runs workloads on a Kubernetes cluster through ``api_client`` (which the caller owns)."""

    name = "kubernetes"

    def __init__(
        self,
        api_client: ApiClient,
        settings: r.RenderSettings = r.DEFAULT_SETTINGS,
        namespaces: Sequence[str] = (),
        watch: bool = True,
    ) -> None:
        self.kube = KubeApi(api_client)
        self._settings = settings
        # Every object Gyre manages in ``namespaces`` (all when empty), started on first use.
        self.cache: ObjectCache | None = (
            ObjectCache(
                api_client,
                (POD, *RENDERED_KINDS),
                f"{r.LABEL_MANAGED_BY}={r.MANAGED_BY}",
                namespaces,
            )
            if watch
            else None
        )
        self._cache_started = False
        # The last workloads applied per owner: `endpoint` is synchronous and needs the ports.
        self._applied: dict[str, tuple[Workload, ...]] = {}
        # Per owner, the (kind, name) set rendered when its children were last pruned.
        self._pruned: dict[str, frozenset[tuple[str, str]]] = {}
        # Per (kind, namespace, name): what was last applied, as the apply returned it.
        self._last_applied: dict[tuple[str, str, str], _Applied] = {}
        # More threads than pooled connections would open a connection (a TLS handshake)
        # per request beyond the pool.
        self._threads = max(4, int(api_client.configuration.connection_pool_maxsize or 4))
        self._pool: ThreadPoolExecutor | None = None

    # -- Runtime protocol -------------------------------------------------------------------

    async def apply(self, owner: Owner, workloads: Sequence[Workload]) -> None:
        manifests = r.render(owner, workloads, owner.namespace, self._settings)
        # What the controllers' pods mount and reach first, then the controllers, then what
        # scales them.
        first = [m for m in manifests if _BY_KIND[m["kind"]] in (CONFIG_MAP, SERVICE)]
        then = [m for m in manifests if _BY_KIND[m["kind"]] in CONTROLLERS]
        last = [m for m in manifests if _BY_KIND[m["kind"]] == AUTOSCALER]
        for tier in (first, then, last):
            await self._all([functools.partial(self._apply_object, m) for m in tier])
        keep = frozenset((m["kind"], m["metadata"]["name"]) for m in manifests)
        if self._pruned.get(owner.key) != keep:
            await self._prune(owner, keep)
            self._pruned[owner.key] = keep
        self._applied[owner.key] = tuple(workloads)

    async def observe(self, owner: Owner) -> dict[str, WorkloadStatus]:
        applied = self._applied.get(owner.key)
        if applied is not None and not applied:
            return {}
        # Only the shapes the last apply rendered: a pruned controller of another kind is gone.
        observed = list(shapes()) if applied is None else list(dict.fromkeys(shape_of(w) for w in applied))
        selector = r.owner_labels(owner)
        pods, *controllers = await self._all(
            [
                functools.partial(self._list, k, owner.namespace, selector)
                for k in (POD, *(sh.controller for sh in observed))
            ]
        )
        return self._workload_status(owner, pods, list(zip(observed, controllers, strict=True)))

    async def delete(self, owner: Owner) -> None:
        await self._run(self.delete_sync, owner)

    async def read_status(self, owner: Owner, workload: Workload) -> list[dict[str, Any]]:
        return await self._run(self.read_status_sync, owner, workload)

    def subscribe(self, listener: OwnerListener) -> None:
        """Call ``listener`` (in a watch thread) whenever an object of an owner changes."""
        if self.cache is None:
            return

        def on_event(_kind: ResourceKind, _event: str, obj: dict[str, Any]) -> None:
            md = obj.get("metadata") or {}
            labels = md.get("labels") or {}
            kind, name = labels.get(r.LABEL_OWNER_KIND), labels.get(r.LABEL_OWNER_NAME)
            if kind and name:
                listener(str(md.get("namespace", "")), kind, name)

        self.cache.add_listener(on_event)

    def endpoint(self, owner: Owner, workload: str, port: str) -> str | None:
        for w in self._applied.get(owner.key, ()):
            if w.name == workload:
                try:
                    return r.endpoint(owner, w, port, owner.namespace)
                except KeyError:
                    return None
        return None

    async def close(self) -> None:
        self._applied.clear()
        self._pruned.clear()
        self._last_applied.clear()
        if self.cache is not None:
            self.cache.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # -- concurrency ------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.cache is not None and not self._cache_started:
            self._cache_started = True
            self.cache.start()
            if not await asyncio.to_thread(self.cache.wait_synced):
                log.warning("The watch cache did not sync: reading through the API server until it does")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="gyre-kube")
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    async def _all(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Run the blocking ``calls`` at once; every one ends before the first error is raised
        (nothing of this pass is still writing when the next pass starts)."""
        results = await asyncio.gather(*(self._run(c) for c in calls), return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                raise res
        return results  # type: ignore[return-value]

    # -- blocking implementations -----------------------------------------------------------

    def _workload_status(
        self,
        owner: Owner,
        pods: Sequence[dict[str, Any]],
        controllers: Sequence[tuple[Shape, list[dict[str, Any]]]],
    ) -> dict[str, WorkloadStatus]:
        pods_by_workload: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            workload = pod["metadata"].get("labels", {}).get(r.LABEL_WORKLOAD)
            if workload:
                pods_by_workload.setdefault(workload, []).append(pod)
        # While a workload changes shape, the old controller lingers until pruned: read the
        # one the last apply rendered (a workload not applied by this process: any).
        wanted = {w.name: shape_of(w) for w in self._applied.get(owner.key, ())}
        out: dict[str, WorkloadStatus] = {}
        for shape, objs in controllers:
            for obj in objs:
                workload = obj["metadata"].get("labels", {}).get(r.LABEL_WORKLOAD)
                if not workload or wanted.get(workload, shape) is not shape:
                    continue
                out[workload] = shape.observe(workload, obj, pods_by_workload.get(workload, []))
        for w in self._applied.get(owner.key, ()):
            if w.name not in out:
                out[w.name] = WorkloadStatus(name=w.name, phase=WorkloadPhase.MISSING)
        return out

    def read_status_sync(self, owner: Owner, workload: Workload) -> list[dict[str, Any]]:
        """``/status`` of each running pod of the workload, through the API server's pod proxy.

        The operator need not reach the pod network itself (it may run outside the cluster);
        the API server does. Pods are in replica order (indexed Jobs, StatefulSets), else in
        order of creation; a pod that does not answer is left out, and so is one whose
        container no container runtime started (`_serving`)."""
        if workload.status_port is None:
            return []
        port = workload.port(workload.status_port).port
        running = [
            p for p in self._list(POD, owner.namespace, r.selector_labels(owner, workload)) if _serving(p)
        ]
        running.sort(key=lambda p: (replica_index(p) or 0, str(p["metadata"].get("creationTimestamp") or "")))
        out: list[dict[str, Any]] = []
        for pod in running:
            name = pod["metadata"]["name"]
            path = f"{POD.path(owner.namespace, name)}:{port}/proxy{STATUS_PATH}"
            try:
                out.append(self.kube.request("GET", path, timeout_s=STATUS_TIMEOUT_S)[1])
            except Exception as e:  # API errors, proxy errors, timeouts: the pod is left out
                log.debug("Reading /status of pod %s/%s failed: %s", owner.namespace, name, e)
        return out

    def delete_sync(self, owner: Owner) -> None:
        selector = r.owner_selector(owner)
        for kind in (*reversed(RENDERED_KINDS), PVC):
            # Listed from the API server: what is deleted must not hide from a lagging cache.
            for obj in self.kube.list(kind, owner.namespace, selector):
                self._delete(kind, owner.namespace, obj["metadata"]["name"])
        self._applied.pop(owner.key, None)
        self._pruned.pop(owner.key, None)

    # -- helpers ----------------------------------------------------------------------------

    def _synced_cache(self) -> ObjectCache | None:
        return self.cache if self.cache is not None and self.cache.synced else None

    def _list(self, kind: ResourceKind, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        cache = self._synced_cache()
        if cache is not None:
            return cache.list(kind, namespace, labels)
        return self.kube.list(kind, namespace, ",".join(f"{k}={v}" for k, v in labels.items()))

    def _delete(self, kind: ResourceKind, namespace: str, name: str) -> None:
        self.kube.delete(kind, namespace, name, "Background")
        self._last_applied.pop((kind.kind, namespace, name), None)
        if self.cache is not None:
            self.cache.forget(kind, namespace, name)

    def _apply_object(self, manifest: dict[str, Any]) -> None:
        kind = _BY_KIND[manifest["kind"]]
        ns = manifest["metadata"]["namespace"]
        name = manifest["metadata"]["name"]
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        last = self._last_applied.get((kind.kind, ns, name))
        if last is not None and last.digest == digest and time.monotonic() - last.at < REAPPLY_S:
            # Rendered as last applied: applied again only if the object changed since. A
            # controller's status moves its resourceVersion all along, its generation only
            # when its spec changes; a ConfigMap's or Service's resourceVersion moves on any
            # write. Without the cache, a read tells, for a fraction of an apply's cost.
            cache = self._synced_cache()
            if cache is not None:
                live = cache.get(kind, ns, name)
            else:
                live = None if kind in BY_GENERATION else self.kube.get(kind, ns, name)
            if live is not None and last.unchanged(live, by_generation=kind in BY_GENERATION):
                return
        stored = self.kube.apply(kind, manifest)
        if self.cache is not None:
            self.cache.upsert(kind, stored)
        md = stored.get("metadata") or {}
        self._last_applied[(kind.kind, ns, name)] = _Applied(
            digest=digest,
            uid=str(md.get("uid", "")),
            resource_version=str(md.get("resourceVersion", "")),
            generation=int(md.get("generation") or 0),
            at=time.monotonic(),
        )

    async def _prune(self, owner: Owner, keep: frozenset[tuple[str, str]]) -> None:
        kinds = tuple(reversed(RENDERED_KINDS))  # controllers first, then Services, ConfigMaps
        selector = r.owner_labels(owner)
        listed = await self._all([functools.partial(self._list, k, owner.namespace, selector) for k in kinds])
        for kind, objs in zip(kinds, listed, strict=True):
            for obj in objs:
                name = obj["metadata"]["name"]
                if (kind.kind, name) in keep:
                    continue
                await self._run(self._delete, kind, owner.namespace, name)
                log.info("Pruned %s %s/%s", kind.kind, owner.namespace, name)


@dataclass(frozen=True)
class _Applied:
    """An object as an apply stored it, and the digest of the manifest applied."""

    digest: str
    uid: str
    resource_version: str
    generation: int
    at: float  # monotonic

    def unchanged(self, live: dict[str, Any], by_generation: bool) -> bool:
        md = live.get("metadata") or {}
        if str(md.get("uid", "")) != self.uid:
            return False  # deleted and created again by someone else
        if by_generation:
            return int(md.get("generation") or 0) == self.generation
        return str(md.get("resourceVersion", "")) == self.resource_version


def _serving(pod: dict[str, Any]) -> bool:
    """A running pod whose main container a container runtime started: only then is there
    something to answer at its address. (A fake node such as kwok's marks pods Running with
    no container ID, at addresses nothing on this network owns; asking the API server to
    proxy there would send traffic towards them.)"""
    if (pod.get("status") or {}).get("phase") != "Running" or (pod.get("metadata") or {}).get(
        "deletionTimestamp"
    ):
        return False
    return any(
        cs.get("name") == r.CONTAINER_NAME and cs.get("containerID") and "running" in (cs.get("state") or {})
        for cs in (pod.get("status") or {}).get("containerStatuses") or []
    )
