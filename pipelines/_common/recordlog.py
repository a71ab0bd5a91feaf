"""A record log: JSON records produced to a Kafka topic beside the work, never in its way.

The model server's prediction log and the router's assignment log are each one of these.
`RecordLog.log` hands a record (sampled by ``sample_rate``) to the Kafka client's own bounded
queue (``max_queue`` records) and returns; a background thread serves delivery reports. When
the queue is full the record is dropped and counted, never waited for. Outcomes are counted
in `RecordCounts` and in a Prometheus counter whose last label is ``outcome`` (delivered,
dropped: the queue was full, failed: Kafka refused).
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter

log = logging.getLogger("gyre.pipelines.recordlog")

OUTCOMES = ("delivered", "dropped", "failed")


@dataclass
class RecordCounts:
    """Records by outcome; one object may outlive a log (a reload that replaces the log)."""

    delivered: int = 0
    dropped: int = 0
    failed: int = 0


class RecordLog:
    """A Kafka producer of JSON records to ``topic`` with a thread that serves its deliveries."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        name: str,
        counter: Counter,
        labels: tuple[str, ...] = (),
        sample_rate: float = 1.0,
        counts: RecordCounts | None = None,
        max_queue: int = 100_000,
    ) -> None:
        """``name``: what the log is called in log lines and its thread's name (``prediction
        log``); ``counter``'s labels are ``labels`` and then the outcome."""
        self.topic = topic
        self.name = name
        self._title = name.capitalize()  # what log lines start with
        self.sample_rate = sample_rate
        self.counts = counts if counts is not None else RecordCounts()
        self._outcomes = {outcome: counter.labels(*labels, outcome) for outcome in OUTCOMES}
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "queue.buffering.max.messages": max_queue,
                "linger.ms": 50,
                "compression.type": "lz4",
                "enable.idempotence": True,
            }
        )
        self._rng = random.Random()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=name.replace(" ", "-"), daemon=True)
        self._thread.start()

    def log(self, record: Mapping[str, Any], key: str | None) -> None:
        """Queue one record (or skip it, by the sample rate); never blocks."""
        if self.sample_rate < 1 and self._rng.random() >= self.sample_rate:
            return
        try:
            self._producer.produce(
                self.topic,
                json.dumps(record, separators=(",", ":")).encode(),
                key=key.encode() if key is not None else None,
                on_delivery=self._delivered,
            )
        except BufferError:
            self.counts.dropped += 1
            self._outcomes["dropped"].inc()

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.counts.delivered += 1
            self._outcomes["delivered"].inc()
        else:
            self.counts.failed += 1
            self._outcomes["failed"].inc()
            failed = self.counts.failed
            if failed == 1 or failed % 1000 == 0:
                log.warning("%s to %s failed (%d so far): %s", self._title, self.topic, failed, err)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued, for ``timeout_s`` at most (blocks; what is left is lost)."""
        self._stop.set()
        self._thread.join(timeout_s)
        left = self._producer.flush(timeout_s)
        if left:
            log.warning("%s to %s closed with %d records undelivered", self._title, self.topic, left)
