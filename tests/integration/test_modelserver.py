"""The model server with a model the real trainer wrote: KServe's V1 and V2 endpoints, the
trainer's own predictions, batching, deadlines with fallback, the circuit breaker, a flood.

Every server is ``python -m gyre.pipelines.modelserver`` as a runtime starts it, answering on
loopback; the tests compare what clients get with what the trainer computed and with what the
server says in ``/status`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytest.importorskip("kserve")
pytest.importorskip("torch")

from gyre.pipelines.features.online import OnlineRow, connect, materialize
from gyre.pipelines.modelserver.config import (
    BatchingConfig,
    DriftConfig,
    FallbackConfig,
    FeaturesConfig,
    ModelServerConfig,
)

from tests.support import eventually

try:
    from .modelserver_fixtures import RedisServer, ServerProc, Trained, close, slow_copy, train_tiny_model
except ImportError:  # tests/integration collected as a plain directory
    from modelserver_fixtures import (  # type: ignore[no-redef]
        RedisServer,
        ServerProc,
        Trained,
        close,
        slow_copy,
        train_tiny_model,
    )

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NAME = "clicks"
DEFAULT = {"probability": 0.25}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train_tiny_model(tmp_path_factory.mktemp("tiny"))


def config(trained: Trained | Path, **kw: Any) -> ModelServerConfig:
    path = trained.artifact if isinstance(trained, Trained) else trained
    return ModelServerConfig(name=NAME, artifact=f"file://{path}", **kw)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProc]]:
    started: list[ServerProc] = []
    yield started
    for s in started:
        s.stop()
        print(f"--- {s.log.name} ---\n{s.tail()}")


def start(servers: list[ServerProc], tmp_path: Path, cfg: ModelServerConfig, **kw: Any) -> ServerProc:
    server = ServerProc(cfg, tmp_path / "servers", **kw)
    servers.append(server)
    return server.start()


def post(url: str, body: Any, timeout: float = 10) -> tuple[int, dict[str, Any], dict[str, str]]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)


def v1(server: ServerProc, rows: list[dict[str, Any]], name: str = NAME) -> tuple[int, dict[str, Any]]:
    code, body, _ = post(f"{server.url}/v1/models/{name}:predict", {"instances": rows})
    return code, body


def v2_body(rows: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(rows[0])
    inputs = []
    for n in names:
        values = [r[n] for r in rows]
        dtype = "BYTES" if isinstance(values[0], str) else "FP64"
        inputs.append({"name": n, "shape": [len(rows)], "datatype": dtype, "data": values})
    return {"id": "req-1", "inputs": inputs}


def test_validation_rows_get_the_trainers_predictions(
    trained: Trained, servers: list[ServerProc], tmp_path: Path
) -> None:
    server = start(servers, tmp_path, config(trained))
    code, body = v1(server, trained.rows)
    assert code == 200, body
    assert body["fallback"] is False
    assert body["model_version"] == trained.metadata["model_version"]
    assert close(body["predictions"], trained.predictions), "V1 answers differ from the trainer's"
    # ... and the trainer's own figure over those rows follows from them.
    hits = sum((p >= 0.5) == (y > 0.5) for p, y in zip(body["predictions"], trained.labels, strict=True))
    assert hits / len(trained.labels) == pytest.approx(trained.metadata["metrics"]["val_accuracy"], abs=1e-9)

    code, out, headers = post(f"{server.url}/v2/models/{NAME}/infer", v2_body(trained.rows))
    assert code == 200, out
    (predictions,) = [o for o in out["outputs"] if o["name"] == "predictions"]
    assert predictions["shape"] == [len(trained.rows)]
    assert close(predictions["data"], trained.predictions), "V2 answers differ from the trainer's"
    assert out["id"] == "req-1"
    assert out["parameters"]["fallback"] is False
    assert headers["x-gyre-fallback"] == "false"


def test_first_request_after_the_port_opens_is_answered(
    trained: Trained, servers: list[ServerProc], tmp_path: Path
) -> None:
    """Guards the KServe complaint "the first request after a scale-up answered model not
    ready": the port opens only once the model is loaded and warmed up."""
    server = ServerProc(config(trained), tmp_path / "servers")
    servers.append(server)
    server.start(wait=False)

    def listening() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=1):
            pass

    eventually(listening, timeout=90, interval=0.02, retry_on=(OSError,))
    code, body = v1(server, trained.rows[:1])
    assert code == 200, body
    with urllib.request.urlopen(f"{server.url}/v2/models/{NAME}", timeout=5) as r:
        meta = json.loads(r.read())
    features = [f["name"] for f in trained.metadata["features"]]
    assert [i["name"] for i in meta["inputs"]] == features
    with urllib.request.urlopen(f"{server.url}/v2/models/{NAME}/ready", timeout=5) as r:
        assert json.loads(r.read())["ready"] is True
    st = server.status()
    assert (st["ready"], st["model_version"], st["variant"]) == (
        True,
        trained.metadata["model_version"],
        "stable",
    )


