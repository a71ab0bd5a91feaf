"""InferenceServices through the operator and the local runtime: real model servers and the
router as processes, a model trained by the real trainer.

A stable model, a canary at 20% and a shadow: 5,000 keyed requests through the service's URL
split 20% ± 3% to the canary, every key stays on one model, the shadow sees a copy of every
request and never answers one, and the status shows what the clients measured. Promoting the
canary to 100% fails no request.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from operator_harness import OperatorProcess, running_operator

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytest.importorskip("kserve")
pytest.importorskip("horovod.torch", reason="the trainer's launcher needs Horovod (make setup)")
pytestmark = [pytest.mark.controlplane, pytest.mark.integration, pytest.mark.timeout(600)]

from tests.integration.modelserver_fixtures import Trained, train_tiny_model  # noqa: E402

NAME = "clicks"
REQUESTS = 5000
KEYS = 1000
CONCURRENCY = 32
CANARY_SHARE, TOLERANCE = 0.20, 0.03


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train_tiny_model(tmp_path_factory.mktemp("isvc-model"))


def version_copy(src: Path, dst: Path, version: str) -> Path:
    """The artifact under another model version (what a retrained model would be)."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    (dst / "metadata.json").write_text(json.dumps({**meta, "model_version": version}))
    return dst


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from running_operator(cluster, tmp_path, "serve", "local", show="ginf")
    for log in sorted((tmp_path / "local").rglob("*.log")):
        print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}")


def manifest(stable: Path, canary: Path, shadow: Path, percent: int) -> str:
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: InferenceService
metadata: {{name: {NAME}}}
spec:
  model: {{uri: "file://{stable}"}}
  batching: {{maxBatchSize: 16, maxLatencyMs: 2}}
  fallback: {{deadlineMs: 5000, defaultResponse: {{probability: 0.25}}}}
  traffic:
    canary: {{model: {{uri: "file://{canary}"}}, percent: {percent}}}
    shadow: {{model: {{uri: "file://{shadow}"}}, percent: 100}}
"""


def status(op: OperatorProcess) -> dict[str, Any]:
    return dict(op.get("inferenceservice", NAME).get("status") or {})


class Answer(NamedTuple):
    code: int
    backend: str  # X-Gyre-Backend
    body: dict[str, Any]
    request_id: str  # X-Request-Id


async def send_all(url: str, bodies: list[tuple[str, Any]]) -> list[Answer]:
    """An answer per (key, body), ``CONCURRENCY`` in flight."""
    sem = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(key: str, body: Any) -> Answer:
            async with sem, session.post(url, json=body, headers={"X-Gyre-Key": key}) as r:
                h = r.headers
                body = await r.json(content_type=None)
                return Answer(r.status, h.get("X-Gyre-Backend", ""), body, h.get("X-Request-Id", ""))

        return await asyncio.gather(*(one(k, b) for k, b in bodies))


def test_canary_and_shadow_split_as_configured(
    operator: OperatorProcess, trained: Trained, tmp_path: Path
) -> None:
    canary = version_copy(trained.artifact, tmp_path / "v2", "clicks-v2")
    shadow = version_copy(trained.artifact, tmp_path / "v3", "clicks-v3")
    operator.apply(manifest(trained.artifact, canary, shadow, 20))

    def serving() -> dict[str, Any]:
        ready = operator.condition("inferenceservice", NAME, "Ready")
        assert ready["status"] == "True", ready
        progressing = operator.condition("inferenceservice", NAME, "Progressing")
        assert progressing["status"] == "False", progressing  # canary and shadow up too
        st = status(operator)
        assert st.get("url"), st
        assert st.get("shadowModelVersion"), st
        return st

    st = eventually(serving, timeout=180, interval=1)
    v1 = trained.metadata["model_version"]
    assert (st["modelVersion"], st["canaryModelVersion"], st["shadowModelVersion"]) == (
        v1,
        "clicks-v2",
        "clicks-v3",
    )
    assert st["traffic"] == {"stable": 80, "canary": 20}
    assert st["readyReplicas"] == 1
    url = f"{st['url']}/v1/models/{NAME}:predict"

    bodies = [
        (f"user-{i % KEYS}", {"instances": [trained.rows[i % len(trained.rows)]]}) for i in range(REQUESTS)
    ]
    answers = asyncio.run(send_all(url, bodies))
    assert all(a.code == 200 for a in answers), [a for a in answers if a.code != 200][:3]
    variants = [a.body["variant"] for a in answers]
    assert set(variants) == {"stable", "canary"}, "the shadow never answers"
    assert all(not a.body["fallback"] for a in answers)
    assert [a.backend for a in answers] == [{"stable": "predictor", "canary": "canary"}[v] for v in variants]
    share = variants.count("canary") / REQUESTS
    assert abs(share - CANARY_SHARE) <= TOLERANCE, f"canary answered {share:.1%} of {REQUESTS}"
    by_key: dict[str, set[str]] = collections.defaultdict(set)
    for (key, _), v in zip(bodies, variants, strict=True):
        by_key[key].add(v)
    assert all(len(v) == 1 for v in by_key.values()), "a key moved between models"
    # the same model answers whichever variant serves it
    for (_, body), a in list(zip(bodies, answers, strict=True))[:50]:
        assert a.body["predictions"][0] == pytest.approx(
            trained.predictions[trained.rows.index(body["instances"][0])], abs=1e-5
        )

    def measured() -> dict[str, Any]:
        st = status(operator)
        assert st.get("requests") == REQUESTS, st.get("requests")
        shadow_variant = next(v for v in st["variants"] if v["name"] == "shadow")
        assert shadow_variant["requests"] + shadow_variant["dropped"] == REQUESTS, shadow_variant
        assert shadow_variant["requests"] > 0, shadow_variant
        # the shadow serves the same model: each of its answers equals the client's
        assert shadow_variant["compared"] == shadow_variant["requests"], shadow_variant
        return st

    st = eventually(measured, timeout=30, interval=1)
    shadow_variant = next(v for v in st["variants"] if v["name"] == "shadow")
    assert shadow_variant["different"] == 0, shadow_variant
    assert shadow_variant["maxDifference"] < 1e-6, shadow_variant  # float32 rounding across batches
    assert st["measuredTraffic"]["canary"] == pytest.approx(100 * share, abs=0.01)
    assert st["latencyP99Ms"] > 0
    assert (st["breaker"], st["fallbackRate"]) == ("closed", 0.0)
    row = operator.cluster.kubectl("get", "ginf", NAME, "-n", operator.namespace).stdout
    assert all(word in row for word in (st["url"], v1, " 20 ")), row

    # Promotion: the canary takes everything, and no request fails on the way.
    async def promote() -> list[Answer]:
        load = asyncio.create_task(send_all(url, bodies[:1500]))
        await asyncio.sleep(0.5)
        operator.apply(manifest(trained.artifact, canary, shadow, 100))
        return await load

    during = asyncio.run(promote())
    assert all(a.code == 200 for a in during), [a for a in during if a.code != 200][:3]
    eventually(lambda: status(operator)["traffic"] == {"stable": 0, "canary": 100}, timeout=60)

    def all_canary() -> None:
        after = asyncio.run(send_all(url, bodies[:200]))
        assert {a.body["variant"] for a in after} == {"canary"}

    eventually(all_canary, timeout=30, interval=1)


PREDICTIONS = """
apiVersion: gyre.dev/v1alpha1
kind: Stream
metadata: {name: predictions}
spec:
  kafka: {managed: {replicas: 1}}
  topic: {partitions: 1, retention: 7d}
  schema:
    key: request_id
    timestampField: ts
    fields:
      - {name: request_id, type: string, required: true}
      - {name: ts, type: timestamp, required: true}
      - {name: model_version, type: string}
      - {name: variant, type: string}
      - {name: output, type: double}
      - {name: latency_ms, type: double}
      - {name: fallback, type: boolean}
  sinks:
    - name: lake
      lake: {uri: "file://LAKE", flushInterval: 1s}
