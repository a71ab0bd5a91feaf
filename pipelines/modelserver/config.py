"""The model server's configuration: a frozen dataclass, JSON in ``$GYRE_CONFIG``, env overrides.

The InferenceService builder renders `ModelServerConfig.to_json()` into the workload's config
file; ``$GYRE_PORT_HTTP`` overrides the port. JSON shape (keys are the field names)::

    {"name": "churn", "artifact": "file:///models/churn-g1", "variant": "stable",
     "batching": {"enabled": true, "max_batch_size": 32, "max_latency_ms": 5, "max_queue": 1024},
     "fallback": {"deadline_ms": 100, "failure_threshold": 5, "reset_timeout_s": 30,
                  "default_response": {"churn_probability": 0.1}},
     "features": {"redis_url": "redis://127.0.0.1:6379/0", "entity_key": "user_id",
                  "key_prefix": "churn-features:"},
     "port": 8080}
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gyre.pipelines._common.env import ConfigError, JsonConfig, build_config, env_int, load_config_json

T = TypeVar("T")
VARIANTS = ("stable", "canary", "shadow")


@dataclass(frozen=True)
class BatchingConfig:
    """Concurrent requests grouped into one forward pass (``enabled`` false: one per request).

    ``max_queue``: rows waiting for a forward pass at most; a request beyond it is refused
    (429) rather than queued without bound.
    """

    enabled: bool = True
    max_batch_size: int = 32
    max_latency_ms: float = 5.0
    max_queue: int = 1024

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"model server config: batching.max_batch_size {self.max_batch_size} < 1")
        if not math.isfinite(self.max_latency_ms) or self.max_latency_ms < 0:
            raise ConfigError(f"model server config: batching.max_latency_ms {self.max_latency_ms} < 0")
        if self.max_queue < 1:
            raise ConfigError(f"model server config: batching.max_queue {self.max_queue} < 1")


@dataclass(frozen=True)
class FallbackConfig:
    """The deadline of a prediction, what is answered past it, and the circuit breaker."""

    deadline_ms: float = 100.0
    failure_threshold: int = 5
    reset_timeout_s: float = 30.0
    default_response: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.deadline_ms) or self.deadline_ms <= 0:
            raise ConfigError(f"model server config: fallback.deadline_ms {self.deadline_ms} must be > 0")
        if self.failure_threshold < 1:
            raise ConfigError("model server config: fallback.failure_threshold must be >= 1")
        if not math.isfinite(self.reset_timeout_s) or self.reset_timeout_s <= 0:
            raise ConfigError("model server config: fallback.reset_timeout_s must be > 0")


@dataclass(frozen=True)
class FeaturesConfig:
    """Online feature lookup: each request row names its entity in ``entity_key``; the
    features it does not carry come from the online store at ``redis_url``."""

    redis_url: str
    entity_key: str
    key_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"model server config: features.redis_url {self.redis_url!r} is not a Redis URL"
            )
        if not self.entity_key:
            raise ConfigError("model server config: features.entity_key must not be empty")


@dataclass(frozen=True)
class LoggingConfig:
    """Predictions produced to ``topic`` at ``bootstrap_servers`` (a Stream's), a share
    ``sample_rate`` of them."""

    bootstrap_servers: str
    topic: str
    sample_rate: float = 1.0

    def __post_init__(self) -> None:
        if not self.bootstrap_servers or not self.topic:
            raise ConfigError("model server config: logging needs bootstrap_servers and topic")
        if not 0 <= self.sample_rate <= 1:
            raise ConfigError(
                f"model server config: logging.sample_rate {self.sample_rate} is not within 0..1"
            )


@dataclass(frozen=True)
class DriftConfig:
    """Live inputs of the last ``window_s`` seconds against the artifact's training sample,
    per feature by ``metric`` (psi or ks)."""

    metric: str = "psi"
    window_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.metric not in ("psi", "ks"):
            raise ConfigError(f"model server config: drift.metric {self.metric!r} is not psi or ks")
        if not self.window_s > 0:
            raise ConfigError("model server config: drift.window_s must be > 0")


@dataclass(frozen=True)
class ModelServerConfig(JsonConfig):
    """Everything the model server needs.

    * ``name``: the model's name in the URLs (``/v1/models/<name>:predict``, ``/v2/models/<name>``).
    * ``artifact``: the TrainingJob artifact's directory (a path or ``file://`` URI).
    * ``variant``: which of the service's models this server is (stable, canary, shadow).
    * ``warmup_rows``: rows of the artifact's own feature schema predicted before the server
      reports ready.
    """

    name: str
    artifact: str
    variant: str = "stable"
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    features: FeaturesConfig | None = None
    logging: LoggingConfig | None = None
    drift: DriftConfig | None = None
    latency_window: int = 2048  # recent requests the /status percentiles cover
    host: str = "0.0.0.0"
    port: int = 8080

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("model server config: name must not be empty")
        if not self.artifact:
            raise ConfigError("model server config: artifact must not be empty")
        if self.variant not in VARIANTS:
            raise ConfigError(f"model server config: variant {self.variant!r} is not one of {VARIANTS}")
        if self.latency_window < 1:
            raise ConfigError("model server config: latency_window must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        b, f = self.batching, self.fallback
        return {
            "name": self.name,
            "artifact": self.artifact,
            "variant": self.variant,
            "batching": {
                "enabled": b.enabled,
                "max_batch_size": b.max_batch_size,
                "max_latency_ms": b.max_latency_ms,
                "max_queue": b.max_queue,
            },
            "fallback": {
                "deadline_ms": f.deadline_ms,
                "failure_threshold": f.failure_threshold,
                "reset_timeout_s": f.reset_timeout_s,
                "default_response": None if f.default_response is None else dict(f.default_response),
            },
            "features": None
            if self.features is None
            else {
                "redis_url": self.features.redis_url,
                "entity_key": self.features.entity_key,
                "key_prefix": self.features.key_prefix,
            },
            "logging": None
            if self.logging is None
            else {
                "bootstrap_servers": self.logging.bootstrap_servers,
                "topic": self.logging.topic,
                "sample_rate": self.logging.sample_rate,
            },
            "drift": None
            if self.drift is None
            else {"metric": self.drift.metric, "window_s": self.drift.window_s},
            "latency_window": self.latency_window,
            "host": self.host,
            "port": self.port,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelServerConfig:
        return build_config(
            cls,
            data,
            "model server config",
            required=("name", "artifact"),
            convert={
                "batching": _nested(BatchingConfig, "batching"),
                "fallback": _nested(FallbackConfig, "fallback"),
                "features": _nested(FeaturesConfig, "features", ("redis_url", "entity_key")),
                "logging": _nested(LoggingConfig, "logging", ("bootstrap_servers", "topic")),
                "drift": _nested(DriftConfig, "drift"),
            },
        )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> ModelServerConfig:
        """The file ``$GYRE_CONFIG`` names, with the runtime's port."""
        env = os.environ if env is None else env
        data = load_config_json(env)
        data["port"] = env_int(env, "GYRE_PORT_HTTP", int(data.get("port", 8080)))
        return cls.from_dict(data)


def _nested(cls: type[T], field: str, required: tuple[str, ...] = ()) -> Callable[[Any], T | None]:
    """The converter of a nested object ``field`` (``null``: None)."""

    def convert(value: Any) -> T | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ConfigError(f"model server config: {field} must be an object")
        return build_config(cls, value, f"model server config: {field}", required=required)

    return convert
