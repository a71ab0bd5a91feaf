"""The collector workload against a real broker: validation, topic + dead-letter records, auth,
backpressure, metrics."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gyre.controllers.topics import ensure_topic
from gyre.core.topics import TopicSpec, dead_letter_topic_spec
from gyre.pipelines.collector.config import CollectorConfig

from tests.integration.kafka_fixtures import (
    CLICK_SCHEMA,
    LocalKafka,
    Workload,
    consume,
    make_event,
    metric_value,
    post_events,
)
from tests.support import eventually

pytest_plugins = ["tests.integration.kafka_fixtures"]

pytestmark = pytest.mark.integration


def _topics(broker: LocalKafka, partitions: int = 3, config: dict[str, str] | None = None) -> tuple[str, str]:
    main = TopicSpec(f"clicks-{uuid.uuid4().hex[:8]}", partitions=partitions, config=config or {})
    dlq = dead_letter_topic_spec(main)
    assert ensure_topic(broker.bootstrap, main).converged
    assert ensure_topic(broker.bootstrap, dlq).converged
    return main.name, dlq.name


def _collector(
    broker: LocalKafka, workdir: Path, topic_config: dict[str, str] | None = None, **overrides: Any
) -> Workload:
    topic, dlq = _topics(broker, config=topic_config)
    cfg = CollectorConfig(
        topic=topic, schema=CLICK_SCHEMA, dead_letter_topic=dlq, host="127.0.0.1", **overrides
    )
    return Workload(
        "gyre.pipelines.collector", cfg.to_json(), workdir,
        {"GYRE_KAFKA_BOOTSTRAP": broker.bootstrap},
    ).start().wait_ready()  # fmt: skip


@pytest.fixture
def collector(kafka_broker: LocalKafka, tmp_path: Path) -> Iterator[Workload]:
    w = _collector(kafka_broker, tmp_path)
    yield w
    w.stop()


def _config(w: Workload) -> CollectorConfig:
    return CollectorConfig.from_json(w.config_path.read_text())


def test_valid_events_reach_the_topic_and_invalid_ones_the_dead_letter_topic(
    kafka_broker: LocalKafka, collector: Workload
) -> None:
    cfg = _config(collector)
    good = make_event(1)
    rfc3339 = dict(make_event(2), ts="2024-05-01T10:00:00.250+02:00")
    events: list[Any] = [
        good,
        {k: v for k, v in make_event(3).items() if k != "user_id"},  # missing required
        dict(make_event(4), kind="purchase"),  # not in the enum
        dict(make_event(5), dwell_ms="long"),  # wrong type
        rfc3339,
        dict(make_event(6), ts="yesterday"),  # not a timestamp
        "not an object",
    ]
    status, _, body = post_events(collector.url, events)
    assert status == 200
    assert (body["accepted"], body["rejected"], body["failed"]) == (2, 5, 0)
    by_index = {r["index"]: r for r in body["results"]}
    assert [by_index[i]["status"] for i in range(7)] == [
        "accepted", "rejected", "rejected", "rejected", "accepted", "rejected", "rejected",
    ]  # fmt: skip
    assert "user_id" in by_index[1]["reason"]
    assert by_index[1]["code"] == "missing_field"
    assert by_index[2]["code"] == "enum_mismatch"
    assert "dwell_ms" in by_index[3]["reason"]
    assert by_index[3]["code"] == "type_mismatch"
    assert by_index[5]["code"] == "bad_timestamp"
    assert by_index[6]["code"] == "not_object"

    records = consume(kafka_broker, cfg.topic, 2)
    values = sorted((json.loads(m.value() or b"") for m in records), key=lambda v: v["event_id"])
    assert values[0] == good
    assert values[1]["ts"] == 1_714_550_400_250  # normalised to epoch millis (UTC)
    assert {m.key() for m in records} == {b"user-1", b"user-2"}  # keyed by the key field

    dead = consume(kafka_broker, cfg.dead_letter_topic or "", 5)
    reasons = {}
    for m in dead:
        rec = json.loads(m.value() or b"")
        headers = dict(m.headers() or [])
        assert headers["gyre-source-topic"] == cfg.topic.encode()
        assert headers["gyre-reason"] == rec["reason"].encode()
        reasons[rec["code"]] = rec["event"]
    assert set(reasons) == {
        "missing_field", "enum_mismatch", "type_mismatch", "bad_timestamp", "not_object",
    }  # fmt: skip
    assert reasons["enum_mismatch"]["kind"] == "purchase"  # the original payload is kept
    assert reasons["not_object"] == "not an object"

    metrics = collector_metrics(collector)
    assert metric_value(metrics, "gyre_collector_events_accepted_total") == 2
    assert metric_value(metrics, "gyre_collector_events_rejected_total", 'reason="enum_mismatch"') == 1
    assert metric_value(metrics, "gyre_collector_dead_lettered_total") == 5
    assert metric_value(metrics, "gyre_collector_produce_latency_seconds_count") == 1


def collector_metrics(w: Workload) -> str:
    import urllib.request

    with urllib.request.urlopen(w.url + "/metrics", timeout=10) as r:
        return str(r.read().decode())


def test_bad_requests(collector: Workload) -> None:
    assert post_events(collector.url, b"{not json")[0] == 400
    assert post_events(collector.url, {"event_id": 1})[0] == 400  # an object, not an array
    status, _, body = post_events(collector.url, [])
    assert (status, body["accepted"]) == (200, 0)
    status, _, body = post_events(collector.url, [make_event(i) for i in range(5)], query="?results=errors")
    assert (status, body["accepted"], body["results"]) == (200, 5, [])


def test_bearer_token_auth(kafka_broker: LocalKafka, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    w = _collector(kafka_broker, tmp_path, auth_token_file=str(token_file))
    try:
        status, headers, _ = post_events(w.url, [make_event(1)])
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert post_events(w.url, [make_event(1)], token="wrong")[0] == 401
        status, _, body = post_events(w.url, [make_event(1)], token="s3cret")
        assert (status, body["accepted"]) == (200, 1)
        # A rotated Secret takes effect without a restart.
        token_file.write_text("rotated")
        eventually(lambda: post_events(w.url, [make_event(2)], token="rotated")[0] == 200, 15, 0.5,
                   "rotated token accepted")  # fmt: skip
        assert post_events(w.url, [make_event(3)], token="s3cret")[0] == 401
    finally:
        w.stop()


def test_no_auth_configured_accepts_any_client(collector: Workload) -> None:
    assert post_events(collector.url, [make_event(1)])[0] == 200
    assert post_events(collector.url, [make_event(1)], token="anything")[0] == 200


def test_full_producer_queue_answers_429_with_retry_after(kafka_broker: LocalKafka, tmp_path: Path) -> None:
    # A long linger keeps the first request's records queued, so the queue is full for sure
    # while the second request arrives.
    w = _collector(
        kafka_broker, tmp_path, max_queued_events=100, max_events_per_request=100, linger_ms=4000,
        retry_after_s=2,
    )  # fmt: skip
    try:
        first: dict[str, Any] = {}

        def send_first() -> None:
            first["reply"] = post_events(w.url, [make_event(i) for i in range(80)])

        t = threading.Thread(target=send_first)
        t.start()
        eventually(lambda: w.get_json("/healthz")["queued"] >= 80, 10, 0.05, "80 records queued")
        status, headers, body = post_events(w.url, [make_event(i) for i in range(100, 150)])
        assert status == 429
        assert headers["Retry-After"] == "2"
        assert "queue" in body["error"]
        t.join(30)
        assert first["reply"][0] == 200
        assert first["reply"][2]["accepted"] == 80
        # Once the queue drained the same request goes through: nothing was dropped silently.
        status, _, body = post_events(w.url, [make_event(i) for i in range(100, 150)])
        assert (status, body["accepted"]) == (200, 50)
        metrics = collector_metrics(w)
        assert metric_value(metrics, "gyre_collector_requests_total", 'code="429"') == 1
        assert metric_value(metrics, "gyre_collector_events_accepted_total") == 130
    finally:
        w.stop()


def test_events_kafka_refuses_are_reported_failed_not_accepted(
    kafka_broker: LocalKafka, tmp_path: Path
) -> None:
    """An event the broker rejects (here: larger than the topic's max.message.bytes) must be
    reported ``failed`` for the client to act on, never ``accepted``."""
    w = _collector(kafka_broker, tmp_path, topic_config={"max.message.bytes": "2048"})
    try:
        big = dict(make_event(1), page=os.urandom(4000).hex())  # > 4 kB even compressed
        status, headers, body = post_events(w.url, [big])
        assert status == 503, body
        assert headers["Retry-After"] == "1"
        assert body["failed"] == 1
        assert body["results"][0]["status"] == "failed"
        assert "Kafka did not acknowledge" in body["results"][0]["reason"]
        status, _, body = post_events(w.url, [make_event(2)])
        assert (status, body["accepted"]) == (200, 1)
        metrics = collector_metrics(w)
        assert metric_value(metrics, "gyre_collector_events_failed_total") == 1
    finally:
        w.stop()
