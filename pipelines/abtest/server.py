"""The A/B analysis's main loop: replay both topics, feed the join, look every interval.

Each topic is read by a consumer of its own (the two may live on different clusters) that is
*assigned* every partition at the beginning and commits nothing: the state is rebuilt from
the topics on every start, so a crash loses nothing and counts nothing twice (`join` makes
the result independent of the order the partitions interleave in). New partitions are
picked up every ``PARTITION_REFRESH_S``.

No look is taken until both topics have been read up to their high watermarks of the
moment they were assigned (``ready``; ``/healthz`` answers 503 until then): a look at half a
replay would feed the mSPRT and a sticky decision with figures the experiment never had.

``/status`` (`status.AbTestStatus`), ``/metrics`` and ``/healthz`` are served on
``metrics_port`` by a thread (`gyre.pipelines._common.httpserver`); the status document is
replaced whole after each look, so a reader never sees half of one.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from gyre.pipelines._common.httpserver import MetricsServer
from gyre.pipelines._common.status import STATUS_PATH
from gyre.pipelines.abtest.analysis import Analyst
from gyre.pipelines.abtest.config import AbTestConfig, TopicRef
from gyre.pipelines.abtest.decode import Malformed, decode_assignment, decode_outcome
from gyre.pipelines.abtest.join import OutcomeJoin
from gyre.pipelines.abtest.status import AbTestStatus, CountsStatus
from prometheus_client import Gauge

log = logging.getLogger("gyre.pipelines.abtest")

# Gauges, not counters: the values are the replayed state, the same again after a restart.
LABELS = ["experiment", "variant"]
REQUESTS = Gauge("gyre_experiment_requests", "Requests (2xx assignments) per variant.", LABELS)
OUTCOMES = Gauge("gyre_experiment_outcomes", "Requests with at least one joined outcome.", LABELS)
REWARD = Gauge("gyre_experiment_reward_sum", "The sum of the per-request rewards.", LABELS)
ALLOCATION = Gauge("gyre_experiment_allocation", "The allocation policy's weight per variant.", LABELS)
P_BEST = Gauge("gyre_experiment_p_best", "The posterior probability that the variant is best.", LABELS)
DECIDED = Gauge("gyre_experiment_decided", "1 once the experiment is decided.", ["experiment"])

PARTITION_REFRESH_S = 30.0
BATCH = 5000


class TopicReader:
    """One topic, every partition from its beginning; knows when it has read up to where the
    topic stood when each partition was assigned."""

    def __init__(self, ref: TopicRef, group: str) -> None:
        self.ref = ref
        self.consumer = Consumer(
            {
                "bootstrap.servers": ref.bootstrap_servers,
                "group.id": group,  # required by the client; never joined nor committed to
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
                "isolation.level": "read_committed",
                "logger": logging.getLogger("gyre.pipelines.abtest.kafka"),
            }
        )
        self.ends: dict[int, int] = {}  # partition -> high watermark when assigned

    def adopt(self) -> bool:
        """Assign partitions not assigned yet at their beginning; False while there are none."""
        md = self.consumer.list_topics(self.ref.topic, timeout=5)
        t = md.topics.get(self.ref.topic)
        if t is None or t.error is not None or not t.partitions:
            return bool(self.ends)
        new = sorted(p for p in t.partitions if p not in self.ends)
        for p in new:
            low, high = self.consumer.get_watermark_offsets(TopicPartition(self.ref.topic, p), timeout=5)
            self.ends[p] = high if high > low else -1  # -1: nothing to read up to
        if new:
            self.consumer.incremental_assign(
                [TopicPartition(self.ref.topic, p, OFFSET_BEGINNING) for p in new]
            )
            log.info("Assigned partitions %s of %s from the beginning", new, self.ref.topic)
        return bool(self.ends)

    def caught_up(self) -> bool:
        waiting = [p for p, end in self.ends.items() if end >= 0]
        if not waiting:
            return bool(self.ends)
        positions = self.consumer.position([TopicPartition(self.ref.topic, p) for p in waiting])
        done = all(tp.offset >= self.ends[tp.partition] for tp in positions)
        if done:
            for p in waiting:
                self.ends[p] = -1
        return done

    def read(self, timeout_s: float) -> list[Message]:
        out = []
        for m in self.consumer.consume(num_messages=BATCH, timeout=timeout_s):
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("Consumer error on %s: %s", self.ref.topic, err)
        return out

    def close(self) -> None:
        self.consumer.close()


class AbTest:
    """The workload's state: the join, the analyst, the counts and the latest status."""

    def __init__(self, cfg: AbTestConfig) -> None:
        self.cfg = cfg
        self.join = OutcomeJoin(cfg.variants, cfg.attribution_window_s, cfg.reward)
        self.analyst = Analyst(cfg)
        self.counts = {"assignments_read": 0, "feedback_read": 0, "malformed": 0, "ignored": 0}
        self.ready = False
        self.stopping = False
        self._logged_decision = False
        self._status = self._compute()

    # -- records ---------------------------------------------------------------------------

    def take_assignments(self, msgs: list[Message]) -> None:
        for m in msgs:
            self.counts["assignments_read"] += 1
            try:
                self.join.add_assignment(decode_assignment(m.value(), self.cfg.variants))
            except Malformed as e:
                self._malformed("assignment", m, e)

    def take_feedback(self, msgs: list[Message]) -> None:
        for m in msgs:
            self.counts["feedback_read"] += 1
            ts_type, ts_ms = m.timestamp()
            try:
                outcome = decode_outcome(m.value(), self.cfg, ts_ms if ts_type else None)
            except Malformed as e:
                self._malformed("feedback", m, e)
                continue
            if outcome is None:
                self.counts["ignored"] += 1
            else:
                self.join.add_outcome(outcome)

    def _malformed(self, what: str, m: Message, e: Exception) -> None:
        self.counts["malformed"] += 1
        log.debug(
            "Skipped a malformed %s record (%s[%s]@%s): %s", what, m.topic(), m.partition(), m.offset(), e
        )

    # -- looks -----------------------------------------------------------------------------

    def _compute(self) -> AbTestStatus:
        counts = CountsStatus(**self.counts, duplicates=self.join.duplicates)
        return self.analyst.status(self.join.totals, self.join.counts(), counts, ready=self.ready)

    def look(self) -> AbTestStatus:
        try:
            status = self._status = self._compute()
        except Exception:  # a statistic that fails on some totals must not stop the replay
            log.exception("Experiment %s: the analysis failed; kept the previous status", self.cfg.experiment)
            return self._status
        exp = self.cfg.experiment
        for v in status.variants:
            REQUESTS.labels(exp, v.name).set(v.requests)
            OUTCOMES.labels(exp, v.name).set(v.outcomes)
            REWARD.labels(exp, v.name).set(v.reward_sum)
            ALLOCATION.labels(exp, v.name).set(v.allocation)
            if v.p_best is not None:
                P_BEST.labels(exp, v.name).set(v.p_best)
        DECIDED.labels(exp).set(1 if status.decision.decided else 0)
        if status.decision.decided and not self._logged_decision:
            self._logged_decision = True
            log.info("Experiment %s decided: %s: %s", exp, status.decision.reason, status.decision.message)
        return status

    def status(self) -> AbTestStatus:
        return self._status

    def healthz(self) -> tuple[int, dict[str, Any]]:
        return (200 if self.ready else 503), {"experiment": self.cfg.experiment, "ready": self.ready}

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        group = f"gyre-abtest-{cfg.experiment}"
        readers = (
            TopicReader(cfg.assignments, group + "-assignments"),
            TopicReader(cfg.feedback, group + "-feedback"),
        )
        try:
            self._loop(*readers)
        finally:
            for r in readers:
                r.close()

    def _loop(self, assignments: TopicReader, feedback: TopicReader) -> None:
        cfg = self.cfg
        waited = False
        while not self.stopping:
            try:
                adopted = assignments.adopt() & feedback.adopt()
                problem = "they do not exist yet"
            except Exception as e:  # the broker is not up yet; retried
                adopted, problem = False, str(e)
            if adopted:
                break
            if not waited:
                log.warning(
                    "Waiting for topics %s and %s: %s", cfg.assignments.topic, cfg.feedback.topic, problem
                )
                waited = True
            time.sleep(1)
        log.info(
            "Experiment %s replaying %s and %s (variants %s, %s by %s)",
            cfg.experiment, cfg.assignments.topic, cfg.feedback.topic, ", ".join(cfg.variants),
            cfg.policy, cfg.method,
        )  # fmt: skip
        next_look = next_refresh = time.monotonic()
        while not self.stopping:
            self.take_assignments(assignments.read(0.05))
            self.take_feedback(feedback.read(0.05))
            now = time.monotonic()
            if not self.ready and assignments.caught_up() and feedback.caught_up():
                self.ready = True
                log.info("Experiment %s replayed its topics: %s", cfg.experiment, self.counts)
                next_look = now
            if now >= next_look:
                self.look()
                next_look = now + cfg.interval_s
            if now >= next_refresh:
                try:
                    assignments.adopt()
                    feedback.adopt()
                except Exception as e:  # retried on the next refresh
                    log.warning("Listing partitions failed: %s", e)
                next_refresh = now + PARTITION_REFRESH_S

    def stop(self, *_: Any) -> None:
        self.stopping = True


def serve(cfg: AbTestConfig) -> None:
    """Run until SIGTERM/SIGINT."""
    abtest = AbTest(cfg)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        abtest.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = MetricsServer(
        cfg.host,
        cfg.metrics_port,
        {STATUS_PATH: lambda: (200, abtest.status().to_body()), "/healthz": abtest.healthz},
    )
    server.start()
    log.info(
        "Experiment %s serving /status and /metrics on %s:%d", cfg.experiment, cfg.host, cfg.metrics_port
    )
    try:
        abtest.run()
    finally:
        server.stop()
