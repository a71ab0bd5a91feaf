"""Child objects on the API server: discovery, server-side apply with owner references,
prune by label, and their stored state read back (see `gyre.core.children`).

The same for both runtimes: Gyre child objects (an Experiment's trial TrainingJobs) live in the
API server even when the workloads run as local processes. Applies go through
`gyre.runtimes.kube_api`, the one apply path (field manager ``gyre``, conflicts forced).

A parent reconciles again when a child's status changes: Gyre kinds through the operator's own
watches (`gyre.operator.handlers`), every other served child kind through a watch of Gyre's
objects of that kind (`gyre.runtimes.kube_cache`), started once discovery finds it served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from gyre.api import GROUP
from gyre.core.children import ChildKind, ChildObject, ChildState
from gyre.core.workload import Owner
from gyre.runtimes import k8s_render as r
from gyre.runtimes.base import OwnerListener
from gyre.runtimes.kube_api import KubeApi
from gyre.runtimes.kube_cache import DELETED, ObjectCache
from gyre.runtimes.shapes import ResourceKind

log = logging.getLogger("gyre.operator.children")

DISCOVERY_TTL_S = 30.0  # a CRD installed later is picked up within this


def _resource(kind: ChildKind) -> ResourceKind:
    return ResourceKind(kind.kind, kind.api_version, kind.plural)


def child_manifest(owner: Owner, child: ChildObject) -> dict[str, Any]:
    """The object to apply: the child's body with its identity, the owner labels and the
    owner reference (the garbage collector removes it with its parent)."""
    body = dict(child.body)
    metadata = dict(body.pop("metadata", None) or {})
    metadata.update(
        name=child.name,
        namespace=owner.namespace,
        labels={**(metadata.get("labels") or {}), **child.labels, **r.owner_labels(owner)},
        ownerReferences=r.owner_references(owner),
    )
    return {"apiVersion": child.type.api_version, "kind": child.type.kind, "metadata": metadata, **body}


def child_state(kind: ChildKind, stored: Mapping[str, Any]) -> ChildState:
    md = stored.get("metadata") or {}
    return ChildState(
        type=kind,
        name=str(md.get("name", "")),
        uid=str(md.get("uid", "")),
        generation=int(md.get("generation") or 0),
        status=dict(stored.get("status") or {}),
        annotations=dict(md.get("annotations") or {}),
        spec=dict(stored.get("spec") or {}),
    )


class KubeChildren:
    """`gyre.controllers.base.Children` on a Kubernetes API server."""

    def __init__(
        self, api_client: ApiClient, discovery_ttl_s: float = DISCOVERY_TTL_S, namespaces: Sequence[str] = ()
    ) -> None:
        self.kube = KubeApi(api_client)
        self._api = api_client
        self._ttl = discovery_ttl_s
        self._namespaces = tuple(namespaces)
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}  # apiVersion → (when, kinds)
        self._listeners: list[OwnerListener] = []
        self._watches: dict[ChildKind, ObjectCache] = {}
        self._statuses: dict[tuple[str, str, str], Any] = {}  # (kind, namespace, name) → status

    def subscribe(self, listener: OwnerListener) -> None:
        self._listeners.append(listener)

    def close(self) -> None:
        for cache in self._watches.values():
            cache.close()
        self._watches.clear()

    def _watch(self, kind: ChildKind) -> None:
        """Follow Gyre's objects of ``kind``: a status change or a deletion is reported."""
        if kind in self._watches or kind.api_version.startswith(f"{GROUP}/") or not self._listeners:
            return
        resource = _resource(kind)
        cache = ObjectCache(self._api, (resource,), f"{r.LABEL_MANAGED_BY}={r.MANAGED_BY}", self._namespaces)

        def on_event(_kind: ResourceKind, event: str, obj: dict[str, Any]) -> None:
            md = obj.get("metadata") or {}
            labels = md.get("labels") or {}
            key = (kind.kind, str(md.get("namespace", "")), str(md.get("name", "")))
            status = None if event == DELETED else obj.get("status")
            if event != DELETED and self._statuses.get(key) == status:
                return
            if event == DELETED:
                self._statuses.pop(key, None)
            else:
                self._statuses[key] = status
            owner_kind, owner_name = labels.get(r.LABEL_OWNER_KIND), labels.get(r.LABEL_OWNER_NAME)
            if owner_kind and owner_name:
                for listener in self._listeners:
                    listener(key[1], owner_kind, owner_name)

        cache.add_listener(on_event)
        cache.start()
        self._watches[kind] = cache
        log.info("Watching %s child objects", kind.kind)

    async def served(self, kinds: Sequence[ChildKind]) -> frozenset[ChildKind]:
        return await asyncio.to_thread(self.served_sync, kinds)

    async def apply(
        self, owner: Owner, kinds: Sequence[ChildKind], wanted: Sequence[ChildObject]
    ) -> dict[tuple[str, str], ChildState]:
        return await asyncio.to_thread(self.apply_sync, owner, kinds, wanted)

    async def list(self, owner: Owner, kinds: Sequence[ChildKind]) -> dict[tuple[str, str], ChildState]:
        return await asyncio.to_thread(self.list_sync, owner, kinds)

    def list_sync(self, owner: Owner, kinds: Sequence[ChildKind]) -> dict[tuple[str, str], ChildState]:
        """The owner's children of the served ``kinds``, as the API server stores them now."""
        out: dict[tuple[str, str], ChildState] = {}
        for kind in self.served_sync(kinds):
            for obj in self.kube.list(_resource(kind), owner.namespace, r.owner_selector(owner)):
                state = child_state(kind, obj)
                out[state.key] = state
        return out

    def served_sync(self, kinds: Sequence[ChildKind]) -> frozenset[ChildKind]:
        served = frozenset(k for k in kinds if k.kind in self._kinds_of(k.api_version))
        for kind in served:
            self._watch(kind)
        return served

    def _kinds_of(self, api_version: str) -> frozenset[str]:
        now = time.monotonic()
        cached = self._groups.get(api_version)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            _, body = self.kube.request("GET", path)
            found = frozenset(
                str(res["kind"]) for res in body.get("resources") or [] if "/" not in str(res.get("name", ""))
            )
        except ApiException as e:
            if e.status != 404:
                raise
            found = frozenset()  # the group/version is not served at all
        if found != (cached[1] if cached else None):
            log.info("Discovered %s: %s", api_version, ", ".join(sorted(found)) or "not served")
        self._groups[api_version] = (now, found)
        return found

    def apply_sync(
        self, owner: Owner, kinds: Sequence[ChildKind], wanted: Sequence[ChildObject]
    ) -> dict[tuple[str, str], ChildState]:
        keys = [c.key for c in wanted]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{owner.key}: two child objects of the same kind and name")
        states: dict[tuple[str, str], ChildState] = {}
        for child in wanted:
            stored = self.kube.apply(_resource(child.type), child_manifest(owner, child))
            states[child.key] = child_state(child.type, stored)
        for kind in self.served_sync(kinds):
            for obj in self.kube.list(_resource(kind), owner.namespace, r.owner_selector(owner)):
                name = str(obj["metadata"]["name"])
                if (kind.kind, name) not in states:
                    self.kube.delete(_resource(kind), owner.namespace, name, "Background")
                    log.info("Pruned %s %s/%s of %s", kind.kind, owner.namespace, name, owner.key)
        return states
