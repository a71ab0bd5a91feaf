"""The router's servers: the proxy on the traffic port; metrics, status, health on another.

A request is read whole, its backend chosen by the policy of the configuration in effect when
it arrived, and forwarded with its method, raw path and query, headers (less the hop-by-hop
ones, plus ``X-Forwarded-*``) and body; the backend's answer goes back as it came, with
``X-Gyre-Backend`` naming who answered (what an online experiment attributes outcomes by). A
backend that does not answer (refused, reset, timed out) becomes a 502 whose JSON body names
the route, the backend and the failure. A mirror to the shadow is sent beside the request; its
answer never reaches the client, but once both are in it is compared with the client's
(`gyre.pipelines.router.compare`: the largest absolute difference of their predictions),
counted in ``/status`` and ``gyre_router_shadow_compared_total``/``_difference``.

Every request has an id: the client's ``X-Request-Id`` when it sent a printable one of at most
128 characters, else a new one (a uuid4 in hex). The backend (and the shadow) get it in
``X-Request-Id`` and the client gets it back in the answer's ``X-Request-Id``, 502s included.

With an ``assignment_log`` configured, every request a backend answered (whatever its status;
not the router's own 502s, not mirrors) is a JSON record in that Kafka topic, keyed by the
request's sticky key, else by its id, so an online experiment can join outcomes to variants::

    {"request_id": str, "key": str | null, "variant": <backend name>, "route": <route name>,
     "code": <the backend's HTTP status>, "time": <unix seconds the request arrived at>,
     "prediction": <the backend's answer as JSON; null when not JSON, content-encoded or
                    larger than 64 KiB>}

The log never slows a request down: the record is built after the answer is written and
queued in the producer's bounded queue (`gyre.pipelines._common.recordlog.RecordLog`); when
the queue is full it is dropped and counted. ``/status`` and
``gyre_router_assignments_logged_total{outcome}`` count delivered, dropped and failed records.
Closing the router delivers what is queued, for a few seconds at most.

A configuration change swaps one immutable table (configuration and policy): requests in
flight finish on the table they started with, new ones take the new table, and nothing
listens anew, so a weight change fails no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from aiohttp import web
from gyre.pipelines._common.env import config_path
from gyre.pipelines._common.recordlog import RecordCounts, RecordLog
from gyre.pipelines._common.status import STATUS_PATH
from gyre.pipelines.router.compare import difference
from gyre.pipelines.router.config import AssignmentLog, Backend, RouterConfig, Shadow
from gyre.pipelines.router.policy import POLICIES, AllocationPolicy
from gyre.pipelines.router.status import BackendStatus, RouterStatus, ShadowStatus
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from yarl import URL

log = logging.getLogger("gyre.pipelines.router")

REQUESTS = Counter(
    "gyre_router_requests_total",
    "Requests routed, by backend and the status code returned.",
    ["backend", "code"],
)
ERRORS = Counter(
    "gyre_router_backend_errors_total", "Requests a backend did not answer (answered 502).", ["backend"]
)
LATENCY = Histogram(
    "gyre_router_request_latency_seconds",
    "From a request's arrival to its answer, by backend.",
    ["backend"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SHADOW_REQUESTS = Counter(
    "gyre_router_shadow_requests_total",
    "Mirrored requests, by shadow backend and outcome (answered, failed, dropped).",
    ["backend", "outcome"],
)
ASSIGNMENTS = Counter(
    "gyre_router_assignments_logged_total",
    "Assignment records by outcome (delivered, dropped: the queue was full, failed: Kafka refused).",
    ["outcome"],
)
SHADOW_COMPARED = Counter(
    "gyre_router_shadow_compared_total",
    "Shadow answers compared with the answer the client got, by outcome (same, different, "
    "incomparable: not predictions, or a fallback on either side).",
    ["backend", "outcome"],
)
SHADOW_DIFFERENCE = Histogram(
    "gyre_router_shadow_difference",
    "Largest absolute difference between a shadow's predictions and the client's answer.",
    ["backend"],
    buckets=(1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1),
)
SAME_WITHIN = 1e-6  # predictions closer than this are the same (float32 round trips)
WEIGHT = Gauge("gyre_router_backend_weight", "The configured weight of each backend.", ["backend"])

BACKEND_HEADER = "X-Gyre-Backend"
REQUEST_ID_HEADER = "X-Request-Id"
MAX_REQUEST_ID_CHARS = 128  # a longer (or unprintable) client request id is replaced
MAX_PREDICTION_BYTES = 64 * 1024  # a larger answer is logged without its prediction
# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "proxy-connection"}
)  # fmt: skip
SHUTDOWN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class _Table:
    """The configuration in effect and its policy; replaced whole when the file changes."""

    config: RouterConfig
    policy: AllocationPolicy


@dataclass
class _Counts:
    requests: int = 0
    errors: int = 0
    dropped: int = 0
    # a shadow's answers compared with the client's
    compared: int = 0
    different: int = 0
    incomparable: int = 0
    difference_sum: float = 0.0
    max_difference: float = 0.0


def build_table(config: RouterConfig) -> _Table:
    policy = POLICIES[config.policy](config.route, [b.weight for b in config.backends])
    return _Table(config, policy)


class Router:
    """The proxy's state: the table in effect, per-backend counts, mirrors in flight."""

    def __init__(self, config: RouterConfig, env: Mapping[str, str]) -> None:
        self.env = env
        self.path = config_path(env)
        self.table = build_table(config)
        self.reloads = 0
        self.config_error: str | None = None
        self._raw: bytes | None = None  # the file's content last read
        self._counts: dict[str, _Counts] = {}
        self._mirrors: set[asyncio.Task[bytes | None]] = set()
        self._rng = random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._export_weights(None, config)
        # One count across the logs that reloads open and close: /status counts since start.
        self._assignment_counts = RecordCounts()
        self.assignments = self._open_assignment_log(config.assignment_log)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            # A proxy passes bodies and headers through as they are: no decompression, no
            # headers of its own, and no cookie jar (one client's cookies must not reach another).
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._mirrors:
            await asyncio.wait(self._mirrors, timeout=SHUTDOWN_TIMEOUT_S)
        for task in self._mirrors:
            task.cancel()
        if self._session is not None:
            await self._session.close()
        if self.assignments is not None:
            await asyncio.to_thread(self.assignments.close, SHUTDOWN_TIMEOUT_S)

    # -- traffic --------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        arrived = time.time()
        table = self.table
        cfg = table.config
        body = await request.read()
        key = request.headers.get(cfg.sticky_header) if cfg.sticky_header else None
        backend = cfg.backends[table.policy.choose(key)]
        request_id = request_id_of(request)
        headers = forward_headers(request)
        headers[REQUEST_ID_HEADER] = request_id
        mirror = self._mirror(cfg, cfg.shadow, request, headers, body) if cfg.shadow is not None else None
        counts = self._count(backend.name)
        counts.requests += 1
        try:
            async with self._client().request(
                request.method,
                target(backend.url, request),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
            ) as upstream:
                content = await upstream.read()
                response = web.Response(
                    status=upstream.status,
                    reason=upstream.reason,
                    body=content,
                    headers=answer_headers(upstream.headers, backend.name, request_id),
                )
        except (aiohttp.ClientError, TimeoutError) as e:
            counts.errors += 1
            ERRORS.labels(backend.name).inc()
            response = web.json_response(
                {"error": f"route {cfg.route}: backend {backend.name} did not answer: {describe(e, cfg)}"},
                status=502,
                headers={BACKEND_HEADER: backend.name, REQUEST_ID_HEADER: request_id},
            )
        else:
            if self.assignments is not None:
                # Scheduled, not done here: the answer is written first, and parsing and
                # encoding the record are not the client's wait.
                record = {
                    "request_id": request_id,
                    "key": key,
                    "variant": backend.name,
                    "route": cfg.route,
                    "code": upstream.status,
                    "time": arrived,
                }
                encoded = "Content-Encoding" in upstream.headers
                asyncio.get_running_loop().call_soon(self._log_assignment, record, content, encoded)
            plain = 200 <= upstream.status < 300 and "Content-Encoding" not in upstream.headers
            if mirror is not None and cfg.shadow is not None and plain:
                mirror.add_done_callback(functools.partial(self._compare, cfg.shadow.name, content))
        REQUESTS.labels(backend.name, str(response.status)).inc()
        LATENCY.labels(backend.name).observe(time.perf_counter() - started)
        return response

    def _log_assignment(self, record: dict[str, Any], content: bytes, encoded: bool) -> None:
        """Queue the record of an answered request, keyed by its sticky key, else its id."""
        if self.assignments is None:  # a reload closed the log in the meantime
            return
        record["prediction"] = None if encoded else prediction_of(content)
        self.assignments.log(record, record["key"] if record["key"] is not None else record["request_id"])

    def _open_assignment_log(self, config: AssignmentLog | None) -> RecordLog | None:
        if config is None:
            return None
        return RecordLog(
            config.bootstrap_servers,
            config.topic,
            name="assignment log",
            counter=ASSIGNMENTS,
            counts=self._assignment_counts,
        )

    def _mirror(
        self, cfg: RouterConfig, shadow: Shadow, request: web.Request, headers: CIMultiDict[str], body: bytes
    ) -> asyncio.Task[bytes | None] | None:
        """The mirror's task (its result: the shadow's answer when it answered 2xx), or None
        when this request is not mirrored."""
        if shadow.percent < 100 and self._rng.random() * 100 >= shadow.percent:
            return None
        counts = self._count(shadow.name)
        if len(self._mirrors) >= cfg.shadow_max_in_flight:
            counts.dropped += 1
            SHADOW_REQUESTS.labels(shadow.name, "dropped").inc()
            return None
        counts.requests += 1
        task = asyncio.create_task(
            self._send_mirror(
                shadow, request.method, target(shadow.url, request), headers, body, cfg.timeout_s
            )
        )
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)
        return task

    async def _send_mirror(
        self, shadow: Shadow, method: str, url: URL, headers: CIMultiDict[str], body: bytes, timeout_s: float
    ) -> bytes | None:
        content = None
        try:
            async with self._client().request(
                method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as answer:
                # kept only to compare: a shadow's answer never reaches a client
                data = await answer.read()
                if 200 <= answer.status < 300 and "Content-Encoding" not in answer.headers:
                    content = data
            outcome = "answered"
        except (aiohttp.ClientError, TimeoutError):
            self._count(shadow.name).errors += 1
            outcome = "failed"
        SHADOW_REQUESTS.labels(shadow.name, outcome).inc()
        return content

    def _compare(self, shadow: str, primary: bytes, task: asyncio.Task[bytes | None]) -> None:
        """Compare the shadow's answer with the one the client got, once both are in."""
        if task.cancelled() or task.exception() is not None or task.result() is None:
            return
        result = task.result()
        assert result is not None
        diff = difference(primary, result)
        counts = self._count(shadow)
        if diff is None:
            counts.incomparable += 1
            SHADOW_COMPARED.labels(shadow, "incomparable").inc()
            return
        counts.compared += 1
        counts.difference_sum += diff
        counts.max_difference = max(counts.max_difference, diff)
        same = diff <= SAME_WITHIN
        counts.different += 0 if same else 1
        SHADOW_COMPARED.labels(shadow, "same" if same else "different").inc()
        SHADOW_DIFFERENCE.labels(shadow).observe(diff)

    def _client(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Router.start() was not awaited"
        return self._session

    def _count(self, name: str) -> _Counts:
        counts = self._counts.get(name)
        if counts is None:
            counts = self._counts[name] = _Counts()
        return counts

    # -- configuration ----------------------------------------------------------------------------

    async def watch_config(self) -> None:
        """Reread the config file every ``reload_interval_s`` (see `reload`)."""
        while True:
            await asyncio.sleep(self.table.config.reload_interval_s)
            self.reload()

    def reload(self) -> None:
        """Take the config file's content if it changed and is valid; else keep the table in
        effect and say why in ``config_error``."""
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except OSError as e:
            self._reject(f"cannot read {self.path}: {e}")
            return
        if raw == self._raw:
            return
        self._raw = raw
        old = self.table.config
        try:
            new = RouterConfig.from_text(raw, self.env)
        except (ValueError, TypeError) as e:  # ConfigError, or a value of the wrong type
            self._reject(str(e))
            return
        # What the servers were started with stays.
        new = replace(
            new,
            host=old.host,
            port=old.port,
            metrics_port=old.metrics_port,
            max_body_bytes=old.max_body_bytes,
        )
        self.config_error = None
        if new == old:
            return
        self.table = build_table(new)
        self.reloads += 1
        self._export_weights(old, new)
        if new.assignment_log != old.assignment_log:
            retired, self.assignments = self.assignments, self._open_assignment_log(new.assignment_log)
            if retired is not None:  # delivers what it queued, off the event loop
                threading.Thread(target=retired.close, name="assignment-log-close", daemon=True).start()
        log.info("Reloaded route %s: %s", new.route, describe_backends(new.backends))

    def _reject(self, error: str) -> None:
        if error != self.config_error:
            log.warning("Kept the configuration of route %s: %s", self.table.config.route, error)
        self.config_error = error

    def _export_weights(self, old: RouterConfig | None, new: RouterConfig) -> None:
        for b in old.backends if old else ():
            if b.name not in {n.name for n in new.backends}:
                WEIGHT.remove(b.name)
        for b in new.backends:
            WEIGHT.labels(b.name).set(b.weight)

    # -- metrics, status, health -------------------------------------------------------------------

    def status(self) -> RouterStatus:
        cfg = self.table.config
        shadow = None
        if cfg.shadow is not None:
            c = self._count(cfg.shadow.name)
            shadow = ShadowStatus(
                name=cfg.shadow.name,
                url=cfg.shadow.url,
                percent=cfg.shadow.percent,
                requests=c.requests,
                errors=c.errors,
                dropped=c.dropped,
                compared=c.compared,
                different=c.different,
                incomparable=c.incomparable,
                mean_difference=c.difference_sum / c.compared if c.compared else None,
                max_difference=c.max_difference if c.compared else None,
            )
        return RouterStatus(
            route=cfg.route,
            policy=cfg.policy,
            sticky_header=cfg.sticky_header,
            backends=[
                BackendStatus(
                    name=b.name,
                    url=b.url,
                    weight=b.weight,
                    requests=self._count(b.name).requests,
                    errors=self._count(b.name).errors,
                )
                for b in cfg.backends
            ],
            shadow=shadow,
            reloads=self.reloads,
            config_error=self.config_error,
            assignments_logged=self._assignment_counts.delivered,
            assignments_dropped=self._assignment_counts.dropped,
            assignments_failed=self._assignment_counts.failed,
        )

    async def handle_status(self, request: web.Request) -> web.Response:
        return web.Response(body=self.status().model_dump_json(), content_type="application/json")

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"route": self.table.config.route, "ready": True})


