"""A weighted route on the local runtime: the router in front of real backends, over loopback.

The backends are ``toy_workload.py echo`` servers that answer with their workload's name and
echo what they got; the router is `gyre.builders.route.build_route`'s workload, which the
local runtime runs like any other, its backends' addresses resolved by the runtime. The tests
count who answered each request and compare that with the router's ``/status`` as a
controller reads it (`Runtime.read_status`). The assignment log is checked against a real
Kafka broker (`tests.integration.kafka_fixtures`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import json
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from gyre.builders.route import Route, RouteBackend, RouteShadow, build_route
from gyre.controllers.topics import ensure_topic
from gyre.core.topics import TopicSpec
from gyre.core.workload import Owner, Port, Readiness, Workload, WorkloadKind, WorkloadPhase
from gyre.pipelines._common.env import CONFIG_FILE_NAME
from gyre.pipelines.router.config import AssignmentLog, Backend, RouterConfig
from gyre.pipelines.router.status import RouterStatus
from gyre.runtimes.local import LocalRuntime

from tests.integration.kafka_fixtures import consume
from tests.support import eventually_async

if TYPE_CHECKING:
    from tests.integration.kafka_fixtures import LocalKafka

pytest_plugins = ["tests.integration.kafka_fixtures"]
pytestmark = pytest.mark.integration

TOY = str(Path(__file__).parent / "toy_workload.py")
OWNER = Owner(kind="InferenceService", namespace="ns1", name="churn", uid="uid-1")
KEY_HEADER = "X-Gyre-Key"
ROUTER = "router"
N = 2000
CANARY_SHARE = 0.20
TOLERANCE = 0.03
CONCURRENCY = 16
WITHIN_S = 30.0


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), timeout=240))

    return wrapper


def backend(name: str, *args: str, listening: bool = True) -> Workload:
    """An echo server on port ``http`` (or, not ``listening``, a process that owns the port
    and never answers)."""
    mode = ("echo", "--port-env", "GYRE_PORT_HTTP") if listening else ("sleep",)
    return Workload(
        name=name,
        role="predictor",
        kind=WorkloadKind.SERVICE,
        command=("python", TOY, *mode, *args),
        ports=(Port("http", 8080),),
        readiness=Readiness(port="http", period_s=0.1) if listening else None,
    )


def route(stable: float, canary: float, **kwargs: Any) -> Workload:
    backends = (RouteBackend("stable", "http", stable), RouteBackend("canary", "http", canary))
    return build_route(Route(name=ROUTER, backends=backends, sticky_header=KEY_HEADER, **kwargs))


BACKENDS = (backend("stable"), backend("canary"))


@dataclass(frozen=True)
class Answer:
    status: int
    backend: str | None  # what the router says answered (X-Gyre-Backend)
    doc: dict[str, Any] | None  # the backend's echo, when one answered
    set_cookie: str | None = None
    error: str | None = None  # no answer at all (status 0)
    request_id: str | None = None  # the answer's X-Request-Id

    @property
    def who(self) -> str:
        """The workload that answered, by its own word; it must be the one the router names."""
        assert self.status == 200, self
        assert self.doc is not None, self
        assert self.doc["workload"] == self.backend, self
        return self.backend


async def started(rt: LocalRuntime, workloads: Sequence[Workload]) -> str:
    """Apply ``workloads`` and wait until all are ready; the router's URL."""
    await rt.apply(OWNER, workloads)

    async def ready() -> None:
        observed = await rt.observe(OWNER)
        assert all(observed[w.name].phase is WorkloadPhase.READY for w in workloads if w.readiness), observed

    await eventually_async(ready, WITHIN_S, 0.1)
    return f"http://{rt.endpoint(OWNER, ROUTER, 'http')}"


async def router_status(rt: LocalRuntime, workload: Workload) -> RouterStatus:
    bodies = await rt.read_status(OWNER, workload)
    assert len(bodies) == 1, bodies
    status = RouterStatus.parse(bodies[0])
    assert status is not None, bodies
    return status


async def send(
    session: aiohttp.ClientSession,
    url: str,
    key: str | None = None,
    *,
    method: str = "POST",
    path: str = "/v2/models/churn/infer",
    body: bytes = b'{"inputs": []}',
    headers: dict[str, str] | None = None,
) -> Answer:
    h = dict(headers or {})
    if key is not None:
        h[KEY_HEADER] = key
    try:
        async with session.request(method, url + path, data=body, headers=h) as response:
            content = await response.read()
            doc = json.loads(content) if response.status == 200 else None
            return Answer(
                response.status,
                response.headers.get("X-Gyre-Backend"),
                doc,
                response.headers.get("Set-Cookie"),
                request_id=response.headers.get("X-Request-Id"),
            )
    except aiohttp.ClientError as e:  # the router did not answer: a failed request, counted
        return Answer(0, None, None, error=f"{type(e).__name__}: {e}")


