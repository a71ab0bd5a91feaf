"""The ``kubernetes`` runtime: workloads as Deployments, StatefulSets, Jobs, Services, ConfigMaps.

`apply` renders the owner's workloads (`gyre.runtimes.k8s_render`), server-side applies
every object under one field manager (``gyre``, forcing conflicts: the operator is the
authority over what it renders, so drift is repaired) and prunes the owner's objects that
are no longer rendered, found by the owner labels. `observe` reads the controllers and
their pods back into `WorkloadStatus`. This is the only module of the runtime that talks to
the API server; it uses the official client's raw `call_api` for server-side apply, which
the typed APIs do not offer.

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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gyre.core.workload import Owner, Workload, WorkloadKind, WorkloadPhase, WorkloadStatus
from gyre.runtimes import k8s_render as r

log = logging.getLogger(__name__)

T = TypeVar("T")

REQUEST_TIMEOUT_S = 30.0
RECREATE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ResourceKind:
    kind: str
    api_version: str
    plural: str

    def collection(self, namespace: str) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"

    def path(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"


CONFIG_MAP = ResourceKind("ConfigMap", "v1", "configmaps")
SERVICE = ResourceKind("Service", "v1", "services")
DEPLOYMENT = ResourceKind("Deployment", "apps/v1", "deployments")
STATEFUL_SET = ResourceKind("StatefulSet", "apps/v1", "statefulsets")
JOB = ResourceKind("Job", "batch/v1", "jobs")
POD = ResourceKind("Pod", "v1", "pods")
PVC = ResourceKind("PersistentVolumeClaim", "v1", "persistentvolumeclaims")

RENDERED_KINDS = (CONFIG_MAP, SERVICE, DEPLOYMENT, STATEFUL_SET, JOB)
_BY_KIND = {k.kind: k for k in RENDERED_KINDS}
CONTROLLERS = (DEPLOYMENT, STATEFUL_SET, JOB)
_CONTROLLER_KIND = {
    WorkloadKind.SERVICE: DEPLOYMENT,
    WorkloadKind.STATEFUL: STATEFUL_SET,
    WorkloadKind.BATCH: JOB,
}

# How a child is removed when an immutable field changed and it must be recreated: a Job is
# a run, so its pods go with it; a StatefulSet's pods and claims are orphaned and adopted by
# the new StatefulSet, so data survives a change of, say, volume size.
_RECREATE_PROPAGATION = {"StatefulSet": "Orphan"}


class KubernetesRuntime:
    """Runs workloads on a Kubernetes cluster through ``api_client`` (which the caller owns)."""

    name = "kubernetes"

    def __init__(self, api_client: ApiClient, settings: r.RenderSettings = r.DEFAULT_SETTINGS) -> None:
        self._api = api_client
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
        # Only the kinds the last apply rendered: a pruned controller of another kind is gone.
        kinds = CONTROLLERS if applied is None else tuple({_CONTROLLER_KIND[w.kind]: None for w in applied})
        selector = r.owner_selector(owner)
        if applied is not None and not applied:
            return {}
        pods, *controllers = await self._all(
            [functools.partial(self._list, k, owner.namespace, selector) for k in (POD, *kinds)]
        )
        return self._workload_status(owner, pods, dict(zip(kinds, controllers, strict=True)))

    async def delete(self, owner: Owner) -> None:
        await self._run(self.delete_sync, owner)

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
        controllers: dict[ResourceKind, list[dict[str, Any]]],
    ) -> dict[str, WorkloadStatus]:
        pods_by_workload: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            workload = pod["metadata"].get("labels", {}).get(r.LABEL_WORKLOAD)
            if workload:
                pods_by_workload.setdefault(workload, []).append(pod)
        # While a workload changes kind, the old controller lingers until pruned: prefer the
        # one the last apply rendered.
        wanted = {w.name: _CONTROLLER_KIND[w.kind] for w in self._applied.get(owner.key, ())}
        out: dict[str, WorkloadStatus] = {}
        for kind, objs in controllers.items():
            for obj in objs:
                workload = obj["metadata"].get("labels", {}).get(r.LABEL_WORKLOAD)
                if not workload or wanted.get(workload, kind) is not kind:
                    continue
                pods = pods_by_workload.get(workload, [])
                if kind is JOB:
                    out[workload] = compute_job_status(workload, obj, pods)
                else:
                    out[workload] = compute_replicated_status(workload, obj, pods)
        for w in self._applied.get(owner.key, ()):
            if w.name not in out:
                out[w.name] = WorkloadStatus(name=w.name, phase=WorkloadPhase.MISSING)
        return out

    def delete_sync(self, owner: Owner) -> None:
        selector = r.owner_selector(owner)
        for kind in (*reversed(RENDERED_KINDS), PVC):
            for obj in self._list(kind, owner.namespace, selector):
                self._delete(kind, owner.namespace, obj["metadata"]["name"], "Background")
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
            live = self._get(kind, ns, name)
            if live is not None and live["metadata"].get("resourceVersion") == last[1]:
                return
        try:
            status, applied = self._server_side_apply(kind, ns, name, manifest)
        except ApiException as e:
            if e.status != 422:
                raise
            existing = self._get(kind, ns, name)
            if existing is None:
                raise
            # An immutable field changed (a Job's template, a StatefulSet's claims, a
            # Service's clusterIP): replace the object.
            log.info("Recreating %s %s/%s: %s", kind.kind, ns, name, _reason(e))
            self._delete(kind, ns, name, _RECREATE_PROPAGATION.get(kind.kind, "Background"))
            self._wait_gone(kind, ns, name, existing["metadata"]["uid"])
            status, applied = self._server_side_apply(kind, ns, name, manifest)
        self._last_applied[(kind.kind, ns, name)] = (
            digest,
            str((applied.get("metadata") or {}).get("resourceVersion", "")),
        )
        if status == 201:
            log.info("Created %s %s/%s", kind.kind, ns, name)
        else:
            log.debug("Applied %s %s/%s", kind.kind, ns, name)

    def _server_side_apply(
        self, kind: ResourceKind, ns: str, name: str, manifest: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        return self._request(
            "PATCH",
            kind.path(ns, name),
            query=[("fieldManager", r.FIELD_MANAGER), ("force", "true")],
            # JSON is YAML: the apply patch content type accepts it as is.
            body=manifest,
            content_type="application/apply-patch+yaml",
        )

    async def _prune(self, owner: Owner, keep: frozenset[tuple[str, str]]) -> None:
        kinds = tuple(reversed(RENDERED_KINDS))  # controllers first, then Services, ConfigMaps
        selector = r.owner_selector(owner)
        listed = await self._all([functools.partial(self._list, k, owner.namespace, selector) for k in kinds])
        for kind, objs in zip(kinds, listed, strict=True):
            for obj in objs:
                name = obj["metadata"]["name"]
                if (kind.kind, name) in keep:
                    continue
                await self._run(self._delete, kind, owner.namespace, name, "Background")
                self._last_applied.pop((kind.kind, owner.namespace, name), None)
                log.info("Pruned %s %s/%s", kind.kind, owner.namespace, name)

    def _list(self, kind: ResourceKind, ns: str, selector: str) -> list[dict[str, Any]]:
        _, body = self._request("GET", kind.collection(ns), query=[("labelSelector", selector)])
        items: list[dict[str, Any]] = body.get("items") or []
        return items

    def _get(self, kind: ResourceKind, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", kind.path(ns, name))[1]
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def _delete(self, kind: ResourceKind, ns: str, name: str, propagation: str) -> None:
        try:
            self._request(
                "DELETE",
                kind.path(ns, name),
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": propagation,
                },
            )
        except ApiException as e:
            if e.status != 404:
                raise

    def _wait_gone(self, kind: ResourceKind, ns: str, name: str, uid: str) -> None:
        deadline = time.monotonic() + RECREATE_TIMEOUT_S
        delay = 0.05
        while time.monotonic() < deadline:
            current = self._get(kind, ns, name)
            if current is None or current["metadata"]["uid"] != uid:
                return
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise TimeoutError(f"{kind.kind} {ns}/{name} was not deleted in {RECREATE_TIMEOUT_S}s")

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Iterable[tuple[str, str]] = (),
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        serialized = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        _method, url, headers, data, post = serialized
        response = self._api.call_api(
            _method,
            url,
            header_params=headers,
            body=data,
            post_params=post,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        raw: bytes = response.response.data
        status: int = response.status
        if not 200 <= status < 300:
            raise ApiException(status=status, reason=response.reason, body=raw.decode("utf-8", "replace"))
        return status, json.loads(raw) if raw else {}


def _reason(e: ApiException) -> str:
    try:
        message: str = json.loads(e.body or "{}").get("message", "")
    except ValueError:
        message = ""
    return message or str(e.reason)


# -- status ---------------------------------------------------------------------------------


def _pod_messages(pods: Sequence[dict[str, Any]]) -> tuple[bool, list[str]]:
    """Whether some pod cannot be scheduled, and what is wrong with the pods, for humans."""
    unschedulable = False
    messages: list[str] = []
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status", {})
        for cond in status.get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                unschedulable = True
                messages.append(f"pod {name} unschedulable: {cond.get('message', '')}".strip())
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating"):
                text = f"pod {name}: {waiting['reason']}"
                if waiting.get("message"):
                    text += f": {waiting['message']}"
                messages.append(text)
    return unschedulable, messages


def _restarts(pods: Sequence[dict[str, Any]]) -> int:
    return sum(
        int(cs.get("restartCount", 0))
        for pod in pods
        for cs in (pod.get("status", {}).get("containerStatuses") or [])
    )


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def compute_replicated_status(
    workload: str, obj: dict[str, Any], pods: Sequence[dict[str, Any]]
) -> WorkloadStatus:
    """A Deployment's or StatefulSet's status: Ready once every desired replica is updated
    and ready."""
    spec_replicas = int(obj.get("spec", {}).get("replicas", 1))
    st = obj.get("status", {})
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    observed = int(st.get("observedGeneration") or 0) >= int(obj["metadata"].get("generation", 0))
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    unschedulable, messages = _pod_messages(live)
    if observed and ready >= spec_replicas and updated >= spec_replicas:
        phase = WorkloadPhase.READY
    elif unschedulable or not any(p.get("status", {}).get("phase") == "Running" for p in live):
        phase = WorkloadPhase.PENDING
    else:
        phase = WorkloadPhase.RUNNING
    return WorkloadStatus(
        name=workload,
        phase=phase,
        replicas=spec_replicas,
        ready_replicas=ready,
        restarts=_restarts(live),
        message="; ".join(messages),
    )


def _exit_code(pod: dict[str, Any]) -> int | None:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        for key in ("state", "lastState"):
            terminated = (cs.get(key) or {}).get("terminated")
            if terminated is not None and "exitCode" in terminated:
                return int(terminated["exitCode"])
    return None


def compute_job_status(workload: str, obj: dict[str, Any], pods: Sequence[dict[str, Any]]) -> WorkloadStatus:
    """An Indexed Job's status, with the exit code of each index's latest pod."""
    spec = obj.get("spec", {})
    st = obj.get("status", {})
    replicas = int(spec.get("completions") or 1)
    succeeded = int(st.get("succeeded") or 0)
    failed = int(st.get("failed") or 0)
    ready = int(st.get("ready") or 0)
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    unschedulable, messages = _pod_messages(live)

    latest: dict[int, dict[str, Any]] = {}
    for pod in pods:
        index = pod["metadata"].get("annotations", {}).get(r.JOB_INDEX_ANNOTATION)
        if index is None or not index.isdigit():
            continue
        i = int(index)
        created = pod["metadata"].get("creationTimestamp", "")
        if i not in latest or created >= latest[i]["metadata"].get("creationTimestamp", ""):
            latest[i] = pod
    exit_codes = tuple(_exit_code(latest[i]) if i in latest else None for i in range(replicas))

    failed_cond = _condition(obj, "Failed") or _condition(obj, "FailureTarget")
    done_cond = _condition(obj, "Complete") or _condition(obj, "SuccessCriteriaMet")
    if failed_cond is not None:
        phase = WorkloadPhase.FAILED
        messages.insert(0, f"{failed_cond.get('reason', '')}: {failed_cond.get('message', '')}")
    elif done_cond is not None:
        phase = WorkloadPhase.SUCCEEDED
    elif unschedulable or not any(p.get("status", {}).get("phase") == "Running" for p in live):
        phase = WorkloadPhase.PENDING
    else:
        phase = WorkloadPhase.RUNNING
    return WorkloadStatus(
        name=workload,
        phase=phase,
        replicas=replicas,
        ready_replicas=ready,
        succeeded=succeeded,
        failed=failed,
        restarts=_restarts(pods),
        message="; ".join(m for m in messages if m.strip(": ")),
        exit_codes=exit_codes,
    )