def target(base: str, request: web.Request) -> URL:
    """The backend's URL for ``request``: its base (and prefix), then the raw path and query."""
    return URL(base + request.raw_path, encoded=True)


def forward_headers(request: web.Request) -> CIMultiDict[str]:
    """The request's end-to-end headers, with this hop added to ``X-Forwarded-*``."""
    drop = HOP_BY_HOP | {"host", "content-length"}
    drop |= connection_options(request.headers)
    out = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in drop)
    peer = request.remote or ""
    forwarded_for = out.popall("X-Forwarded-For", [])
    out["X-Forwarded-For"] = ", ".join([*forwarded_for, peer]) if peer else ", ".join(forwarded_for)
    out.setdefault("X-Forwarded-Host", request.host)
    out.setdefault("X-Forwarded-Proto", request.scheme)
    return out


def answer_headers(headers: CIMultiDictProxy[str], backend: str, request_id: str) -> CIMultiDict[str]:
    drop = HOP_BY_HOP | {"content-length"}
    drop |= connection_options(headers)
    out = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)
    out[BACKEND_HEADER] = backend
    out[REQUEST_ID_HEADER] = request_id
    return out


def request_id_of(request: web.Request) -> str:
    """The client's ``X-Request-Id`` when it is a sensible one, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if 0 < len(given) <= MAX_REQUEST_ID_CHARS and given.isascii() and given.isprintable():
        return given
    return uuid.uuid4().hex


def prediction_of(content: bytes) -> Any:
    """A backend's answer as JSON; None when it is not JSON or too large to log."""
    if len(content) > MAX_PREDICTION_BYTES:
        return None
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return None


