"""Streams through the operator and the local runtime: a real KRaft broker, collector and lake sink.

Events in over HTTP, valid ones read back from the Parquet lake and invalid ones from the
dead-letter topic; partitions grow, a shrink is refused as Degraded; deletion stops the processes.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest
from operator_harness import (
    OperatorProcess,
    running_operator,
    running_pids_under,
    stream_manifest,
)

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytestmark = [pytest.mark.controlplane, pytest.mark.integration]


def stream(
    lake: Path,
    partitions: int = 2,
    sinks: bool = True,
    *,
    name: str = "clicks",
    cluster: str | None = None,
    replicas: int = 1,
    controllers: int = 0,
    replication: int = 1,
) -> str:
    managed = f"replicas: {replicas}, controllers: {controllers}" + (
        f", cluster: {cluster}" if cluster else ""
    )
    return stream_manifest(
        name,
        managed=managed,
        topic=f"partitions: {partitions}, replicationFactor: {replication}, retention: 7d",
        sink_lake=f'uri: "file://{lake}", flushInterval: 1s' if sinks else None,
    )


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from running_operator(cluster, tmp_path, "stream", "local", show="gst", log_lines=150)


def status(op: OperatorProcess, name: str = "clicks") -> dict[str, Any]:
    return dict(op.get("stream", name).get("status") or {})


def ready(op: OperatorProcess, name: str = "clicks") -> dict[str, Any]:
    st = status(op, name)
    assert op.condition("stream", name, "Ready")["status"] == "True", st.get("conditions")
    return st


def post(url: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(events).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


def test_events_reach_the_lake_and_bad_ones_the_dead_letter_topic(
    operator: OperatorProcess, tmp_path: Path
) -> None:
    from confluent_kafka import Consumer

    lake = tmp_path / "lake"
    operator.apply(stream(lake))
    st = eventually(lambda: ready(operator), timeout=180, interval=1)
    assert st["topic"] == {
        "name": f"{operator.namespace}.clicks",
        "partitions": 2,
        "deadLetterTopic": f"{operator.namespace}.clicks.dlq",
    }
    assert st["bootstrapServers"].startswith("127.0.0.1:")

    good = [
        {"user_id": f"u{i}", "ts": 1_700_000_000_000 + i * 1000, "plan": "free", "views": i}
        for i in range(200)
    ]
    bad = [
        {"user_id": "x", "ts": "yesterday"},
        {"user_id": "y", "ts": 1_700_000_000_000, "plan": "gold"},
        {"ts": 1},
    ]
    answer = post(st["collectorUrl"], good + bad)
    results = answer["results"]
    assert [r["status"] for r in results] == ["accepted"] * 200 + ["rejected"] * 3

    def in_lake() -> None:
        assert lake.exists(), "no file committed yet"
        table = pads.dataset(str(lake), format="parquet", partitioning="hive").to_table()
        assert table.num_rows == 200
        assert sorted(table.column("user_id").to_pylist()) == sorted(e["user_id"] for e in good)

    eventually(in_lake, timeout=60, interval=1)
    consumer = Consumer(
        {"bootstrap.servers": st["bootstrapServers"], "group.id": "test-dlq", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([st["topic"]["deadLetterTopic"]])
    dead: list[dict[str, Any]] = []
    try:

        def drained() -> None:
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                dead.append(json.loads(msg.value()))
            assert len(dead) == 3

        eventually(drained, timeout=60, interval=0)
    finally:
        consumer.close()
    reasons = " | ".join(d["reason"] for d in dead)
    for field in ("ts", "plan", "user_id"):
        assert field in reasons, reasons

    def figures() -> None:
        s = status(operator)
        assert s.get("acceptedTotal") == 200
        assert s.get("deadLetterCount") == 3
        assert s["sinks"][0]["lag"] == 0
        assert s["sinks"][0]["recordsWritten"] == 200

    eventually(figures, timeout=60, interval=1)


def test_partitions_grow_and_a_shrink_is_degraded_then_delete_stops_processes(
    operator: OperatorProcess, tmp_path: Path
) -> None:
    operator.apply(stream(tmp_path / "lake", partitions=2, sinks=False))
    eventually(lambda: ready(operator), timeout=180, interval=1)
    operator.apply(stream(tmp_path / "lake", partitions=4, sinks=False))

    def grown() -> None:
        assert status(operator)["topic"]["partitions"] == 4

    eventually(grown, timeout=60, interval=1)
    operator.apply(stream(tmp_path / "lake", partitions=1, sinks=False))

    def refused() -> None:
        c = operator.condition("stream", "clicks", "Degraded")
        assert (c["status"], c["reason"]) == ("True", "TopicMismatch")
        assert "partitions" in c["message"]
        assert status(operator)["topic"]["partitions"] == 4

    eventually(refused, timeout=60, interval=1)
    state = operator.workdir / "local"
    assert running_pids_under(state), "the Stream's processes should be running"
    operator.cluster.kubectl("delete", "stream", "clicks", "-n", operator.namespace)

    def stopped() -> None:
        assert running_pids_under(state) == []

    eventually(stopped, timeout=60, interval=1)


def workloads_gauge(op: OperatorProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('gyre_workloads{kind="Stream"}'):
                return float(line.split()[-1])
    raise AssertionError("no gyre_workloads sample for Stream")


def test_streams_share_one_cluster_which_stops_with_the_last_of_them(
    operator: OperatorProcess, tmp_path: Path
) -> None:
    op, lake = operator, tmp_path / "lake"
    op.apply(stream(lake, sinks=False, name="clicks", cluster="shared"))
    op.apply(stream(lake, sinks=False, name="views", cluster="shared"))

    def both_ready() -> tuple[dict[str, Any], dict[str, Any]]:
        a, b = ready(op, "clicks"), ready(op, "views")
        for st in (a, b):
            assert st["kafkaCluster"] == {
                "name": "shared",
                "streams": ["clicks", "views"],
                "nodes": 1,
                "readyNodes": 1,
            }
        return a, b

    a, b = eventually(both_ready, timeout=180, interval=1)
    assert a["bootstrapServers"] == b["bootstrapServers"]
    assert workloads_gauge(op) == 2.0  # a collector each: the operator's total over Streams
    table = op.cluster.kubectl("get", "streams", "-n", op.namespace, "-o", "wide").stdout.splitlines()
    at = table[0].index("CLUSTER")  # a fixed-width table: cells start under their headers
    assert [row[at:].split()[0] for row in table[1:]] == ["shared", "shared"], table
    state = op.workdir / "local" / op.namespace
    assert sorted(p.name for p in state.iterdir()) == ["kafkacluster-shared", "stream-clicks", "stream-views"]
    broker = running_pids_under(state / "kafkacluster-shared")
    assert broker, "the shared broker should be running"

    # The first Stream goes: its collector stops, the broker serves the other one unchanged.
    op.cluster.kubectl("delete", "stream", "clicks", "-n", op.namespace)

    def collector_stopped() -> None:
        assert running_pids_under(state / "stream-clicks") == []

    eventually(collector_stopped, timeout=60, interval=1)
    assert sorted(running_pids_under(state / "kafkacluster-shared")) == sorted(broker)

    def listed_alone() -> dict[str, Any]:
        st = ready(op, "views")
        assert st["kafkaCluster"]["streams"] == ["views"]
        return st

    st = eventually(listed_alone, timeout=60, interval=1)
    assert workloads_gauge(op) == 1.0
    answer = post(st["collectorUrl"], [{"user_id": "u1", "ts": 1_700_000_000_000}])
    assert answer["results"][0]["status"] == "accepted"

    # The last one goes: so does the broker.
    op.cluster.kubectl("delete", "stream", "views", "-n", op.namespace)

    def stopped() -> None:
        assert running_pids_under(state) == []

    eventually(stopped, timeout=60, interval=1)


@pytest.mark.parametrize("controllers", [0, 1], ids=["combined", "dedicated-controller"])
def test_a_three_broker_cluster_forms_a_quorum_and_replicates_the_topic(
    operator: OperatorProcess, tmp_path: Path, controllers: int
) -> None:
    from confluent_kafka.admin import AdminClient

    lake = tmp_path / "lake"
    operator.apply(stream(lake, partitions=3, replicas=3, controllers=controllers, replication=3))
    st = eventually(lambda: ready(operator), timeout=300, interval=2)
    assert st["kafkaCluster"]["readyNodes"] == 3 + controllers
    state = operator.workdir / "local" / operator.namespace / "kafkacluster-clicks"
    roles = sorted(
        line.split("=", 1)[1]
        for props in state.glob("kafka*-*/data/config/server.properties")
        for line in props.read_text().splitlines()
        if line.startswith("process.roles=")
    )
    assert roles == (["broker,controller"] * 3 if controllers == 0 else ["broker"] * 3 + ["controller"])
    admin = AdminClient({"bootstrap.servers": st["bootstrapServers"]})
    meta = admin.list_topics(st["topic"]["name"], timeout=30)
    assert len(meta.brokers) == 3
    partitions = meta.topics[st["topic"]["name"]].partitions
    assert len(partitions) == 3
    for p in partitions.values():
        assert sorted(p.replicas) == [0, 1, 2]
    good = [{"user_id": f"u{i}", "ts": 1_700_000_000_000 + i} for i in range(300)]
    answer = post(st["collectorUrl"], good)
    assert {r["status"] for r in answer["results"]} == {"accepted"}

    def in_lake() -> None:
        assert lake.exists(), "no file committed yet"
        table = pads.dataset(str(lake), format="parquet", partitioning="hive").to_table()
        assert table.num_rows == len(good)
        assert sorted(table.column("user_id").to_pylist()) == sorted(e["user_id"] for e in good)

    eventually(in_lake, timeout=90, interval=1)
