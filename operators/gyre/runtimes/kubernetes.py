"""The ``kubernetes`` runtime: workloads as Deployments, StatefulSets, Jobs, Services, ConfigMaps.

`apply` renders the owner's workloads (`gyre.runtimes.k8s_render`), server-side applies
every object under one field manager (``gyre``, forcing conflicts: the operator is the
authority over what it renders, so drift is repaired) and prunes the owner's objects that
are no longer rendered, found by the owner labels. `observe` reads the controllers and
their pods back into `WorkloadStatus`, each through its shape (`gyre.runtimes.shapes`).
API calls go through `gyre.runtimes.kube_api`, block, and run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from kubernetes.client import ApiClient

from gyre.core.workload import Owner, Workload, WorkloadPhase, WorkloadStatus
from gyre.pipelines._common.status import STATUS_PATH
from gyre.runtimes import k8s_render as r
from gyre.runtimes.k8s_status import replica_index
from gyre.runtimes.kube_api import KubeApi
from gyre.runtimes.shapes import ResourceKind, shape_of, shapes

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 3.0


CONFIG_MAP = ResourceKind("ConfigMap", "v1", "configmaps")
SERVICE = ResourceKind("Service", "v1", "services")
POD = ResourceKind("Pod", "v1", "pods")
PVC = ResourceKind("PersistentVolumeClaim", "v1", "persistentvolumeclaims")

# Every kind `apply` renders, controllers last; `delete` and `prune` go through them all.
RENDERED_KINDS = (CONFIG_MAP, SERVICE, *dict.fromkeys(sh.controller for sh in shapes()))
_BY_KIND = {k.kind: k for k in RENDERED_KINDS}


class KubernetesRuntime:
    """Runs workloads on a Kubernetes cluster through ``api_client`` (which the caller owns)."""

    name = "kubernetes"

    def __init__(self, api_client: ApiClient, settings: r.RenderSettings = r.DEFAULT_SETTINGS) -> None:
        self.kube = KubeApi(api_client)
        self._settings = settings
        # The last workloads applied per owner: `endpoint` is synchronous and needs the ports.
        self._applied: dict[str, tuple[Workload, ...]] = {}

    # -- Runtime protocol -------------------------------------------------------------------

    async def apply(self, owner: Owner, workloads: Sequence[Workload]) -> None:
        await asyncio.to_thread(self.apply_sync, owner, workloads)

    async def observe(self, owner: Owner) -> dict[str, WorkloadStatus]:
        return await asyncio.to_thread(self.observe_sync, owner)

    async def delete(self, owner: Owner) -> None:
        await asyncio.to_thread(self.delete_sync, owner)

    async def read_status(self, owner: Owner, workload: Workload) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.read_status_sync, owner, workload)

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

    # -- blocking implementations -----------------------------------------------------------

    def apply_sync(self, owner: Owner, workloads: Sequence[Workload]) -> None:
        manifests = r.render(owner, workloads, owner.namespace, self._settings)
        for manifest in manifests:
            self.kube.apply(_BY_KIND[manifest["kind"]], manifest)
        keep = {(m["kind"], m["metadata"]["name"]) for m in manifests}
        self._prune(owner, keep)
        self._applied[owner.key] = tuple(workloads)

    def observe_sync(self, owner: Owner) -> dict[str, WorkloadStatus]:
        ns = owner.namespace
        selector = r.owner_selector(owner)
        pods_by_workload: dict[str, list[dict[str, Any]]] = {}
        for pod in self.kube.list(POD, ns, selector):
            workload = pod["metadata"].get("labels", {}).get(r.LABEL_WORKLOAD)
            if workload:
                pods_by_workload.setdefault(workload, []).append(pod)
        # While a workload changes shape, the old controller lingers until pruned: read the
        # one the last apply rendered (a workload not applied by this process: any).
        wanted = {w.name: shape_of(w) for w in self._applied.get(owner.key, ())}
        out: dict[str, WorkloadStatus] = {}
        for shape in shapes():
            for obj in self.kube.list(shape.controller, ns, selector):
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
        order of creation; a pod that does not answer is left out."""
        if workload.status_port is None:
            return []
        port = workload.port(workload.status_port).port
        selector = ",".join(f"{k}={v}" for k, v in r.selector_labels(owner, workload).items())
        running = [
            p
            for p in self.kube.list(POD, owner.namespace, selector)
            if (p.get("status") or {}).get("phase") == "Running"
            and not (p.get("metadata") or {}).get("deletionTimestamp")
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
            for obj in self.kube.list(kind, owner.namespace, selector):
                self.kube.delete(kind, owner.namespace, obj["metadata"]["name"], "Background")
        self._applied.pop(owner.key, None)

    # -- helpers ----------------------------------------------------------------------------

    def _prune(self, owner: Owner, keep: set[tuple[str, str]]) -> None:
        for kind in reversed(RENDERED_KINDS):  # controllers first, then Services, ConfigMaps
            for obj in self.kube.list(kind, owner.namespace, r.owner_selector(owner)):
                name = obj["metadata"]["name"]
                if (kind.kind, name) in keep:
                    continue
                self.kube.delete(kind, owner.namespace, name, "Background")
                log.info("Pruned %s %s/%s", kind.kind, owner.namespace, name)