def test_bad_requests_get_a_4xx_naming_the_field(
    trained: Trained, servers: list[ServerProc], tmp_path: Path
) -> None:
    server = start(servers, tmp_path, config(trained))
    good = trained.rows[0]
    cases = [
        ([good, {**good, "x1": "high"}], 400, "instances[1].x1: expected a number"),
        ([{k: v for k, v in good.items() if k != "color"}], 400, "instances[0].color: missing"),
        ([{**good, "color": [1]}], 400, "instances[0].color: expected a string"),
    ]
    for rows, want, words in cases:
        code, body = v1(server, rows)
        assert code == want, (rows, body)
        assert words in body["error"], body
    code, body = v1(server, [good], name="nope")
    assert code == 404, body
    assert "nope" in body["error"]
    bad_v2 = v2_body([good])
    bad_v2["inputs"][0]["datatype"] = "BYTES"
    bad_v2["inputs"][0]["data"] = ["x"]
    code, body, _ = post(f"{server.url}/v2/models/{NAME}/infer", bad_v2)
    assert code == 400, body
    assert f"inputs.{bad_v2['inputs'][0]['name']}: datatype BYTES" in body["error"], body
    assert server.status()["invalid"] == 4


async def _concurrently(url: str, bodies: list[Any], concurrency: int) -> list[tuple[int, dict[str, Any]]]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(body: Any) -> tuple[int, dict[str, Any]]:
            async with sem, session.post(url, json=body) as r:
                return r.status, await r.json(content_type=None)

        return await asyncio.gather(*(one(b) for b in bodies))


def test_concurrent_requests_share_forward_passes_and_get_the_same_answers(
    trained: Trained, servers: list[ServerProc], tmp_path: Path
) -> None:
    rows = trained.rows[:96]
    patient = FallbackConfig(deadline_ms=10000)  # answers, not fallbacks, are compared
    batched = start(
        servers,
        tmp_path,
        config(trained, batching=BatchingConfig(max_batch_size=16, max_latency_ms=20), fallback=patient),
    )
    single = start(
        servers,
        tmp_path,
        dataclasses.replace(
            config(trained, batching=BatchingConfig(enabled=False), fallback=patient), variant="canary"
        ),
    )
    bodies = [{"instances": [r]} for r in rows]
    got = asyncio.run(_concurrently(f"{batched.url}/v1/models/{NAME}:predict", bodies, 48))
    alone = asyncio.run(_concurrently(f"{single.url}/v1/models/{NAME}:predict", bodies, 48))
    assert all(code == 200 for code, _ in got + alone), [b for c, b in got + alone if c != 200][:3]
    assert close([b["predictions"][0] for _, b in got], [b["predictions"][0] for _, b in alone], 1e-6)
    st, st1 = batched.status(), single.status()
    assert st["predictions"] == st1["predictions"] == len(rows)
    assert st1["batches"] == len(rows), "batching off: one forward pass per request"
    assert st["batches"] < len(rows) / 3, st
    assert st["mean_batch_size"] > 3, st
    metrics = batched.metrics()
    assert f'gyre_model_batch_size_count{{model="{NAME}",variant="stable"}} {float(st["batches"])}' in metrics


