"""Prediction logging: every prediction, sampled, produced to the logging Stream's topic.

A record per predicted row (request id, entity key, model, version, variant, inputs, output,
latency, fallback flag, time) as JSON, keyed by the entity key when there is one, so outcomes
can later be joined to predictions. It never adds to a request's latency: `PredictionLog.log`
hands the record to the Kafka client's own bounded queue (``max_queue`` records) and returns;
a background thread serves delivery reports. When the queue is full the record is dropped and
counted, never waited for.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter

log = logging.getLogger("gyre.pipelines.modelserver")

LOGGED = Counter(
    "gyre_model_predictions_logged_total",
    "Prediction records by outcome (delivered, dropped: the queue was full, failed: Kafka refused).",
    ["model", "variant", "outcome"],
)


class PredictionLog:
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        sample_rate: float,
        labels: tuple[str, str],
        max_queue: int = 100_000,
    ) -> None:
        self.topic = topic
        self.sample_rate = sample_rate
        self.labels = labels
        self.delivered = self.dropped = self.failed = 0
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
        self._thread = threading.Thread(target=self._poll, name="prediction-log", daemon=True)
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
            self.dropped += 1
            LOGGED.labels(*self.labels, "dropped").inc()

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            LOGGED.labels(*self.labels, "delivered").inc()
        else:
            self.failed += 1
            LOGGED.labels(*self.labels, "failed").inc()
            if self.failed == 1 or self.failed % 1000 == 0:
                log.warning("Prediction log to %s failed (%d so far): %s", self.topic, self.failed, err)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._producer.flush(timeout_s)
