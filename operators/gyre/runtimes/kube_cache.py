"""A watch-fed copy of the objects Gyre manages (an informer): reads cost no API call.

`ObjectCache` lists, then watches, each kind it is given, label-selected (by default: every
object Gyre manages) in the namespaces it is given (or all). The kubernetes runtime reads its
controllers and pods from it instead of listing them on every pass, skips applies whose
result it can already see, and its listeners hear of every change, so an owner reconciles
when something of its own moves rather than polling for it.

Consistency: the cache holds what the watch delivered, plus what this process wrote itself
(`upsert` with the object an apply returned; an older watch event never replaces a newer
object). A watch that breaks resumes from the last resourceVersion it saw; one whose
resourceVersion expired (410) relists and replaces that kind's objects, reporting those gone
as deleted. Each (kind, namespace) watch runs in a thread of its own; listeners are called in
those threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from gyre.runtimes.kube_api import REQUESTS, KubeApi
from gyre.runtimes.shapes.base import ResourceKind

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 240  # the API server ends a watch after this; it is resumed at once
RETRY_S = 1.0  # after a failed list or watch
SYNC_TIMEOUT_S = 30.0

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"

Listener = Callable[[ResourceKind, str, dict[str, Any]], None]
"""``(kind, event type, object)``, called in a watch thread."""


def _rv(obj: Mapping[str, Any]) -> int | None:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion", ""))
    except ValueError:
        return None


def _newer(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    if old is None:
        return True
    a, b = _rv(new), _rv(old)
    return a is None or b is None or a >= b


class ObjectCache:
    """Objects of ``kinds`` matching ``selector`` in ``namespaces`` (empty: all namespaces)."""

    def __init__(
        self,
        api_client: ApiClient,
        kinds: Sequence[ResourceKind],
        selector: str,
        namespaces: Sequence[str] = (),
    ) -> None:
        self.kube = KubeApi(api_client)
        self._api = api_client
        self._kinds = tuple(kinds)
        self._selector = selector
        self._namespaces: tuple[str | None, ...] = tuple(namespaces) or (None,)
        self._lock = threading.Lock()
        # (kind, namespace, name) → object
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._listeners: list[Listener] = []
        self._synced = {(k.kind, ns): threading.Event() for k in self._kinds for ns in self._namespaces}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._responses: set[Any] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        for kind in self._kinds:
            for ns in self._namespaces:
                t = threading.Thread(
                    target=self._run, args=(kind, ns), daemon=True, name=f"gyre-watch-{kind.plural}"
                )
                t.start()
                self._threads.append(t)

    def wait_synced(self, timeout_s: float = SYNC_TIMEOUT_S) -> bool:
        """Whether every watch has listed its objects within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        return all(ev.wait(max(0.0, deadline - time.monotonic())) for ev in self._synced.values())

    @property
    def synced(self) -> bool:
        return all(ev.is_set() for ev in self._synced.values())

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            responses = list(self._responses)
        for resp in responses:  # ends a watch blocked on its read
            with contextlib.suppress(Exception):  # already closed
                # shutdown() interrupts the read from here; close() would wait for the reading
                # thread to receive something (up to the watch's timeout).
                getattr(resp, "shutdown", resp.close)()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # -- reads and own writes -----------------------------------------------------------------

    def get(self, kind: ResourceKind, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((kind.kind, namespace, name))

    def list(self, kind: ResourceKind, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """The objects of ``kind`` in ``namespace`` whose labels include ``labels``."""
        with self._lock:
            objs = [o for (k, ns, _), o in self._objects.items() if k == kind.kind and ns == namespace]
        return [o for o in objs if _matches(o, labels)]

    def upsert(self, kind: ResourceKind, obj: dict[str, Any]) -> None:
        """An object this process wrote, as the API server returned it."""
        md = obj.get("metadata") or {}
        key = (kind.kind, str(md.get("namespace", "")), str(md.get("name", "")))
        with self._lock:
            if _newer(obj, self._objects.get(key)):
                self._objects[key] = obj

    def forget(self, kind: ResourceKind, namespace: str, name: str) -> None:
        """An object this process deleted."""
        with self._lock:
            self._objects.pop((kind.kind, namespace, name), None)

    # -- the watch ------------------------------------------------------------------------------

    def _run(self, kind: ResourceKind, namespace: str | None) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist(kind, namespace)
                    self._synced[(kind.kind, namespace)].set()
                rv = self._watch(kind, namespace, rv)
            except Exception as e:
                if self._stop.is_set():
                    return
                if isinstance(e, ApiException) and e.status == 410:
                    rv = None  # expired: list again
                    continue
                log.warning("Watching %s failed (retrying in %gs): %s", kind.plural, RETRY_S, e)
                self._stop.wait(RETRY_S)

    def _collection(self, kind: ResourceKind, namespace: str | None) -> str:
        if namespace is not None:
            return kind.collection(namespace)
        prefix = "/api/v1" if kind.api_version == "v1" else f"/apis/{kind.api_version}"
        return f"{prefix}/{kind.plural}"

    def _relist(self, kind: ResourceKind, namespace: str | None) -> str:
        _, body = self.kube.request(
            "GET", self._collection(kind, namespace), query=[("labelSelector", self._selector)]
        )
        items: list[dict[str, Any]] = body.get("items") or []
        listed = {}
        for item in items:
            md = item.setdefault("metadata", {})
            md.setdefault("namespace", namespace or "")
            listed[(kind.kind, str(md.get("namespace", "")), str(md.get("name", "")))] = item
        with self._lock:
            gone = [
                (key, obj)
                for key, obj in self._objects.items()
                if key[0] == kind.kind and (namespace is None or key[1] == namespace) and key not in listed
            ]
            for key, _ in gone:
                del self._objects[key]
            changed = []
            for key, item in listed.items():
                old = self._objects.get(key)
                if _newer(item, old):
                    self._objects[key] = item
                    if old is None or _rv(old) != _rv(item):
                        changed.append((ADDED if old is None else MODIFIED, item))
        for _, obj in gone:
            self._notify(kind, DELETED, obj)
        for event, obj in changed:
            self._notify(kind, event, obj)
        return str((body.get("metadata") or {}).get("resourceVersion", ""))

    def _watch(self, kind: ResourceKind, namespace: str | None, rv: str) -> str:
        """Streams events from ``rv`` until the API server ends the watch; the last rv seen."""
        for event in self._events(kind, namespace, rv):
            obj: dict[str, Any] = event.get("object") or {}
            etype = str(event.get("type", ""))
            if etype == "ERROR":
                code = int(obj.get("code") or 0)
                raise ApiException(status=code, reason=str(obj.get("message", "watch error")))
            new_rv = (obj.get("metadata") or {}).get("resourceVersion")
            if new_rv:
                rv = str(new_rv)
            if etype == "BOOKMARK":
                continue
            md = obj.get("metadata") or {}
            key = (kind.kind, str(md.get("namespace", "")), str(md.get("name", "")))
            with self._lock:
                if etype == DELETED:
                    self._objects.pop(key, None)
                elif _newer(obj, self._objects.get(key)):
                    self._objects[key] = obj
                else:
                    continue  # this process already holds a newer copy (its own write)
            self._notify(kind, etype, obj)
        return rv

    def _events(self, kind: ResourceKind, namespace: str | None, rv: str) -> Iterator[dict[str, Any]]:
        REQUESTS.labels("WATCH", kind.plural).inc()
        serialized = self._api.param_serialize(
            method="GET",
            resource_path=self._collection(kind, namespace),
            query_params=[
                ("watch", "true"),
                ("labelSelector", self._selector),
                ("resourceVersion", rv),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", str(WATCH_TIMEOUT_S)),
            ],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        method, url, headers, data, post = serialized
        response = self._api.call_api(
            method, url, header_params=headers, body=data, post_params=post,
            _request_timeout=(10, WATCH_TIMEOUT_S + 30),
        )  # fmt: skip
        if not 200 <= response.status < 300:
            raise ApiException(status=response.status, reason=response.reason)
        raw = response.response
        with self._lock:
            self._responses.add(raw)
        try:
            for line in iter_resp_lines(raw):  # type: ignore[no-untyped-call]
                if self._stop.is_set():
                    return
                if line:
                    yield json.loads(line)
        finally:
            with self._lock:
                self._responses.discard(raw)
            raw.release_conn()

    def _notify(self, kind: ResourceKind, event: str, obj: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                listener(kind, event, obj)
            except Exception:
                log.exception("A listener of %s events failed", kind.plural)


def _matches(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())
