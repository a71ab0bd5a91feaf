"""The lake sink workload on a real broker: Parquet layout and schema, and exactly-once under
SIGKILL."""

from __future__ import annotations

import collections
import contextlib
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from gyre.controllers.topics import ensure_topic
from gyre.core.topics import TopicSpec
from gyre.pipelines._common.schema import StreamSchema
from gyre.pipelines.collector.config import CollectorConfig
from gyre.pipelines.lakesink.committer import read_committed
from gyre.pipelines.lakesink.config import LakeSinkConfig

from tests.integration.kafka_fixtures import (
    CLICK_SCHEMA,
    LocalKafka,
    Workload,
    make_event,
    post_events,
)
from tests.support import eventually

pytest_plugins = ["tests.integration.kafka_fixtures"]

pytestmark = pytest.mark.integration


def _pipeline(
    broker: LocalKafka, workdir: Path, partitions: int = 3, **sink_overrides: Any
) -> tuple[Workload, Workload, str]:
    topic = f"clicks-{uuid.uuid4().hex[:8]}"
    assert ensure_topic(broker.bootstrap, TopicSpec(topic, partitions=partitions)).converged
    env = {"GYRE_KAFKA_BOOTSTRAP": broker.bootstrap}
    collector = Workload(
        "gyre.pipelines.collector",
        CollectorConfig(topic=topic, schema=CLICK_SCHEMA, host="127.0.0.1").to_json(),
        workdir / "collector", env,
    )  # fmt: skip
    lake_uri = f"file://{workdir / 'lake'}"
    sink_cfg = LakeSinkConfig(
        topic=topic, schema=CLICK_SCHEMA, lake_uri=lake_uri, host="127.0.0.1", **sink_overrides
    )
    sink = Workload("gyre.pipelines.lakesink", sink_cfg.to_json(), workdir / "sink", env)
    return collector, sink, lake_uri


def _written(sink: Workload) -> int:
    try:
        return int(sink.get_json("/status")["records_written"])
    except OSError:
        return -1


def test_events_land_in_date_partitioned_parquet_with_the_stream_schema(
    kafka_broker: LocalKafka, tmp_path: Path
) -> None:
    collector, sink, lake_uri = _pipeline(kafka_broker, tmp_path, flush_interval_s=0.5)
    collector.start()
    sink.start()
    try:
        collector.wait_ready()
        sink.wait_ready()
        events = [make_event(i) for i in range(3000)]
        events[7]["page"] = None  # optional fields may be null or missing
        del events[8]["price"]
        status, _, body = post_events(collector.url, events, query="?results=errors")
        assert (status, body["accepted"]) == (200, 3000)
        eventually(lambda: _written(sink) == 3000, 60, 0.2, "3000 records in the lake")

        status_body = sink.get_json("/status")
        assert status_body["lag"] == 0
        assert sum(p["committed_offset"] for p in status_body["partitions"].values()) == 3000

        lake = Path(lake_uri.removeprefix("file://"))
        assert sorted(p.name for p in lake.glob("date=*")) == [
            "date=2024-05-01", "date=2024-05-02", "date=2024-05-03",
        ]  # fmt: skip
        table = ds.dataset(str(lake), format="parquet", partitioning="hive").to_table()
        assert table.num_rows == 3000
        schema = table.schema
        assert schema.field("event_id").type == pa.int64()
        assert schema.field("ts").type == pa.timestamp("ms", tz="UTC")
        assert schema.field("dwell_ms").type == pa.int32()
        assert schema.field("score").type == pa.float32()
        assert schema.field("price").type == pa.float64()
        assert schema.field("is_bot").type == pa.bool_()
        rows = {r["event_id"]: r for r in table.to_pylist()}
        assert rows[7]["page"] is None
        assert rows[8]["price"] is None
        e = make_event(42)
        got = rows[42]
        assert got["ts"].timestamp() * 1000 == e["ts"]
        assert str(got["date"]) == got["ts"].date().isoformat()  # partitioned by event date
        assert (got["user_id"], got["kind"], got["dwell_ms"]) == (e["user_id"], e["kind"], e["dwell_ms"])
        # Provenance: every (partition, offset) appears once.
        assert len({(r["_kafka_partition"], r["_kafka_offset"]) for r in rows.values()}) == 3000

        metrics = sink_metrics(sink)
        assert "gyre_lakesink_records_written_total 3000.0" in metrics
        assert 'gyre_lakesink_consumer_lag{partition="0"}' in metrics
    finally:
        sink.stop()
        collector.stop()


def sink_metrics(sink: Workload) -> str:
    import urllib.request

    with urllib.request.urlopen(sink.url + "/metrics", timeout=10) as r:
        return str(r.read().decode())