"""


def test_predictions_reach_the_logging_streams_lake(
    operator: OperatorProcess, trained: Trained, tmp_path: Path
) -> None:
    import pyarrow.dataset as pads

    lake = tmp_path / "lake"
    operator.apply(PREDICTIONS.replace("LAKE", str(lake)))
    operator.apply(
        f"""
apiVersion: gyre.dev/v1alpha1
kind: InferenceService
metadata: {{name: {NAME}}}
spec:
  model: {{uri: "file://{trained.artifact}"}}
  protocol: v1
  fallback: {{deadlineMs: 5000, defaultResponse: {{probability: 0.25}}}}
  logging: {{stream: predictions, sampleRate: 1.0}}
"""
    )

    def serving() -> str:
        assert operator.condition("inferenceservice", NAME, "Ready")["status"] == "True"
        return str(status(operator)["url"])

    url = f"{eventually(serving, timeout=240, interval=1)}/v1/models/{NAME}:predict"
    n = 200

    day_before = dt.datetime.now(dt.UTC).date().isoformat()
    bodies = [(f"user-{i}", {"instances": [trained.rows[i % len(trained.rows)]]}) for i in range(n)]
    answers = asyncio.run(send_all(url, bodies))
    assert all(a.code == 200 for a in answers), [a for a in answers if a.code != 200][:3]
    answered = {a.request_id: float(a.body["predictions"][0]) for a in answers}
    day_after = dt.datetime.now(dt.UTC).date().isoformat()
    assert len(answered) == n  # one id per request

    def landed() -> Any:
        files = list(lake.rglob("*.parquet"))
        assert files, "no Parquet in the lake yet"
        table = pads.dataset(str(lake), format="parquet", partitioning="hive").to_table()
        assert table.num_rows >= n, table.num_rows
        return table

    table = eventually(landed, timeout=90, interval=1)
    rows = table.to_pylist()
    assert table.num_rows == n, "each prediction once"
    assert {r["request_id"]: r["output"] for r in rows} == pytest.approx(answered, abs=1e-6)
    assert {r["variant"] for r in rows} == {"stable"}
    assert {r["model_version"] for r in rows} == {trained.metadata["model_version"]}
    assert not any(r["fallback"] for r in rows)
    # placed by the prediction's time (epoch milliseconds), not in 1970
    assert {str(r["date"]) for r in rows} <= {day_before, day_after}, {str(r["date"]) for r in rows}
