"""Prediction logging with a real Kafka broker: every prediction the model server answers is a
record in the logging topic (request id, version, variant, inputs, output, latency, fallback),
produced beside the answer, and the server counts what Kafka acknowledged."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("kserve")
pytest.importorskip("torch")

from gyre.controllers.topics import ensure_topic
from gyre.core.topics import TopicSpec
from gyre.pipelines.modelserver.config import FallbackConfig, LoggingConfig, ModelServerConfig

from tests.integration.kafka_fixtures import consume
from tests.integration.modelserver_fixtures import ServerProc, Trained, close, train_tiny_model
from tests.support import eventually

if TYPE_CHECKING:
    from tests.integration.kafka_fixtures import LocalKafka

pytest_plugins = ["tests.integration.kafka_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOPIC = "clicks-predictions"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train_tiny_model(tmp_path_factory.mktemp("tiny-log"))


@pytest.fixture
def server(trained: Trained, kafka_broker: LocalKafka, tmp_path: Path) -> Iterator[ServerProc]:
    ensure_topic(kafka_broker.bootstrap, TopicSpec(name=TOPIC))
    cfg = ModelServerConfig(
        name="clicks",
        artifact=f"file://{trained.artifact}",
        fallback=FallbackConfig(deadline_ms=5000),
        logging=LoggingConfig(bootstrap_servers=kafka_broker.bootstrap, topic=TOPIC),
    )
    proc = ServerProc(cfg, tmp_path / "servers").start()
    yield proc
    proc.stop()
    print(f"--- {proc.log.name} ---\n{proc.tail()}")


def predict(server: ServerProc, rows: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{server.url}/v1/models/clicks:predict",
        data=json.dumps({"instances": rows}).encode(),
        headers={"Content-Type": "application/json", "X-Request-Id": request_id},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


def test_every_prediction_reaches_the_logging_topic(
    trained: Trained, server: ServerProc, kafka_broker: LocalKafka
) -> None:
    answers = {f"req-{i}": predict(server, [trained.rows[i]], f"req-{i}") for i in range(30)}
    batch = predict(server, trained.rows[30:33], "req-batch")
    records = [json.loads(m.value()) for m in consume(kafka_broker, TOPIC, 33, timeout_s=60)]
    assert len(records) == 33, "one record per predicted row, none twice"
    by_id = {r["request_id"]: r for r in records}
    for i in range(30):
        r = by_id[f"req-{i}"]
        assert r["inputs"] == trained.rows[i]
        assert close([r["output"]], answers[f"req-{i}"]["predictions"], 0)
        assert (r["model_version"], r["variant"], r["fallback"]) == (
            trained.metadata["model_version"],
            "stable",
            False,
        )
        assert r["latency_ms"] > 0
    assert close([by_id[f"req-batch/{j}"]["output"] for j in range(3)], batch["predictions"], 0)
    eventually(lambda: server.status()["logged"] == 33, timeout=30)
    st = server.status()
    assert (st["log_dropped"], st["log_failed"]) == (0, 0), st
