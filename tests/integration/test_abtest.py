"""The A/B analysis workload against a real broker: the router's assignment log and a Stream's
outcomes (POSTed through the collector) are joined, counted and analysed exactly, and a
SIGKILL and restart replays them to the very same totals."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from gyre.controllers.topics import ensure_topic
from gyre.core.topics import TopicSpec
from gyre.pipelines._common.schema import StreamSchema
from gyre.pipelines.abtest.config import AbTestConfig, TopicRef
from gyre.pipelines.abtest.status import AbTestStatus
from gyre.pipelines.collector.config import CollectorConfig
from gyre.stats.frequentist import two_proportion_ztest

from tests.integration.kafka_fixtures import LocalKafka, Workload, metric_value, post_events
from tests.support import eventually

pytest_plugins = ["tests.integration.kafka_fixtures"]

pytestmark = pytest.mark.integration

OUTCOME_SCHEMA = StreamSchema.from_dict(
    {
        "fields": [
            {"name": "request_id", "type": "string"},
            {"name": "key", "type": "string"},
            {"name": "conversion", "type": "int"},
            {"name": "kind", "type": "string", "required": True},
            {"name": "ts", "type": "timestamp", "required": True},
        ],
        "key_field": "key",
        "timestamp_field": "ts",
    }
)

N = 1200  # requests per variant (min_samples is 1000)
HALF = N // 2
T0_MS = 1_700_000_000_000
WINDOW_S = 600


def _t_ms(i: int) -> int:
    return T0_MS + i * 100


def _assignment(rid: str, variant: str, i: int, code: int = 200) -> bytes:
    return orjson.dumps(
        {"request_id": rid, "key": f"user-{rid}", "variant": variant, "route": "exp",
         "code": code, "prediction": {"score": 0.5}, "time": _t_ms(i) / 1000}
    )  # fmt: skip


def _converts(variant: str, i: int) -> bool:
    return i % (10 if variant == "a" else 5) == 0  # rates 0.1 and 0.2


def _outcomes() -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every feedback event, and the counts the workload must report for them."""
    events: list[dict[str, Any]] = []
    joined = 0
    for variant in ("a", "b"):
        for i in range(N):
            if not _converts(variant, i):
                continue
            rid = f"{variant}-{i}"
            by_key = (i // 5) % 3 == 0  # a third of the conversions name only the user
            event = {"key": f"user-{rid}"} if by_key else {"request_id": rid}
            events.append({**event, "conversion": 1, "kind": "order", "ts": _t_ms(i) + 5000})
            joined += 1
            if i % 100 == 0:  # converted twice: still one conversion
                events.append({"request_id": rid, "conversion": 1, "kind": "order", "ts": _t_ms(i) + 9000})
                joined += 1
    # Late: 601 s after a request that did not convert in time.
    late = [i for i in range(100) if i % 10 == 5]
    events += [
        {"request_id": f"a-{i}", "conversion": 1, "kind": "order", "ts": _t_ms(i) + (WINDOW_S + 1) * 1000}
        for i in late
    ]
    # Failed requests (502) get outcomes too: joined, but no request to reward.
    events += [
        {"request_id": f"err-{i}", "conversion": 1, "kind": "order", "ts": _t_ms(i) + 1000} for i in range(10)
    ]
    joined += 10
    # No assignment ever: two unmatched (the window passed), one still pending.
    events += [
        {"request_id": "ghost", "conversion": 1, "kind": "order", "ts": T0_MS},
        {"key": "nobody", "conversion": 1, "kind": "order", "ts": T0_MS},
        {"request_id": "not-yet", "conversion": 1, "kind": "order", "ts": T0_MS + 1_000_000},
    ]
    # Not outcomes of this metric, and one that names neither request nor user.
    events += [{"key": f"user-a-{i}", "kind": "view", "ts": _t_ms(i)} for i in range(7)]
    events += [{"conversion": 1, "kind": "order", "ts": T0_MS}]
    counts = {"joined": joined, "late": len(late), "unmatched": 2, "pending": 1, "ignored": 7}
    return events, counts


@pytest.fixture
def topics(kafka_broker: LocalKafka) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    names = (f"assignments-{suffix}", f"outcomes-{suffix}")
    for name in names:
        assert ensure_topic(kafka_broker.bootstrap, TopicSpec(name, partitions=3)).converged
    return names


@pytest.fixture
def collector(kafka_broker: LocalKafka, topics: tuple[str, str], tmp_path: Path) -> Iterator[Workload]:
    cfg = CollectorConfig(topic=topics[1], schema=OUTCOME_SCHEMA, host="127.0.0.1")
    w = Workload(
        "gyre.pipelines.collector", cfg.to_json(), tmp_path / "collector",
        {"GYRE_KAFKA_BOOTSTRAP": kafka_broker.bootstrap},
    ).start().wait_ready()  # fmt: skip
    yield w
    w.stop()


def _abtest(broker: LocalKafka, topics: tuple[str, str], workdir: Path) -> Workload:
    cfg = AbTestConfig(
        experiment="checkout",
        variants=("a", "b"),
        assignments=TopicRef("$(BROKER)", topics[0]),
        feedback=TopicRef(broker.bootstrap, topics[1]),
        method="bayesian",
        timestamp_field="ts",
        attribution_window_s=WINDOW_S,
        interval_s=0.5,
        host="127.0.0.1",
    )
    w = Workload("gyre.pipelines.abtest", cfg.to_json(), workdir, {"BROKER": broker.bootstrap})
    w.env["GYRE_PORT_METRICS"] = str(w.port)  # what the runtime allocates; /healthz is there
    return w


def _status(w: Workload) -> AbTestStatus:
    doc = AbTestStatus.parse(w.get_json("/status"))
    assert doc is not None
    return doc


def _produce(broker: LocalKafka, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
    for v in values:
        producer.produce(topic, v)
    assert producer.flush(30) == 0


def test_outcomes_join_exactly_and_a_restart_replays_the_same_totals(
    kafka_broker: LocalKafka, topics: tuple[str, str], collector: Workload, tmp_path: Path
) -> None:
    assignments, feedback = topics
    first = [_assignment(f"{v}-{i}", v, i) for i in range(HALF) for v in ("a", "b")]
    second = [_assignment(f"{v}-{i}", v, i) for i in range(HALF, N) for v in ("a", "b")]
    second += [_assignment(f"err-{i}", "b", i, code=502) for i in range(20)]
    duplicates = first[:50]
    malformed = [b"not json", _assignment("z-1", "z", 1)]
    _produce(kafka_broker, assignments, first + duplicates + malformed)
    events, expect = _outcomes()
    # Every outcome now: those of the second half arrive before their assignments.
    code, _, body = post_events(collector.url, events)
    assert (code, body["accepted"]) == (200, len(events)), body
    _produce(kafka_broker, feedback, [b"\x00 junk from another producer"])

    w = _abtest(kafka_broker, topics, tmp_path / "abtest").start()
    try:
        w.wait_ready()

        def half_read() -> AbTestStatus:
            st = _status(w)
            assert st.counts.assignments_read == len(first) + 52, st.counts
            assert st.counts.feedback_read == len(events) + 1, st.counts
            return st

        before = eventually(half_read, 60, 0.2, f"the first half read\n{w.log_tail()}")
        assert [v.requests for v in before.variants] == [HALF, HALF]
        assert before.counts.duplicates == 50
        assert before.counts.malformed == 2 + 2  # two assignments, two feedback records

        # SIGKILL, restart on the same topics: the very same totals, nothing doubled.
        w.kill()
        w.start().wait_ready()
        again = eventually(half_read, 60, 0.2, f"the replay\n{w.log_tail()}")
        assert again.variants == before.variants
        assert again.counts == before.counts

        _produce(kafka_broker, assignments, second)

        def all_read() -> AbTestStatus:
            st = _status(w)
            assert st.counts.assignments_read == len(first) + 52 + len(second), st.counts
            return st

        st = eventually(all_read, 60, 0.2, f"the second half read\n{w.log_tail()}")
        with urllib.request.urlopen(w.url + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        w.stop()

    a, b = st.variants
    assert (a.name, a.requests, a.outcomes, a.reward_sum, a.reward_sq_sum) == ("a", N, 120, 120, 120)
    assert (b.name, b.requests, b.outcomes, b.reward_sum, b.reward_sq_sum) == ("b", N, 240, 240, 240)
    assert (a.rate, b.rate) == (0.1, 0.2)
    c = st.counts
    assert (c.joined, c.late, c.unmatched, c.pending, c.ignored) == (
        expect["joined"], expect["late"], expect["unmatched"], expect["pending"], expect["ignored"],
    )  # fmt: skip
    assert (c.duplicates, c.malformed) == (50, 4)
    # The clearly better variant wins; the figures are gyre.stats' on the same counts.
    assert st.decision.decided, st.decision
    assert (st.decision.winner, st.decision.reason) == ("b", "ExpectedLossBelowThreshold")
    assert b.p_value == two_proportion_ztest(120, N, 240, N).p_value
    assert b.p_best is not None
    assert b.p_best > 0.999
    assert st.srm_mismatch is False
    assert metric_value(metrics, "gyre_experiment_requests", 'experiment="checkout",variant="b"') == N
