"""The collector's HTTP service: ``POST /v1/events`` → Kafka, plus ``/metrics``, ``/status``
(`CollectorStatus`) and ``/healthz``.

Per request: decode the JSON array (orjson), validate each event with the compiled schema
validator, produce valid events to the topic (key = the schema's key field) and invalid ones
to the dead-letter topic, then wait until Kafka has acknowledged every record of the request
(``acks=all``, idempotent producer) before answering. So ``accepted`` in a response means the
event is durably in the topic, and an event is never dropped silently: it is ``accepted``,
``rejected`` (invalid; written to the dead-letter topic when one is configured) or ``failed``
(Kafka did not take it in time; the client should retry it).

Delivery reports are served on the event loop itself, by a task calling ``producer.poll(0)``
every millisecond while requests wait on Kafka (every 100 ms otherwise); each request waits
on one asyncio future that resolves when its last record is acknowledged, so the loop never
blocks on Kafka. Serving them on the loop, rather than on a thread blocked in
``producer.poll``, matters for throughput: the client library takes and releases the GIL
around every single report, and a second Python thread doing so contends with the loop for
the GIL a thousand times per request.

The hot path is one pass over a request's events: validate, serialize, produce. Nothing of a
valid event is kept after it is produced (the client library copies it); the rare failed
delivery report is matched back to its event by serializing the request's events again.

Backpressure: when the producer's queue cannot take a request's records, the request is
answered 429 with ``Retry-After`` before anything is produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from aiohttp import web
from confluent_kafka import KafkaError, Message, Producer
from gyre.pipelines._common.status import STATUS_PATH
from gyre.pipelines.collector.config import CollectorConfig
from gyre.pipelines.collector.status import CollectorStatus
from gyre.pipelines.collector.validate import compile_validator
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("gyre.collector")

EVENTS_ACCEPTED = Counter(
    "gyre_collector_events_accepted_total", "Events validated and acknowledged by Kafka."
)
EVENTS_REJECTED = Counter(
    "gyre_collector_events_rejected_total", "Events that failed validation.", ["reason"]
)
DEAD_LETTERED = Counter(
    "gyre_collector_dead_lettered_total", "Rejected events produced to the dead-letter topic."
)
EVENTS_FAILED = Counter("gyre_collector_events_failed_total", "Events Kafka did not acknowledge in time.")
REQUESTS = Counter("gyre_collector_requests_total", "HTTP requests to /v1/events.", ["code"])
PRODUCE_LATENCY = Histogram(
    "gyre_collector_produce_latency_seconds",
    "From a request's first produce to Kafka's acknowledgement of its last record.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REQUEST_LATENCY = Histogram(
    "gyre_collector_request_latency_seconds",
    "Handling time of /v1/events requests.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUED = Gauge("gyre_collector_queued_records", "Records in the producer queue.")

DLQ_HEADER_REASON = "gyre-reason"
DLQ_HEADER_CODE = "gyre-reason-code"
DLQ_HEADER_TOPIC = "gyre-source-topic"


class TokenFile:
    """A bearer token read from a file, re-read when the file changes (Secret rotation)."""

    def __init__(self, path: str, recheck_s: float = 2.0) -> None:
        self.path = path
        self.recheck_s = recheck_s
        self._mtime = -1.0
        self._checked = 0.0
        self._expected = b""
        self._load()
        if not self._expected:
            raise ValueError(f"auth token file {path} is empty")

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
            if st.st_mtime != self._mtime:
                with open(self.path, "rb") as f:
                    token = f.read().strip()
                if token:  # an empty file mid-rotation keeps the last good token
                    self._expected = b"Bearer " + token
                self._mtime = st.st_mtime
        except OSError as e:
            if not self._expected:
                raise ValueError(f"cannot read auth token file {self.path}: {e}") from e
            log.warning("Kept the previous auth token: %s", e)

    def check(self, header: str | None) -> bool:
        now = time.monotonic()
        if now - self._checked > self.recheck_s:
            self._checked = now
            self._load()
        return header is not None and hmac.compare_digest(header.encode(), self._expected)


class _Batch:
    """The records of one request in flight; resolved when every delivery report is in.

    One bound method serves every record's delivery report (no per-record closure); the
    rare failed report is matched back to its event by value when the response is built.
    """

    __slots__ = ("done", "expected", "failures", "future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.done = 0
        self.expected = -1  # set once everything is produced
        self.failures: list[tuple[bytes | None, str]] = []

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failures.append((msg.value(), err.str()))
        self.done += 1
        if self.done == self.expected:
            # Thread-safe: at shutdown `Producer.flush` serves reports on an executor thread.
            self.loop.call_soon_threadsafe(self._resolve)

    def seal(self, expected: int) -> None:
        self.expected = expected
        if self.done == expected:
            self._resolve()

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def failed_indices(self, sent: Iterable[tuple[int, bytes]]) -> dict[int, str]:
        """Event index → error of each failed report (identical values are interchangeable).

        ``sent``: (event index, record value) of every record produced, in order.
        """
        if not self.failures:
            return {}
        by_value: dict[bytes, list[int]] = {}
        for i, value in sent:
            by_value.setdefault(value, []).append(i)
        out: dict[int, str] = {}
        for failed_value, err in self.failures:
            candidates = by_value.get(failed_value or b"")
            if candidates:
                out[candidates.pop(0)] = err
        return out


class Collector:
    """The service's state: config, compiled validator, producer and its delivery thread."""

    def __init__(self, cfg: CollectorConfig) -> None:
        self.cfg = cfg
        self.validate = compile_validator(cfg.schema)
        self.producer = Producer(
            {**cfg.producer_settings(), "logger": logging.getLogger("gyre.collector.kafka")}
        )
        self.tokens = TokenFile(cfg.auth_token_file) if cfg.auth_token_file else None
        self.ready = False
        # since the process started: what /status reports (the Prometheus counters say the same)
        self.counts = {"accepted": 0, "rejected": 0, "failed": 0}
        self._waiting = 0  # requests waiting for delivery reports
        self._wake: asyncio.Event | None = None  # set when a request starts waiting
        QUEUED.set_function(lambda: len(self.producer))

    async def serve_delivery_reports(self) -> None:
        """Serve the producer's delivery reports (and its logs and errors) on the event loop.

        Every millisecond while a request waits on Kafka, so a report adds at most ~1 ms to
        a request; every 100 ms when none does, which costs next to nothing when idle.
        """
        self._wake = wake = asyncio.Event()
        poll = self.producer.poll
        sleep = asyncio.sleep
        while True:
            poll(0)
            if self._waiting:
                await sleep(0.001)
                continue
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 0.1)

    def close(self, timeout_s: float = 10.0) -> None:
        left = self.producer.flush(timeout_s)
        if left:
            log.warning("Stopped with %d records not acknowledged by Kafka", left)

    # -- HTTP handlers --------------------------------------------------------------------

    async def handle_events(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            return await self._handle_events(request)
        finally:
            REQUEST_LATENCY.observe(time.perf_counter() - started)

    def _reply(self, code: int, body: dict[str, Any], retry: bool = False) -> web.Response:
        REQUESTS.labels(str(code)).inc()
        headers = {"Retry-After": str(self.cfg.retry_after_s)} if retry else None
        return web.Response(
            status=code, body=orjson.dumps(body), content_type="application/json", headers=headers
        )

    async def _handle_events(self, request: web.Request) -> web.Response:
        if self.tokens is not None and not self.tokens.check(request.headers.get("Authorization")):
            REQUESTS.labels("401").inc()
            return web.Response(
                status=401,
                body=b'{"error": "missing or invalid bearer token"}',
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="gyre"'},
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reply(413, {"error": f"body exceeds {self.cfg.max_request_bytes} bytes"})
        try:
            events = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            return self._reply(400, {"error": f"body is not valid JSON: {e}"})
        if not isinstance(events, list):
            return self._reply(400, {"error": "body must be a JSON array of events"})
        n = len(events)
        if n > self.cfg.max_events_per_request:
            return self._reply(
                413, {"error": f"more than {self.cfg.max_events_per_request} events in a request"}
            )
        if len(self.producer) + n > self.cfg.max_queued_events:
            return self._reply(429, {"error": "the producer queue is full; retry later"}, retry=True)
        errors_only = request.query.get("results") == "errors"
        return await self._produce(events, errors_only)

    async def _produce(self, events: list[Any], errors_only: bool) -> web.Response:
        cfg = self.cfg
        batch = _Batch(asyncio.get_running_loop())
        produce = self.producer.produce
        validate = self.validate
        dumps = orjson.dumps
        topic, key_field = cfg.topic, cfg.schema.key_field
        delivered = batch.delivered
        rejected: dict[int, tuple[str, str]] = {}
        unsent: dict[int, str] = {}
        produced = 0
        t0 = time.perf_counter()
        for i, e in enumerate(events):
            verdict = validate(e)
            try:
                if verdict is None:
                    k = e.get(key_field)
                    # Positional arguments: the client library parses them faster than keywords
                    # (partition -1 = the partitioner's choice by key).
                    produce(
                        topic, dumps(e), None if k is None else k if type(k) is str else dumps(k),
                        -1, delivered,
                    )  # fmt: skip
                else:
                    rejected[i] = verdict
                    if cfg.dead_letter_topic is None:
                        continue
                    self._dead_letter(e, verdict, delivered)
                produced += 1
            except BufferError:
                # Only when other requests filled the queue since the admission check.
                unsent[i] = "the producer queue is full; retry this event"
            except Exception as ex:  # e.g. a record over message.max.bytes
                unsent[i] = f"not produced: {ex}"
        batch.seal(produced)
        if produced:
            timeout = cfg.delivery_timeout_ms / 1000 + 5
            self._waiting += 1
            if self._wake is not None:
                self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(batch.future), timeout)
            except TimeoutError:
                log.error("Delivery reports for %d records did not arrive in time", produced)
            finally:
                self._waiting -= 1
            PRODUCE_LATENCY.observe(time.perf_counter() - t0)
        return self._respond(events, rejected, unsent, batch, errors_only)

    def _dead_letter_value(self, e: Any, verdict: tuple[str, str]) -> bytes:
        return orjson.dumps({"reason": verdict[1], "code": verdict[0], "event": e})

    def _dead_letter(self, e: Any, verdict: tuple[str, str], delivered: Any) -> None:
        """Produce a rejected event, with why, to the dead-letter topic."""
        topic = self.cfg.topic
        k = e.get(self.cfg.schema.key_field) if type(e) is dict else None
        self.producer.produce(
            self.cfg.dead_letter_topic or "",
            self._dead_letter_value(e, verdict),
            k if type(k) is str else None,
            headers=[
                (DLQ_HEADER_REASON, verdict[1]),
                (DLQ_HEADER_CODE, verdict[0]),
                (DLQ_HEADER_TOPIC, topic),
            ],
            on_delivery=delivered,
        )
        DEAD_LETTERED.inc()

    def _sent(
        self, events: list[Any], rejected: dict[int, tuple[str, str]], unsent: dict[int, str]
    ) -> Iterator[tuple[int, bytes]]:
        """(index, record value) of each record a request produced, rebuilt from its events.

        Serialization is deterministic and valid events are not changed after they are
        produced, so this yields the very bytes that were produced.
        """
        dlq = self.cfg.dead_letter_topic is not None
        for i, e in enumerate(events):
            if i in unsent:
                continue
            verdict = rejected.get(i)
            if verdict is None:
                yield i, orjson.dumps(e)
            elif dlq:
                yield i, self._dead_letter_value(e, verdict)

    def _respond(
        self,
        events: list[Any],
        rejected: dict[int, tuple[str, str]],
        unsent: dict[int, str],
        batch: _Batch,
        errors_only: bool,
    ) -> web.Response:
        n = len(events)
        # Records without a report yet (only after the wait timed out) have an unknown fate:
        # the client is told to retry them, which the idempotent topic consumer tolerates.
        unknown = batch.expected - batch.done > 0
        if errors_only and not (rejected or unsent or unknown or batch.failures):
            # The common case, without a pass over the events.
            EVENTS_ACCEPTED.inc(n)
            self.counts["accepted"] += n
            return self._reply(200, {"accepted": n, "rejected": 0, "failed": 0, "results": []})
        failed: dict[int, str] = dict(unsent)
        sent = self._sent(events, rejected, unsent)
        for i, err in batch.failed_indices(sent).items():
            if i in rejected:
                failed[i] = f"dead-letter write failed ({err}); event is invalid: {rejected[i][1]}"
            else:
                failed[i] = f"Kafka did not acknowledge the event: {err}"
        results: list[dict[str, Any]] = []
        counts = {"accepted": 0, "rejected": 0, "failed": 0}
        for i in range(n):
            if i in failed:
                results.append({"index": i, "status": "failed", "reason": failed[i]})
                counts["failed"] += 1
            elif i in rejected:
                code, reason = rejected[i]
                results.append({"index": i, "status": "rejected", "reason": reason, "code": code})
                counts["rejected"] += 1
                EVENTS_REJECTED.labels(code).inc()
            elif unknown:
                reason = "no delivery report in time; retry the event"
                results.append({"index": i, "status": "failed", "reason": reason})
                counts["failed"] += 1
            else:
                counts["accepted"] += 1
                if not errors_only:
                    results.append({"index": i, "status": "accepted"})
        EVENTS_ACCEPTED.inc(counts["accepted"])
        EVENTS_FAILED.inc(counts["failed"])
        for key, value in counts.items():
            self.counts[key] += value
        status = 503 if n and counts["failed"] == n else 200
        return self._reply(status, {**counts, "results": results}, retry=status == 503)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def status(self) -> CollectorStatus:
        return CollectorStatus(
            topic=self.cfg.topic, ready=self.ready, queued=len(self.producer), **self.counts
        )

    async def handle_status(self, request: web.Request) -> web.Response:
        return web.Response(body=self.status().model_dump_json(), content_type="application/json")

    async def handle_healthz(self, request: web.Request) -> web.Response:
        body = {"ready": self.ready, "topic": self.cfg.topic, "queued": len(self.producer)}
        return web.Response(
            status=200 if self.ready else 503, body=orjson.dumps(body),
            content_type="application/json",
        )  # fmt: skip

    async def watch_topic(self) -> None:
        """Keep ``ready`` true while the producer can see the topic's metadata."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                md = await loop.run_in_executor(None, self.producer.list_topics, self.cfg.topic, 5)
                t = md.topics.get(self.cfg.topic)
                ready = t is not None and t.error is None and bool(t.partitions)
            except Exception as e:  # any failure means not ready
                log.warning("Topic %s metadata unavailable: %s", self.cfg.topic, e)
                ready = False
            if ready != self.ready:
                log.info("Collector for topic %s is %s", self.cfg.topic,
                         "ready" if ready else "not ready")  # fmt: skip
            self.ready = ready
            await asyncio.sleep(5 if ready else 0.5)


def build_app(collector: Collector) -> web.Application:
    app = web.Application(client_max_size=collector.cfg.max_request_bytes)
    app.router.add_post("/v1/events", collector.handle_events)
    app.router.add_get("/metrics", collector.handle_metrics)
    app.router.add_get("/healthz", collector.handle_healthz)
    app.router.add_get(STATUS_PATH, collector.handle_status)

    async def on_startup(app: web.Application) -> None:
        app["reports"] = asyncio.create_task(collector.serve_delivery_reports())
        app["watch"] = asyncio.create_task(collector.watch_topic())

    async def on_cleanup(app: web.Application) -> None:
        app["watch"].cancel()
        app["reports"].cancel()
        await asyncio.get_running_loop().run_in_executor(None, collector.close)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def serve(cfg: CollectorConfig) -> None:
    """Run the collector until SIGTERM/SIGINT."""
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop  # a faster event loop, when installed

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    collector = Collector(cfg)
    log.info("Collector for topic %s listening on %s:%d", cfg.topic, cfg.host, cfg.port)
    web.run_app(
        build_app(collector), host=cfg.host, port=cfg.port, access_log=None, print=None,
        shutdown_timeout=5, loop=loop,
    )  # fmt: skip
