"""Prediction logging: every prediction, sampled, produced to the logging Stream's topic.

A record per predicted row (request id, entity key, model, version, variant, inputs, output,
latency, fallback flag, ``ts``: the time in epoch milliseconds, as a Stream's collector writes a
timestamp) as JSON, keyed by the entity key when there is one, so outcomes can later be joined
to predictions and the Stream's lake sink writes them to Parquet like any other event. It never
adds to a request's latency: the log is a `gyre.pipelines._common.recordlog.RecordLog`, which
queues and never waits.
"""

from __future__ import annotations

from gyre.pipelines._common.recordlog import RecordLog
from gyre.pipelines.modelserver.config import LoggingConfig
from prometheus_client import Counter

LOGGED = Counter(
    "gyre_model_predictions_logged_total",
    "Prediction records by outcome (delivered, dropped: the queue was full, failed: Kafka refused).",
    ["model", "variant", "outcome"],
)


def open_prediction_log(config: LoggingConfig, labels: tuple[str, str]) -> RecordLog:
    """The prediction log ``config`` describes; ``labels``: the model's name and variant."""
    return RecordLog(
        config.bootstrap_servers,
        config.topic,
        name="prediction log",
        counter=LOGGED,
        labels=labels,
        sample_rate=config.sample_rate,
    )
