"""Topic convergence (`gyre.controllers.topics`) and the broker workload, on a real broker."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]
from gyre.controllers.topics import admin_client, delete_topic, ensure_topic
from gyre.core.topics import TopicSpec, dead_letter_topic_spec

from tests.integration.kafka_fixtures import LocalKafka
from tests.support import eventually

pytest_plugins = ["tests.integration.kafka_fixtures"]

pytestmark = pytest.mark.integration


def _name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def _observe(bootstrap: str, name: str) -> tuple[int, int, dict[str, str]]:
    """(partitions, replication factor, config) as the broker reports them now."""
    admin = admin_client(bootstrap)
    desc = admin.describe_topics(TopicCollection([name]))[name].result(timeout=30)
    res = ConfigResource(ResourceType.TOPIC, name)
    entries = admin.describe_configs([res])[res].result(timeout=30)
    config = {k: e.value for k, e in entries.items()}
    return len(desc.partitions), len(desc.partitions[0].replicas), config


def _eventually_observed(bootstrap: str, name: str, partitions: int, rf: int, config: dict[str, str]) -> None:
    """The broker reports this state (metadata and configs propagate asynchronously)."""

    def matches() -> bool:
        try:
            parts, got_rf, got = _observe(bootstrap, name)
        except KafkaException:  # a just-created topic may be unknown to the broker briefly
            return False
        assert (parts, got_rf) == (partitions, rf)
        assert {k: got.get(k) for k in config} == config
        return True

    eventually(matches, 15, 0.2, f"topic {name} has {partitions} partitions and {config}")


def test_creates_topic_with_partitions_and_config(kafka_broker: LocalKafka) -> None:
    name = _name()
    spec = TopicSpec(
        name, partitions=3, retention_ms=3_600_000, cleanup_policy="delete",
        config={"max.message.bytes": "2097152"},
    )  # fmt: skip
    state = ensure_topic(kafka_broker.bootstrap, spec)
    assert state.actions == ("created",)
    assert state.converged
    want = {"retention.ms": "3600000", "cleanup.policy": "delete", "max.message.bytes": "2097152"}
    _eventually_observed(kafka_broker.bootstrap, name, 3, 1, want)

    again = ensure_topic(kafka_broker.bootstrap, spec)
    assert again.actions == ()
    assert again.converged


def test_alters_config_and_adds_partitions(kafka_broker: LocalKafka) -> None:
    name = _name()
    bs = kafka_broker.bootstrap
    ensure_topic(bs, TopicSpec(name, partitions=2, retention_ms=1000, config={"segment.ms": "60000"}))
    state = ensure_topic(
        bs, TopicSpec(name, partitions=5, retention_ms=7_200_000, cleanup_policy="compact,delete")
    )
    assert state.converged, state.problems
    assert "partitions 2->5" in state.actions
    assert "reset segment.ms" in state.actions  # dropped from the spec: back to the default
    want = {
        "retention.ms": "7200000",
        "cleanup.policy": "compact,delete",
        "segment.ms": "604800000",  # the broker default
    }
    _eventually_observed(bs, name, 5, 1, want)


def test_decrease_and_replication_change_are_reported_not_applied(
    kafka_broker: LocalKafka,
) -> None:
    name = _name()
    bs = kafka_broker.bootstrap
    ensure_topic(bs, TopicSpec(name, partitions=4))
    state = ensure_topic(bs, TopicSpec(name, partitions=2, replication_factor=3, retention_ms=5000))
    assert state.exists
    assert not state.converged
    assert any("cannot be decreased from 4 to 2" in p for p in state.problems)
    assert any("replication factor change from 1 to 3" in p for p in state.problems)
    # What can be applied still is.
    assert "set retention.ms=5000" in state.actions
    _eventually_observed(bs, name, 4, 1, {"retention.ms": "5000"})
    # Asking again reports the same problems and changes nothing: no loop, no exception.
    again = ensure_topic(bs, TopicSpec(name, partitions=2, replication_factor=3, retention_ms=5000))
    assert again.problems == state.problems
    assert again.actions == ()


def test_spec_the_cluster_refuses_is_a_problem(kafka_broker: LocalKafka) -> None:
    bs = kafka_broker.bootstrap
    too_many = ensure_topic(bs, TopicSpec(_name(), replication_factor=3))
    assert not too_many.exists
    assert "replicat" in too_many.problems[0]
    bad_config = ensure_topic(bs, TopicSpec(_name(), cleanup_policy="sometimes"))
    assert not bad_config.exists
    assert "cleanup.policy" in bad_config.problems[0]
    name = _name()
    ensure_topic(bs, TopicSpec(name))
    bad_alter = ensure_topic(bs, TopicSpec(name, config={"min.compaction.lag.ms": "soon"}))
    assert bad_alter.exists
    assert "min.compaction.lag.ms" in bad_alter.problems[0]
    assert ensure_topic(bs, TopicSpec(name, partitions=0)).problems


def test_dead_letter_topic_and_delete(kafka_broker: LocalKafka) -> None:
    bs = kafka_broker.bootstrap
    main = TopicSpec(_name(), partitions=2)
    dlq = dead_letter_topic_spec(main)
    assert dlq.name == f"{main.name}.dlq"
    assert ensure_topic(bs, main).converged
    assert ensure_topic(bs, dlq).converged
    _eventually_observed(bs, dlq.name, 1, 1, {"retention.ms": str(7 * 24 * 3600 * 1000)})
    assert delete_topic(bs, dlq.name) is True
    assert delete_topic(bs, dlq.name) is False


def test_broker_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    """Storage is formatted once; a restarted node keeps its topics and records."""
    broker = LocalKafka(tmp_path / "node")
    broker.start()
    try:
        name = _name()
        ensure_topic(broker.bootstrap, TopicSpec(name))
        quiet = logging.getLogger("kafka-client")  # not stderr while the broker restarts
        producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "logger": quiet})
        producer.produce(name, b"kept", b"k")
        assert producer.flush(30) == 0
        del producer
        broker.stop()
        meta = (tmp_path / "node" / "data" / "kraft" / "meta.properties").read_text()
        broker.start()
        assert (tmp_path / "node" / "data" / "kraft" / "meta.properties").read_text() == meta
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": "g",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([name])
        try:
            msg = None
            for _ in range(60):
                msg = consumer.poll(1.0)
                if msg is not None and msg.error() is None:
                    break
            assert msg is not None
            assert msg.value() == b"kept"
        finally:
            consumer.close()
    finally:
        broker.stop()