async def send_all(session: aiohttp.ClientSession, url: str, keys: Sequence[str | None]) -> list[Answer]:
    """One request per key (None: without a key), ``CONCURRENCY`` at a time, in key order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(key: str | None) -> Answer:
        async with gate:
            return await send(session, url, key)

    return await asyncio.gather(*(one(k) for k in keys))


def share(counts: collections.Counter[str], name: str) -> float:
    return counts[name] / sum(counts.values())


def runtime(tmp_path: Path) -> LocalRuntime:
    return LocalRuntime(tmp_path / "state", grace_period_s=2.0)


@run_async
async def test_requests_without_a_key_split_by_weight_and_status_counts_them(tmp_path: Path) -> None:
    router = route(80, 20)
    async with runtime(tmp_path) as rt, aiohttp.ClientSession() as session:
        url = await started(rt, [*BACKENDS, router])
        answers = await send_all(session, url, [None] * N)
        counts = collections.Counter(a.who for a in answers)
        assert abs(share(counts, "canary") - CANARY_SHARE) <= TOLERANCE, counts
        status = await router_status(rt, router)
        assert {b.name: (b.weight, b.requests, b.errors) for b in status.backends} == {
            "stable": (80, counts["stable"], 0),
            "canary": (20, counts["canary"], 0),
        }
        assert (status.route, status.policy, status.sticky_header) == (ROUTER, "weighted", KEY_HEADER)


@run_async
async def test_sticky_keys_keep_their_backend_and_split_by_weight(tmp_path: Path) -> None:
    keys = [f"user-{i}" for i in range(N)]
    async with runtime(tmp_path) as rt, aiohttp.ClientSession() as session:
        url = await started(rt, [*BACKENDS, route(80, 20)])
        first = dict(zip(keys, [a.who for a in await send_all(session, url, keys)], strict=True))
        for seed in (1, 2):  # again, in other orders
            again = random.Random(seed).sample(keys, len(keys))
            moved = {
                k: (first[k], a.who)
                for k, a in zip(again, await send_all(session, url, again), strict=True)
                if a.who != first[k]
            }
            assert not moved, f"{len(moved)} keys changed backend: {list(moved.items())[:5]}"
        counts = collections.Counter(first.values())
        assert abs(share(counts, "canary") - CANARY_SHARE) <= TOLERANCE, counts


@run_async
async def test_a_weight_change_moves_new_traffic_without_a_failed_request(tmp_path: Path) -> None:
    keys = [f"user-{i}" for i in range(200)]
    during: list[Answer] = []
    stop = asyncio.Event()

    async def traffic(session: aiohttp.ClientSession, url: str) -> None:
        """Keyed and unkeyed requests, 8 at a time, until stopped."""
        i = 0
        while not stop.is_set():
            batch = [keys[(i + j) % len(keys)] if j % 2 else None for j in range(8)]
            during.extend(await send_all(session, url, batch))
            i += 8

    async with runtime(tmp_path) as rt, aiohttp.ClientSession() as session:
        url = await started(rt, [*BACKENDS, route(80, 20)])
        background = asyncio.create_task(traffic(session, url))
        await eventually_async(lambda: len(during) >= 200, WITHIN_S, 0.05)
        changed = route(0, 100)
        await rt.apply(OWNER, [*BACKENDS, changed])

        async def reloaded() -> RouterStatus:
            status = await router_status(rt, changed)
            assert {b.name: b.weight for b in status.backends} == {"stable": 0, "canary": 100}, status
            return status

        await eventually_async(reloaded, WITHIN_S, 0.1)
        await eventually_async(lambda: len(during) >= 400, WITHIN_S, 0.05)  # traffic across the change
        stop.set()
        await background
        after = await send_all(session, url, [*keys, *[None] * len(keys)])

        failed = [a for a in during + after if a.status != 200]
        assert not failed, f"{len(failed)} of {len(during) + len(after)} requests failed: {failed[:3]}"
        assert {a.who for a in during} == {"stable", "canary"}
        assert collections.Counter(a.who for a in after) == {"canary": len(after)}
        # One process all along: its counts cover every request, it took one reload, and the
        # runtime neither restarted nor replaced it.
        status = await router_status(rt, changed)
        assert sum(b.requests for b in status.backends) == len(during) + len(after)
        assert (status.reloads, status.config_error) == (1, None)
        assert (await rt.observe(OWNER))[ROUTER].restarts == 0
        log = rt.log_path(OWNER, ROUTER).read_text()
        assert log.count("starting") == 1, log


@run_async
async def test_a_shadow_gets_every_request_mirrored_and_its_answers_never_reach_the_client(
    tmp_path: Path,
) -> None:
    mirrored = tmp_path / "shadow-requests.jsonl"
    shadow = backend("shadow", "--requests-log", str(mirrored))
    router = route(80, 20, shadow=RouteShadow("shadow", "http"))
    n = 300
    async with runtime(tmp_path) as rt, aiohttp.ClientSession() as session:
        url = await started(rt, [*BACKENDS, shadow, router])
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> Answer:
            async with gate:
                return await send(session, url, path=f"/v2/models/churn/infer?n={i}", body=b'{"n": %d}' % i)

        answers = await asyncio.gather(*(one(i) for i in range(n)))
        counts = collections.Counter(a.who for a in answers)
        assert set(counts) <= {"stable", "canary"}, counts
        assert sum(counts.values()) == n

        def every_request_mirrored() -> list[dict[str, Any]]:
            docs = (
                [json.loads(line) for line in mirrored.read_text().splitlines()] if mirrored.exists() else []
            )
            assert len(docs) >= n, f"{len(docs)} of {n} mirrored"
            return docs

        docs = await eventually_async(every_request_mirrored, WITHIN_S, 0.1)
        assert sorted((d["method"], d["path"], d["body"]) for d in docs) == sorted(
            ("POST", f"/v2/models/churn/infer?n={i}", f'{{"n": {i}}}') for i in range(n)
        )
        status = await router_status(rt, router)
        assert status.shadow is not None
        assert (status.shadow.requests, status.shadow.errors, status.shadow.dropped) == (n, 0, 0)
        assert {b.name: b.requests for b in status.backends} == {
            "stable": counts["stable"],
            "canary": counts["canary"],
        }


@run_async
async def test_requests_are_forwarded_whole_and_answered_as_the_backend_answered(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt, aiohttp.ClientSession() as session:
        url = await started(rt, [*BACKENDS, route(100, 0)])
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            answer = await send(
                session,
                url,
                method=method,
                path="/v1/models/churn:predict?a=1&b=%20two",
                body=b"payload-" + method.encode(),
                headers={"X-Request-Id": "r-1", "Connection": "keep-alive, X-Hop", "X-Hop": "1"},
            )
            assert answer.who == "stable"
            assert answer.doc is not None
            got = answer.doc
            assert (got["method"], got["path"], got["body"]) == (
                method,
                "/v1/models/churn:predict?a=1&b=%20two",
                f"payload-{method}",
            )
            assert got["headers"]["x-request-id"] == "r-1"
            assert got["headers"]["x-forwarded-for"] == "127.0.0.1"
            assert "x-hop" not in got["headers"], got["headers"]  # named by Connection: one hop only
            assert answer.set_cookie == "served-by=stable"


@run_async
async def test_a_cookie_a_backend_sets_goes_to_that_client_only(tmp_path: Path) -> None:
    """Guards against the router's HTTP client keeping a cookie jar: a cookie that a backend
    named by host name set for one client would go along with every later request of every
    client. (aiohttp's jar ignores IP addresses, so this backend is named ``localhost``.)"""
    async with runtime(tmp_path) as rt, aiohttp.ClientSession() as session:
        await started(rt, BACKENDS)
        port = str(rt.endpoint(OWNER, "stable", "http")).rsplit(":", 1)[1]
        router = route(100, 0)
        config = RouterConfig.from_json(router.config_files[CONFIG_FILE_NAME])
        by_name = dataclasses.replace(config, backends=(Backend("stable", f"http://localhost:{port}", 1),))
        url = await started(
            rt, [*BACKENDS, dataclasses.replace(router, config_files={CONFIG_FILE_NAME: by_name.to_json()})]
        )
        answers = [await send(session, url) for _ in range(3)]
        assert all(a.who == "stable" and a.set_cookie == "served-by=stable" for a in answers)
        sent = [a.doc["headers"] for a in answers if a.doc is not None]
        assert all("cookie" not in headers for headers in sent), sent


@run_async
async def test_a_backend_that_does_not_answer_is_a_502_naming_it(tmp_path: Path) -> None:
    router = build_route(Route(name=ROUTER, backends=(RouteBackend("down", "http", 1),)))
    async with runtime(tmp_path) as rt, aiohttp.ClientSession() as session:
        url = await started(rt, [backend("down", listening=False), router])
        for _ in range(3):
            async with session.post(url + "/v2/models/churn/infer", data=b"{}") as response:
                assert response.status == 502
                assert response.headers["X-Gyre-Backend"] == "down"
                error = (await response.json())["error"]
                assert error.startswith(f"route {ROUTER}: backend down did not answer: "), error
                assert "Connect" in error, error
        (down,) = (await router_status(rt, router)).backends
        assert (down.requests, down.errors) == (3, 3)


def with_assignment_log(router: Workload, log: AssignmentLog) -> Workload:
    """``router`` with its config's ``assignment_log`` set."""
    config = RouterConfig.from_json(router.config_files[CONFIG_FILE_NAME])
    logged = dataclasses.replace(config, assignment_log=log)
    return dataclasses.replace(router, config_files={CONFIG_FILE_NAME: logged.to_json()})


@run_async
async def test_every_answered_request_is_one_assignment_record_with_its_variant_and_prediction(
    tmp_path: Path, kafka_broker: LocalKafka
) -> None:
    """Two backends and one that is down, each a third of the keys; the log is switched on by
    a reload. Every request the router answered itself (a 502) has no record; every other has
    exactly one, naming the backend the client was told answered, with the backend's answer."""
    topic = "churn-assignments"
    await asyncio.to_thread(ensure_topic, kafka_broker.bootstrap, TopicSpec(name=topic))
    backends = [RouteBackend(name, "http", 1) for name in ("stable", "canary", "down")]
    plain = build_route(Route(name=ROUTER, backends=tuple(backends), sticky_header=KEY_HEADER))
    workloads = [*BACKENDS, backend("down", listening=False)]
    async with runtime(tmp_path) as rt, aiohttp.ClientSession() as session:
        url = await started(rt, [*workloads, plain])
        # Without a log, request ids still come and go: the client's, else a new one.
        before = [await send(session, url, headers={"X-Request-Id": "early-1"}), await send(session, url)]
        assert before[0].request_id == "early-1", before[0]
        assert before[1].request_id is not None, before[1]
        assert len(before[1].request_id) == 32, before[1]

        logged = with_assignment_log(plain, AssignmentLog(kafka_broker.bootstrap, topic))
        await rt.apply(OWNER, [*workloads, logged])

        async def reloaded() -> None:
            assert (await router_status(rt, logged)).reloads == 1

        await eventually_async(reloaded, WITHIN_S, 0.1)

        # Keyed requests with and without a client's id, one with an id too long to keep, and
        # requests without a key.
        sent: list[tuple[str | None, str | None]] = [
            (f"user-{i}", f"client-{i}" if i % 2 else None) for i in range(90)
        ]
        sent += [("user-long", "x" * 200)] + [(None, f"anonymous-{i}") for i in range(5)] + [(None, None)] * 5
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(key: str | None, request_id: str | None) -> Answer:
            async with gate:
                return await send(
                    session, url, key, headers={"X-Request-Id": request_id} if request_id else {}
                )

        arrived = time.time()
        answers = await asyncio.gather(*(one(k, r) for k, r in sent))
        done = time.time()

        for (_, given), a in zip(sent, answers, strict=True):
            assert a.request_id is not None, a
            if given is not None and len(given) <= 128:
                assert a.request_id == given, a
            else:
                assert len(a.request_id) == 32, a
        answered = {a.request_id: (k, a) for (k, _), a in zip(sent, answers, strict=True) if a.status == 200}
        failed = [a for a in answers if a.status != 200]
        assert {a.backend for _, a in answered.values()} == {"stable", "canary"}
        assert failed, "no key reached the backend that is down"
        assert all((a.status, a.backend) == (502, "down") for a in failed), failed

        async def all_delivered() -> RouterStatus:
            status = await router_status(rt, logged)
            assert status.assignments_logged >= len(answered), status
            return status

        status = await eventually_async(all_delivered, WITHIN_S, 0.1)
        assert (status.assignments_logged, status.assignments_dropped, status.assignments_failed) == (
            len(answered),
            0,
            0,
        )
        messages = await asyncio.to_thread(consume, kafka_broker, topic, len(answered))

    records = {}
    for m in messages:
        record = json.loads(m.value())
        assert record["request_id"] not in records, f"two records of one request: {record}"
        records[record["request_id"]] = (m.key(), record)
    assert set(records) == set(answered), "one record per answered request, none for a 502 or before the log"
    for request_id, (message_key, record) in records.items():
        key, answer = answered[request_id]
        assert answer.doc is not None
        assert message_key == (key or request_id).encode()
        assert (record["key"], record["variant"], record["route"], record["code"]) == (
            key,
            answer.backend,
            ROUTER,
            200,
        ), record
        assert record["prediction"] == answer.doc, record  # the backend's answer, parsed
        assert record["prediction"]["headers"]["x-request-id"] == request_id  # forwarded
        assert arrived <= record["time"] <= done, record
