"""The Kubernetes API calls Gyre makes, in one place: server-side apply under one field
manager, list by label, get, delete. The runtime (workloads) and the child-object applier
(other API objects a reconcile owns) both go through it: one apply path. Calls block; callers
run them in a worker thread. It uses the official client's raw `call_api`, for server-side
apply, which the typed APIs do not offer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from gyre.runtimes.shapes.base import ResourceKind

log = logging.getLogger(__name__)

FIELD_MANAGER = "gyre"
REQUEST_TIMEOUT_S = 30.0
RECREATE_TIMEOUT_S = 60.0
# How a child is removed when an immutable field changed and it must be recreated: a Job is
# a run, so its pods go with it; a StatefulSet's pods and claims are orphaned and adopted by
# the new StatefulSet, so data survives a change of, say, volume size.
_RECREATE_PROPAGATION = {"StatefulSet": "Orphan"}

REQUESTS = Counter(
    "gyre_kube_requests",
    "Requests Gyre's runtime and child objects sent to the API server (watches: one per start)",
    ["verb", "resource"],
)


def _resource_of(method: str, path: str, query: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """(verb, resource) as the API server's own metrics name them: APPLY for a server-side
    apply, LIST/WATCH for collections; the resource is the path's plural (and subresource)."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if "namespaces" in parts and parts.index("namespaces") + 2 < len(parts):
        rest = parts[parts.index("namespaces") + 2 :]
    else:
        rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    resource = "/".join([rest[0], *rest[2:3]]) if rest else "(none)"
    names_one = len(rest) >= 2
    verb = method
    if method == "PATCH" and dict(query).get("fieldManager") and "force" in dict(query):
        verb = "APPLY"
    elif method == "GET" and rest and not names_one:
        verb = "WATCH" if dict(query).get("watch") == "true" else "LIST"
    return verb, resource


class KubeApi:
    def __init__(self, api_client: ApiClient) -> None:
        self._api = api_client

    def apply(self, kind: ResourceKind, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply under the one field manager, forcing conflicts (Gyre is the
        authority over what it renders, so drift is repaired); an object whose immutable
        fields changed is recreated. Returns the object as stored."""
        ns = manifest["metadata"]["namespace"]
        name = manifest["metadata"]["name"]
        try:
            status, stored = self._server_side_apply(kind, ns, name, manifest)
        except ApiException as e:
            if e.status != 422:
                raise
            existing = self.get(kind, ns, name)
            if existing is None:
                raise
            # An immutable field changed (a Job's template, a StatefulSet's claims, a
            # Service's clusterIP): replace the object.
            log.info("Recreating %s %s/%s: %s", kind.kind, ns, name, reason(e))
            self.delete(kind, ns, name, _RECREATE_PROPAGATION.get(kind.kind, "Background"))
            self.wait_gone(kind, ns, name, existing["metadata"]["uid"])
            status, stored = self._server_side_apply(kind, ns, name, manifest)
        if status == 201:
            log.info("Created %s %s/%s", kind.kind, ns, name)
        else:
            log.debug("Applied %s %s/%s", kind.kind, ns, name)
        return stored

    def _server_side_apply(
        self, kind: ResourceKind, ns: str, name: str, manifest: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        return self.request(
            "PATCH",
            kind.path(ns, name),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            # JSON is YAML: the apply patch content type accepts it as is.
            body=manifest,
            content_type="application/apply-patch+yaml",
        )

    def list(self, kind: ResourceKind, ns: str, selector: str) -> list[dict[str, Any]]:
        _, body = self.request("GET", kind.collection(ns), query=[("labelSelector", selector)])
        items: list[dict[str, Any]] = body.get("items") or []
        return items

    def get(self, kind: ResourceKind, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", kind.path(ns, name))[1]
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def delete(self, kind: ResourceKind, ns: str, name: str, propagation: str) -> None:
        try:
            self.request(
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

    def wait_gone(self, kind: ResourceKind, ns: str, name: str, uid: str) -> None:
        deadline = time.monotonic() + RECREATE_TIMEOUT_S
        delay = 0.05
        while time.monotonic() < deadline:
            current = self.get(kind, ns, name)
            if current is None or current["metadata"]["uid"] != uid:
                return
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise TimeoutError(f"{kind.kind} {ns}/{name} was not deleted in {RECREATE_TIMEOUT_S}s")

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Iterable[tuple[str, str]] = (),
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> tuple[int, dict[str, Any]]:
        query = list(query)
        REQUESTS.labels(*_resource_of(method, path, query)).inc()
        serialized = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query,
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
            _request_timeout=timeout_s,
        )
        raw: bytes = response.response.data
        status: int = response.status
        if not 200 <= status < 300:
            raise ApiException(status=status, reason=response.reason, body=raw.decode("utf-8", "replace"))
        return status, json.loads(raw) if raw else {}


def reason(e: ApiException) -> str:
    try:
        message: str = json.loads(e.body or "{}").get("message", "")
    except ValueError:
        message = ""
    return message or str(e.reason)