def test_a_slow_model_gets_fallbacks_on_time_and_the_breaker_opens_then_closes(
    trained: Trained, servers: list[ServerProc], tmp_path: Path
) -> None:
    slow_file = tmp_path / "slow"
    fallback = FallbackConfig(
        deadline_ms=150, failure_threshold=3, reset_timeout_s=1.5, default_response=DEFAULT
    )
    server = start(
        servers,
        tmp_path,
        config(slow_copy(trained.artifact, tmp_path / "slow-model"), fallback=fallback),
        env={"GYRE_TEST_SLOW_FILE": str(slow_file)},
    )
    row = trained.rows[:1]
    code, body = v1(server, row)
    assert (code, body["fallback"]) == (200, False), body
    slow_file.write_text("0.6")
    for i in range(3):
        t0 = time.monotonic()
        code, body = v1(server, row)
        elapsed = time.monotonic() - t0
        assert (code, body["fallback"], body["fallback_reason"]) == (200, True, "deadline"), body
        assert body["predictions"] == [DEFAULT]
        assert elapsed < 0.15 + 0.25, f"fallback {i} took {elapsed:.3f}s, past the 150 ms deadline"
    st = server.status()
    assert st["breaker"] == "open", st
    t0 = time.monotonic()
    code, body = v1(server, row)
    assert body["fallback_reason"] == "breaker_open", body
    assert time.monotonic() - t0 < 0.1, "an open breaker answers at once"
    slow_file.unlink()  # the dependency recovers
    time.sleep(1.6)  # past resetTimeout: the next request is the half-open trial
    code, body = v1(server, row)
    assert (code, body["fallback"]) == (200, False), body
    assert close(body["predictions"], trained.predictions[:1])
    st = server.status()
    assert (st["breaker"], st["breaker_opened"], st["fallbacks"]) == ("closed", 1, 4), st
    # status and metrics say the same
    assert f'gyre_model_requests_total{{model="{NAME}",outcome="fallback",variant="stable"}} 4.0' in (
        server.metrics()
    )


