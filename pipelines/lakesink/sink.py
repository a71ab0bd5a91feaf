"""The lake sink's main loop: consume, buffer per partition, flush files + commit, repeat.

Exactly-once comes from the lake's commit log (`gyre.pipelines.lakesink.committer`): on start
each owned partition is recovered and the consumer is *assigned* at the committed next offset
(Kafka group offsets are committed after each flush only as a hint for tools). The sink owns
partitions statically (``p % replicas == replica_index``) so no rebalance can give a partition
two writers.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    Message,
    TopicPartition,
)
from gyre.pipelines._common.httpserver import MetricsServer
from gyre.pipelines._common.status import STATUS_PATH
from gyre.pipelines.lakesink.arrow import RecordDecoder, split_by_date
from gyre.pipelines.lakesink.committer import (
    CommitRecord,
    Lake,
    StagedFile,
    data_file_name,
    make_committer,
)
from gyre.pipelines.lakesink.config import LakeSinkConfig
from gyre.pipelines.lakesink.status import PartitionStatus, SinkStatus
from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("gyre.lakesink")

RECORDS_WRITTEN = Counter("gyre_lakesink_records_written_total", "Records committed to the lake.")
RECORDS_SKIPPED = Counter(
    "gyre_lakesink_records_skipped_total", "Records that could not be read and were skipped."
)
FILES_COMMITTED = Counter("gyre_lakesink_files_committed_total", "Parquet files committed.")
COMMITS = Counter("gyre_lakesink_commits_total", "Per-partition commits to the lake.")
FLUSH_SECONDS = Histogram(
    "gyre_lakesink_flush_seconds", "Time to write and commit one flush (all partitions).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip
LAG = Gauge("gyre_lakesink_consumer_lag", "High watermark minus committed offset.", ["partition"])
COMMITTED = Gauge("gyre_lakesink_committed_offset", "Next offset the lake holds up to.", ["partition"])


@dataclass
class _Buffer:
    values: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    first_at: float = 0.0


@dataclass
class _PartitionState:
    next_offset: int | None  # None: nothing in the lake yet
    high_watermark: int = -1
    buf: _Buffer = field(default_factory=_Buffer)


class LakeSink:
    def __init__(self, cfg: LakeSinkConfig) -> None:
        self.cfg = cfg
        self.lake = Lake(cfg.lake_uri)
        self.committer = make_committer(
            self.lake, cfg.committer, compression=cfg.compression, fsync=cfg.fsync,
            keep_records=cfg.keep_commit_records,
        )  # fmt: skip
        self.decoder = RecordDecoder(cfg.schema)
        # Kafka record timestamps stand in for a null event time; a required timestamp field
        # is never null in what the sink writes, so then they need not be kept.
        self._keep_timestamps = not cfg.schema.field(cfg.schema.timestamp_field).required
        self.consumer = Consumer(
            {**cfg.consumer_settings(), "logger": logging.getLogger("gyre.lakesink.kafka")}
        )
        self.parts: dict[int, _PartitionState] = {}
        self.ready = False
        self.stopping = False
        self.records_written = 0
        self.files_committed = 0
        self.last_commit_ms = 0
        self._buffered = 0

    # -- partitions ------------------------------------------------------------------------

    def _owned(self, partitions: list[int]) -> list[int]:
        return [p for p in partitions if p % self.cfg.replicas == self.cfg.replica_index]

    def _topic_partitions(self, timeout_s: float = 5.0) -> list[int] | None:
        md = self.consumer.list_topics(self.cfg.topic, timeout=timeout_s)
        t = md.topics.get(self.cfg.topic)
        if t is None or t.error is not None:
            return None
        return sorted(t.partitions)

    def _adopt(self, partitions: list[int]) -> None:
        """Recover and start consuming ``partitions`` (not owned yet)."""
        data = self.lake.list_data()
        assign = []
        for p in partitions:
            rec = self.committer.recover(p, data)
            nxt = rec.next_offset if rec is not None else None
            self.parts[p] = _PartitionState(next_offset=nxt)
            if nxt is not None:
                COMMITTED.labels(str(p)).set(nxt)
            start = nxt if nxt is not None else (
                OFFSET_BEGINNING if self.cfg.start_from == "earliest" else OFFSET_END
            )  # fmt: skip
            assign.append(TopicPartition(self.cfg.topic, p, start))
            log.info("Resumed partition %d of %s at offset %s", p, self.cfg.topic,
                     nxt if nxt is not None else self.cfg.start_from)  # fmt: skip
        if assign:
            self.consumer.incremental_assign(assign)

    def _refresh_partitions(self) -> None:
        try:
            parts = self._topic_partitions()
        except Exception as e:  # retried on the next refresh
            log.warning("Listing partitions of %s failed: %s", self.cfg.topic, e)
            return
        if parts is None:
            return
        new = [p for p in self._owned(parts) if p not in self.parts]
        if new:
            self._adopt(new)

    def _update_lag(self) -> None:
        for p, st in self.parts.items():
            try:
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.cfg.topic, p), timeout=2, cached=False
                )
            except Exception:  # lag is informational; the next update retries
                continue
            st.high_watermark = high
            base = st.next_offset if st.next_offset is not None else low
            LAG.labels(str(p)).set(max(high - base, 0))

    # -- flushing --------------------------------------------------------------------------

    def _flush(self) -> None:
        t0 = time.perf_counter()
        for p, st in self.parts.items():
            if st.buf.values:
                self._flush_partition(p, st)
        self._buffered = 0
        FLUSH_SECONDS.observe(time.perf_counter() - t0)

    def _flush_partition(self, p: int, st: _PartitionState) -> None:
        buf = st.buf
        first, last = buf.offsets[0], buf.offsets[-1]
        table, kept = self.decoder.decode(buf.values, p, buf.offsets)
        skipped = len(buf.values) - table.num_rows
        if skipped:
            RECORDS_SKIPPED.inc(skipped)
            log.warning("Skipped %d unreadable records of partition %d (offsets %d..%d)",
                        skipped, p, first, last)  # fmt: skip
        fallback: list[int] = []  # only kept when the timestamp field may be null
        if buf.timestamps:
            fallback = buf.timestamps if kept is None else [buf.timestamps[i] for i in kept]
        staged: list[StagedFile] = []
        for day, part in split_by_date(table, self.cfg.schema.timestamp_field, fallback):
            rel = f"date={day}/{data_file_name(p, first, last)}"
            staged.append(self.committer.write_file(rel, part))
        start = st.next_offset if st.next_offset is not None else first
        record = CommitRecord(
            topic=self.cfg.topic, partition=p, start_offset=start, next_offset=last + 1,
            files=tuple(s.rel_path for s in staged), records=table.num_rows,
        )  # fmt: skip
        self.committer.commit(record, staged)
        st.next_offset = last + 1
        st.buf = _Buffer()
        self.records_written += table.num_rows
        self.files_committed += len(staged)
        self.last_commit_ms = record.committed_at_ms
        RECORDS_WRITTEN.inc(table.num_rows)
        FILES_COMMITTED.inc(len(staged))
        COMMITS.inc()
        COMMITTED.labels(str(p)).set(last + 1)
        if st.high_watermark >= 0:
            LAG.labels(str(p)).set(max(st.high_watermark - last - 1, 0))
        try:  # a hint for tools that read group offsets; the lake is the truth
            self.consumer.commit(offsets=[TopicPartition(self.cfg.topic, p, last + 1)], asynchronous=True)
        except Exception as e:  # the lake, not the group offset, is the truth
            log.debug("Committing the group offset hint failed: %s", e)

    # -- status ----------------------------------------------------------------------------

    def status(self) -> SinkStatus:
        parts = {}
        total_lag = 0
        for p, st in sorted(self.parts.items()):
            lag = max(st.high_watermark - (st.next_offset or 0), 0) if st.high_watermark >= 0 else None
            total_lag += lag or 0
            parts[str(p)] = PartitionStatus(
                committed_offset=st.next_offset,
                high_watermark=st.high_watermark if st.high_watermark >= 0 else None,
                lag=lag,
                buffered=len(st.buf.values),
            )
        return SinkStatus(
            topic=self.cfg.topic,
            lake=self.lake.uri,
            ready=self.ready,
            lag=total_lag,
            records_written=self.records_written,
            files_committed=self.files_committed,
            last_commit_ms=self.last_commit_ms or None,
            partitions=parts,
        )

    def healthz(self) -> tuple[int, dict[str, Any]]:
        return (200 if self.ready else 503), {"ready": self.ready}

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        waited = False
        while not self.stopping:
            try:
                parts = self._topic_partitions()
                problem = "it does not exist yet"
            except Exception as e:  # the broker is not up yet
                parts, problem = None, str(e)
            if parts:
                break
            if not waited:
                log.warning("Waiting for topic %s: %s", cfg.topic, problem)
                waited = True
            time.sleep(1)
        else:
            return
        self._adopt(self._owned(parts))
        self._update_lag()
        self.ready = True
        log.info("Lake sink for %s writing to %s (partitions %s)", cfg.topic, self.lake.uri,
                 sorted(self.parts))  # fmt: skip
        next_refresh = time.monotonic() + 30
        next_lag = time.monotonic() + 2
        oldest = 0.0
        while not self.stopping:
            msgs = self.consumer.consume(num_messages=10_000, timeout=0.2)
            now = time.monotonic()
            taken = self._take(msgs, now) if msgs else 0
            if taken:
                self._buffered += taken
                if not oldest:
                    oldest = now
            if self._buffered and (
                self._buffered >= cfg.flush_records or now - oldest >= cfg.flush_interval_s
            ):
                self._flush()
                oldest = 0.0
            if now >= next_lag:
                self._update_lag()
                next_lag = now + 2
            if now >= next_refresh:
                self._refresh_partitions()
                next_refresh = now + 30
        if self._buffered:
            self._flush()  # graceful stop: commit what is buffered
        self.consumer.close()

    def _take(self, msgs: list[Message], now: float) -> int:
        """Buffer a batch of consumed records; the number buffered.

        The per-record work is the sink's only Python work per record, so it is kept to
        sorting records by partition; each partition's fields are then read in one pass.
        """
        groups: dict[int, list[Message]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("Consumer error: %s", err)
                continue
            p = m.partition()
            group = groups.get(p)  # type: ignore[arg-type]
            if group is None:
                groups[p] = group = []  # type: ignore[index]
            group.append(m)
        taken = 0
        for p, group in groups.items():
            st = self.parts.get(p)
            if st is None:
                continue
            buf = st.buf
            if not buf.values:
                buf.first_at = now
            buf.values += [m.value() or b"" for m in group]  # a tombstone is skipped as unreadable
            buf.offsets += [m.offset() for m in group]  # type: ignore[misc]
            if self._keep_timestamps:
                buf.timestamps += [m.timestamp()[1] for m in group]
            taken += len(group)
        return taken

    def stop(self, *_: Any) -> None:
        self.stopping = True


def serve(cfg: LakeSinkConfig) -> None:
    """Run the sink until SIGTERM/SIGINT (a graceful stop flushes and commits first)."""
    sink = LakeSink(cfg)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sink.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = MetricsServer(
        cfg.host, cfg.port, {STATUS_PATH: lambda: (200, sink.status().to_body()), "/healthz": sink.healthz}
    )
    server.start()
    try:
        sink.run()
    finally:
        server.stop()
