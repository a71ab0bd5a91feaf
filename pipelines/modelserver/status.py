"""What the model server serves on ``/status`` (the InferenceService controller reads it).

Counts are since the process started; latencies cover the most recent requests
(``latency_window`` of the configuration), fallbacks included.
"""

from __future__ import annotations

from gyre.pipelines._common.status import StatusDoc

BREAKER_STATES = ("closed", "open", "half_open")


class ModelServerStatus(StatusDoc):
    name: str
    variant: str
    model_version: str
    ready: bool
    requests: int = 0  # prediction requests answered, fallbacks included (refused ones excluded)
    predictions: int = 0  # rows predicted by the model
    fallbacks: int = 0  # requests answered with the default response (deadline or open breaker)
    errors: int = 0  # requests that failed without a fallback to answer
    rejected: int = 0  # requests refused because the queue was full (429)
    invalid: int = 0  # requests refused as malformed (4xx)
    batches: int = 0  # forward passes
    mean_batch_size: float | None = None
    breaker: str = "closed"  # one of BREAKER_STATES
    breaker_opened: int = 0  # times the breaker opened
    queued: int = 0  # rows waiting for a forward pass now
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    fallback_rate: float | None = None  # fallbacks / requests over the latency window
    feature_lookups: int = 0  # online store round trips
    imputed: dict[str, int] = {}  # feature values the store lacked (imputed), by feature
    logged: int = 0  # prediction records Kafka acknowledged
    log_dropped: int = 0  # prediction records dropped: the producer's queue was full
    log_failed: int = 0  # prediction records Kafka did not take
    drift: dict[str, float] | None = None  # per feature drift score over the window (None: too few rows)
    drift_metric: str | None = None