def connection_options(headers: CIMultiDictProxy[str]) -> set[str]:
    """The headers ``Connection`` names: hop-by-hop as well (RFC 9110 7.6.1)."""
    return {name.strip().lower() for value in headers.getall("Connection", ()) for name in value.split(",")}


def describe(error: BaseException, cfg: RouterConfig) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {cfg.timeout_s:g} s"
    return f"{type(error).__name__}: {error}"


def describe_backends(backends: tuple[Backend, ...]) -> str:
    return ", ".join(f"{b.name} ({b.url}) weight {b.weight:g}" for b in backends)


async def run(config: RouterConfig, env: Mapping[str, str]) -> None:
    """Serve until SIGTERM or SIGINT; then stop taking requests and finish those in flight."""
    router = Router(config, env)
    await router.start()
    proxy = web.Application(client_max_size=config.max_body_bytes)
    proxy.router.add_route("*", "/{tail:.*}", router.handle)
    admin = web.Application()
    admin.router.add_get("/metrics", router.handle_metrics)
    admin.router.add_get(STATUS_PATH, router.handle_status)
    admin.router.add_get("/healthz", router.handle_healthz)
    runners = [
        web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S) for app in (proxy, admin)
    ]
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], config.host, config.port).start()
    await web.TCPSite(runners[1], config.host, config.metrics_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch = asyncio.create_task(router.watch_config())
    log.info(
        "Route %s listening on %s:%d (metrics and status on %d): %s",
        config.route,
        config.host,
        config.port,
        config.metrics_port,
        describe_backends(config.backends),
    )
    await stop.wait()
    watch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watch
    for runner in runners:
        await runner.cleanup()
    await router.close()


def serve(config: RouterConfig) -> None:
    asyncio.run(run(config, os.environ))