def test_a_flood_is_refused_with_429_and_the_server_keeps_answering(
    trained: Trained, servers: list[ServerProc], tmp_path: Path
) -> None:
    slow_file = tmp_path / "slow"
    slow_file.write_text("0.2")
    cfg = config(
        slow_copy(trained.artifact, tmp_path / "slow-model"),
        batching=BatchingConfig(max_batch_size=4, max_latency_ms=1, max_queue=8),
        fallback=FallbackConfig(deadline_ms=20000, failure_threshold=1000),
    )
    server = start(servers, tmp_path, cfg, env={"GYRE_TEST_SLOW_FILE": str(slow_file)})
    bodies = [{"instances": [r]} for r in trained.rows[:60]]
    got = asyncio.run(_concurrently(f"{server.url}/v1/models/{NAME}:predict", bodies, 60))
    codes = sorted({c for c, _ in got})
    assert codes == [200, 429], codes
    refused = [b for c, b in got if c == 429]
    assert "overloaded" in refused[0]["error"], refused[0]
    st = server.status()
    assert (st["rejected"], st["queued"]) == (len(refused), 0), st
    slow_file.unlink()
    code, body = v1(server, trained.rows[:1])
    assert (code, body["fallback"]) == (200, False), body


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is installed by scripts/setup.sh (Debian's redis-server)")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


PREFIX = "clicks-features:"


def fill(store: RedisServer, trained: Trained, ttl_s: float = 3600) -> None:
    """The rows as a FeatureJob materializes them (its writer, its layout)."""
    rows = [OnlineRow(str(e), 0, row) for e, row in zip(trained.entities, trained.rows, strict=True)]
    materialize(connect(store.url), PREFIX, rows, ttl_s=ttl_s)


def test_online_features_give_the_trainers_predictions_and_missing_ones_are_imputed(
    trained: Trained, servers: list[ServerProc], tmp_path: Path, store: RedisServer
) -> None:
    fill(store, trained)
    features = FeaturesConfig(redis_url=store.url, entity_key="user_id", key_prefix=PREFIX)
    patient = FallbackConfig(deadline_ms=10000)  # answers, not fallbacks, are compared
    server = start(servers, tmp_path, config(trained, features=features, fallback=patient))
    code, body = v1(server, [{"user_id": e} for e in trained.entities])
    assert code == 200, body
    assert close(body["predictions"], trained.predictions), "store features differ from the trainer's"
    assert body["imputed"] == [[] for _ in trained.entities]
    # an unknown entity: every feature imputed (the training means, the unknown category)
    code, body = v1(server, [{"user_id": -1}, {"user_id": trained.entities[0], "x1": 3.0}])
    assert code == 200, body
    assert body["imputed"] == [["color", "x1", "x2"], []]
    pre_row = {**trained.rows[0], "x1": 3.0}
    _, direct = v1(
        start(servers, tmp_path, dataclasses.replace(config(trained), variant="canary")), [pre_row]
    )
    assert close(body["predictions"][1:], direct["predictions"]), "a request field wins over the store"
    st = server.status()
    assert st["imputed"] == {"color": 1, "x1": 1, "x2": 1}, st
    assert st["feature_lookups"] == 2
    # a row past its TTL is expired, whatever Redis still holds: imputed like a missing one
    stale = OnlineRow(str(trained.entities[1]), 0, trained.rows[1])
    materialize(connect(store.url), PREFIX, [stale], ttl_s=1, now_ms=int(time.time() * 1000) - 5000)
    code, body = v1(server, [{"user_id": trained.entities[1]}])
    assert code == 200, body
    assert body["imputed"] == [["color", "x1", "x2"]]
    code, body = v1(server, [{"x1": 1.0}])
    assert code == 400, body
    assert "instances[0].user_id: missing entity key" in body["error"]


def test_a_stopped_store_gives_fallbacks_within_the_deadline_and_the_breaker_recovers(
    trained: Trained, servers: list[ServerProc], tmp_path: Path, store: RedisServer
) -> None:
    fill(store, trained)
    features = FeaturesConfig(redis_url=store.url, entity_key="user_id", key_prefix=PREFIX)
    fallback = FallbackConfig(
        deadline_ms=200, failure_threshold=2, reset_timeout_s=1.0, default_response=DEFAULT
    )
    server = start(servers, tmp_path, config(trained, features=features, fallback=fallback))
    one = [{"user_id": trained.entities[0]}]
    code, body = v1(server, one)
    assert (code, body["fallback"]) == (200, False), body
    store.stop()
    for _ in range(2):
        t0 = time.monotonic()
        code, body = v1(server, one)
        assert (code, body["fallback"]) == (200, True), body
        assert time.monotonic() - t0 < 0.2 + 0.25
    assert server.status()["breaker"] == "open"
    code, body = v1(server, one)
    assert body["fallback_reason"] == "breaker_open", body
    store.start()  # the same port
    fill(store, trained)
    time.sleep(1.1)

    def recovered() -> None:
        code, body = v1(server, one)
        assert (code, body["fallback"]) == (200, False), body
        assert close(body["predictions"], trained.predictions[:1])

    eventually(recovered, timeout=20, interval=0.5)
    assert server.status()["breaker"] == "closed"


def test_drift_rises_when_one_input_shifts_and_stays_low_when_none_does(
    trained: Trained, servers: list[ServerProc], tmp_path: Path
) -> None:
    watch = DriftConfig(metric="psi", window_s=600)
    patient = FallbackConfig(deadline_ms=10000)
    same = start(servers, tmp_path, config(trained, drift=watch, fallback=patient))
    shifted = start(
        servers,
        tmp_path,
        dataclasses.replace(config(trained, drift=watch, fallback=patient), variant="canary"),
    )
    rows = trained.rows
    moved = [{**r, "x1": r["x1"] + 1.5} for r in rows]
    for i in range(0, len(rows), 25):
        assert v1(same, rows[i : i + 25])[0] == 200
        assert v1(shifted, moved[i : i + 25])[0] == 200
    calm, drifted = same.status()["drift"], shifted.status()["drift"]
    assert set(calm) == {"x1", "x2", "color"}, calm
    assert max(calm.values()) < 0.2, f"validation rows drift from their own training data: {calm}"
    assert drifted["x1"] > 0.5, drifted
    assert max(drifted["x2"], drifted["color"]) < 0.2, drifted
    assert f'gyre_model_drift_score{{feature="x1",model="{NAME}",variant="canary"}}' in shifted.metrics()