@pytest.mark.parametrize("committer", ["rename", "object-store"])
def test_exactly_once_while_the_sink_is_killed_repeatedly(
    kafka_broker: LocalKafka, tmp_path: Path, committer: str
) -> None:
    """Every event the collector accepted is in the lake exactly once, although the sink was
    SIGKILLed at random instants (mid-consume, mid-write, mid-commit, mid-recovery)."""
    total = 100_000 if committer == "rename" else 30_000
    min_kills = 10 if committer == "rename" else 5
    collector, sink, lake_uri = _pipeline(
        kafka_broker, tmp_path, flush_interval_s=0.3, flush_records=5000, committer=committer
    )
    collector.start()
    sink.start()
    rng = random.Random(20240501)
    accepted: collections.Counter[int] = collections.Counter()
    errors: list[str] = []
    sending_done = threading.Event()

    def send() -> None:
        try:
            batch = 500
            for start in range(0, total, batch):
                ids = list(range(start, start + batch))
                pending = ids
                while pending:  # failed events are retried; none may go missing
                    body = orjson.dumps([make_event(i) for i in pending])
                    status, _, reply = post_events(collector.url, body)
                    if status in (429, 503):
                        time.sleep(0.2)
                        continue
                    assert status == 200, reply
                    retry = []
                    for r in reply["results"]:
                        if r["status"] == "accepted":
                            accepted[pending[r["index"]]] += 1
                        else:
                            retry.append(pending[r["index"]])
                    pending = retry
                time.sleep(0.1)  # spread the load over the kills
        except BaseException as e:
            errors.append(repr(e))
        finally:
            sending_done.set()

    try:
        collector.wait_ready()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        kills = 0
        committed_at_kills: set[int] = set()
        # Kill until the sending ended, enough kills landed and the sink was seen to make
        # progress between them (a slow machine restarts it slowly); a sink that never
        # progresses runs into the deadline and fails the check below.
        deadline = time.monotonic() + 300
        while (
            not sending_done.is_set() or kills < min_kills or len(committed_at_kills) < 3
        ) and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.3, 3.0))
            with contextlib.suppress(OSError, KeyError):
                committed_at_kills.add(_committed(sink))
            sink.kill()
            kills += 1
            sink.start()
        sender.join(60)
        assert not errors, errors
        # The sink made progress between kills: the test is not vacuous.
        assert len(committed_at_kills) >= 3, committed_at_kills
        assert sum(accepted.values()) >= total

        eventually(lambda: _written(sink) >= 0 and sink.get_json("/status")["lag"] == 0
                   and _committed(sink) == sum(accepted.values()), 120, 0.5,
                   f"lake caught up\n{sink.log_tail()}")  # fmt: skip

        table = read_committed(lake_uri, columns=["event_id", "_kafka_partition", "_kafka_offset"])
        in_lake = collections.Counter(table["event_id"].to_pylist())
        missing = set(accepted) - set(in_lake)
        dupes = {k: v for k, v in in_lake.items() if v > accepted.get(k, 0)}
        assert not missing, f"{len(missing)} accepted events missing, e.g. {sorted(missing)[:5]}"
        assert not dupes, f"{len(dupes)} events duplicated, e.g. {list(dupes.items())[:5]}"
        assert in_lake == accepted
        provenance = set(zip(table["_kafka_partition"].to_pylist(),
                             table["_kafka_offset"].to_pylist(), strict=True))  # fmt: skip
        assert len(provenance) == table.num_rows

        if committer == "rename":
            # With renames, a plain dataset listing equals the committed view.
            lake = lake_uri.removeprefix("file://")
            listed = ds.dataset(lake, format="parquet", partitioning="hive").count_rows()
            assert listed == table.num_rows
        print(f"{kills} kills, {sink.starts} sink starts, {table.num_rows} rows")
    finally:
        sink.stop()
        collector.stop()


def _committed(sink: Workload) -> int:
    parts = sink.get_json("/status")["partitions"]
    return sum(p["committed_offset"] or 0 for p in parts.values())


def test_a_record_without_event_time_lands_on_the_date_of_its_kafka_timestamp(
    kafka_broker: LocalKafka, tmp_path: Path
) -> None:
    """The sink keeps Kafka record timestamps only when the timestamp field may be null; guards
    that the fallback still works then (records produced directly, as another producer would)."""
    from confluent_kafka import Producer

    schema = StreamSchema.from_dict(
        {**CLICK_SCHEMA.to_dict(), "fields": [
            {**f.to_dict(), "required": False} if f.name == "ts" else f.to_dict()
            for f in CLICK_SCHEMA.fields
        ]}
    )  # fmt: skip
    topic = f"clicks-{uuid.uuid4().hex[:8]}"
    assert ensure_topic(kafka_broker.bootstrap, TopicSpec(topic, partitions=1)).converged
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    kafka_ts = 1_700_000_000_000  # 2023-11-14
    for i in range(3):
        event = make_event(i)
        if i == 1:
            event["ts"] = None
        producer.produce(topic, orjson.dumps(event), timestamp=kafka_ts)
    assert producer.flush(30) == 0
    lake_uri = f"file://{tmp_path / 'lake'}"
    cfg = LakeSinkConfig(
        topic=topic, schema=schema, lake_uri=lake_uri, host="127.0.0.1", flush_interval_s=0.3
    )
    env = {"GYRE_KAFKA_BOOTSTRAP": kafka_broker.bootstrap}
    sink = Workload("gyre.pipelines.lakesink", cfg.to_json(), tmp_path / "sink", env).start()
    try:
        sink.wait_ready()
        eventually(lambda: _written(sink) == 3, 60, 0.2, "3 records in the lake")
        table = read_committed(lake_uri, columns=["event_id"])
        assert sorted(table["event_id"].to_pylist()) == [0, 1, 2]
        lake = Path(tmp_path / "lake")
        undated = [p.parent.name for p in lake.glob("date=*/*.parquet")
                   if ds.dataset(str(p)).to_table()["event_id"].to_pylist() == [1]]  # fmt: skip
        assert undated == ["date=2023-11-14"]
    finally:
        sink.stop()
