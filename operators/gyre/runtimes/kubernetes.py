"""The ``kubernetes`` runtime: workloads as Deployments, StatefulSets, Jobs, Services, ConfigMaps.

`apply` renders the owner's workloads (`gyre.runtimes.k8s_render`), server-side applies
every object under one field manager (``gyre``, forcing conflicts: the operator is the
authority over what it renders, so drift is repaired) and prunes the owner's objects that
are no longer rendered, found by the owner labels. `observe` reads the controllers and
their pods back into `WorkloadStatus`, each through its shape (`gyre.runtimes.shapes`).
API calls go through `gyre.runtimes.kube_api`.

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kubernetes.client import ApiClient

from gyre.core.workload import Owner, Workload, WorkloadPhase, WorkloadStatus
from gyre.pipelines._common.status import STATUS_PATH
from gyre.runtimes import k8s_render as r
from gyre.runtimes.k8s_status import replica_index
from gyre.runtimes.kube_api import KubeApi
from gyre.runtimes.shapes import ResourceKind, Shape, shape_of, shapes

log = logging.getLogger(__name__)

T = TypeVar("T")

STATUS_TIMEOUT_S = 3.0

CONFIG_MAP = ResourceKind("ConfigMap", "v1", "configmaps")
SERVICE = ResourceKind("Service", "v1", "services")
POD = ResourceKind("Pod", "v1", "pods")
PVC = ResourceKind("PersistentVolumeClaim", "v1", "persistentvolumeclaims")

# The controllers of every shape; every kind `apply` renders, controllers last (`delete` and
# `prune` go through them all).
CONTROLLERS = tuple(dict.fromkeys(sh.controller for sh in shapes()))
RENDERED_KINDS = (CONFIG_MAP, SERVICE, *CONTROLLERS)
_BY_KIND = {k.kind: k for k in RENDERED_KINDS}


class KubernetesRuntime:
    """Runs workloads on a Kubernetes cluster through ``api_client`` (which the caller owns)."""

    name = "kubernetes"

    def __init__(self, api_client: ApiClient, settings: r.RenderSettings = r.DEFAULT_SETTINGS) -> None:
        self.kube = KubeApi(api_client)
        self._settings = settings
        # The last workloads applied per owner: `endpoint` is synchronous and needs the ports.
        self._applied: dict[str, tuple[Workload, ...]] = {}
        # Per owner, the (kind, name) set rendered when its children were last pruned.
        self._pruned: dict[str, frozenset[tuple[str, str]]] = {}
        # Per (kind, namespace, name): the digest of the manifest last applied, and the
        # resourceVersion the apply returned.
        self._last_applied: dict[tuple[str, str, str], tuple[str, str]] = {}
        # More threads than pooled connections would open a connection (a TLS handshake)
        # per request beyond the pool.
        self._threads = max(4, int(api_client.configuration.connection_pool_maxsize or 4))
        self._pool: ThreadPoolExecutor | None = None

    # -- Runtime protocol -------------------------------------------------------------------

    async def apply(self, owner: Owner, workloads: Sequence[Workload]) -> None:
        manifests = r.render(owner, workloads, owner.namespace, self._settings)
        # What the controllers' pods mount and reach first, then the controllers.
        first = [m for m in manifests if _BY_KIND[m["kind"]] not in CONTROLLERS]
        then = [m for m in manifests if _BY_KIND[m["kind"]] in CONTROLLERS]
        for tier in (first, then):
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
        selector = r.owner_selector(owner)
        pods, *controllers = await self._all(
            [
                functools.partial(self.kube.list, k, owner.namespace, selector)
                for k in (POD, *(sh.controller for sh in observed))
            ]
        )
        return self._workload_status(owner, pods, list(zip(observed, controllers, strict=True)))

    async def delete(self, owner: Owner) -> None:
        await self._run(self.delete_sync, owner)

    async def read_status(self, owner: Owner, workload: Workload) -> list[dict[str, Any]]:
        return await self._run(self.read_status_sync, owner, workload)

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
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # -- concurrency ------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
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
        selector = ",".join(f"{k}={v}" for k, v in r.selector_labels(owner, workload).items())
        running = [p for p in self.kube.list(POD, owner.namespace, selector) if _serving(p)]
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
            for obj in self.kube.list(kind, owner.namespace, selector):
                self.kube.delete(kind, owner.namespace, obj["metadata"]["name"], "Background")
                self._last_applied.pop((kind.kind, owner.namespace, obj["metadata"]["name"]), None)
        self._applied.pop(owner.key, None)
        self._pruned.pop(owner.key, None)

    # -- helpers ----------------------------------------------------------------------------

    def _apply_object(self, manifest: dict[str, Any]) -> None:
        kind = _BY_KIND[manifest["kind"]]
        ns = manifest["metadata"]["namespace"]
        name = manifest["metadata"]["name"]
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        last = self._last_applied.get((kind.kind, ns, name))
        if kind not in CONTROLLERS and last is not None and last[0] == digest:
            # A ConfigMap or Service this runtime applied, as rendered now: a read tells
            # whether anything changed it since (its resourceVersion moves on any write),
            # for a fraction of what the API server spends on an apply. Controllers are
            # applied every time: their status moves their resourceVersion all along.
            live = self.kube.get(kind, ns, name)
            if live is not None and live["metadata"].get("resourceVersion") == last[1]:
                return
        stored = self.kube.apply(kind, manifest)
        self._last_applied[(kind.kind, ns, name)] = (
            digest,
            str((stored.get("metadata") or {}).get("resourceVersion", "")),
        )

    async def _prune(self, owner: Owner, keep: frozenset[tuple[str, str]]) -> None:
        kinds = tuple(reversed(RENDERED_KINDS))  # controllers first, then Services, ConfigMaps
        selector = r.owner_selector(owner)
        listed = await self._all(
            [functools.partial(self.kube.list, k, owner.namespace, selector) for k in kinds]
        )
        for kind, objs in zip(kinds, listed, strict=True):
            for obj in objs:
                name = obj["metadata"]["name"]
                if (kind.kind, name) in keep:
                    continue
                await self._run(self.kube.delete, kind, owner.namespace, name, "Background")
                self._last_applied.pop((kind.kind, owner.namespace, name), None)
                log.info("Pruned %s %s/%s", kind.kind, owner.namespace, name)


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
