"""The collector's configuration: a frozen dataclass, JSON in ``$GYRE_CONFIG``, env overrides.

The Stream builder renders `CollectorConfig.to_json()` into the workload's config file; the
runtime supplies ``GYRE_PORT_HTTP`` (listen port) and ``GYRE_KAFKA_BOOTSTRAP`` (the broker's
``host:port``), which override the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gyre.pipelines._common.env import (
    ConfigError,
    JsonConfig,
    build_config,
    load_client_config,
    string_map,
)
from gyre.pipelines._common.schema import StreamSchema, schema_from_json


@dataclass(frozen=True)
class CollectorConfig(JsonConfig):
    """Everything the collector needs; the JSON keys are the field names.

    * ``topic``: the Kafka topic valid events are produced to.
    * ``schema``: the event schema (`StreamSchema` dict form).
    * ``bootstrap_servers``: Kafka ``host:port[,...]``; ``$GYRE_KAFKA_BOOTSTRAP`` overrides.
    * ``dead_letter_topic``: where rejected events go (``None``: rejected events are only
      reported in the response and counted).
    * ``auth_token_file``: a file holding the bearer token clients must send
      (``Authorization: Bearer <token>``); ``None`` disables auth. Re-read when it changes,
      so a rotated Kubernetes Secret takes effect without a restart.
    * ``host`` / ``port``: where to listen; ``$GYRE_PORT_HTTP`` overrides the port.
    * ``max_request_bytes``: larger bodies are answered 413.
    * ``max_events_per_request``: longer arrays are answered 413.
    * ``max_queued_events``: the producer's queue bound. A request that would overflow it is
      answered 429 with ``Retry-After`` before any of its events is produced.
    * ``retry_after_s``: the ``Retry-After`` value for 429/503 answers.
    * ``delivery_timeout_ms``: how long the producer tries to deliver an event before the
      response reports it ``failed``.
    * ``linger_ms`` / ``compression``: producer batching (latency vs. throughput). A request's
      records are produced over a few milliseconds of validation, so a 2 ms linger split them
      into many small produce requests, each costing the broker CPU; 5 ms roughly halves the
      broker's CPU per event under load for 3 ms more request latency.
    * ``producer_config``: extra librdkafka producer settings; they win over the above, except
      ``enable.idempotence`` and ``acks``, which stay ``true``/``all``.
    """

    topic: str
    schema: StreamSchema
    bootstrap_servers: str = "127.0.0.1:9092"
    dead_letter_topic: str | None = None
    auth_token_file: str | None = None
    host: str = "0.0.0.0"
    port: int = 8080
    max_request_bytes: int = 16 * 1024 * 1024
    max_events_per_request: int = 100_000
    max_queued_events: int = 200_000
    retry_after_s: int = 1
    delivery_timeout_ms: int = 30_000
    linger_ms: float = 5.0
    compression: str = "lz4"
    producer_config: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.topic:
            raise ConfigError("collector config: topic must not be empty")
        if self.max_queued_events < self.max_events_per_request:
            raise ConfigError("collector config: max_queued_events must be at least max_events_per_request")

    def producer_settings(self) -> dict[str, str | int | float | bool]:
        settings: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": "gyre-collector",
            "linger.ms": self.linger_ms,
            "compression.type": self.compression,
            "queue.buffering.max.messages": self.max_queued_events,
            "message.timeout.ms": self.delivery_timeout_ms,
            # Up to five produce requests are in flight per connection; with Nagle on, the
            # later ones can wait for a delayed ACK (tens of ms) on every request.
            "socket.nagle.disable": True,
        }
        settings.update(self.producer_config)
        # Not overridable: accepted means written to every in-sync replica, once.
        settings["enable.idempotence"] = "true"
        settings["acks"] = "all"
        return settings

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "schema": self.schema.to_dict(),
            "bootstrap_servers": self.bootstrap_servers,
            "dead_letter_topic": self.dead_letter_topic,
            "auth_token_file": self.auth_token_file,
            "host": self.host,
            "port": self.port,
            "max_request_bytes": self.max_request_bytes,
            "max_events_per_request": self.max_events_per_request,
            "max_queued_events": self.max_queued_events,
            "retry_after_s": self.retry_after_s,
            "delivery_timeout_ms": self.delivery_timeout_ms,
            "linger_ms": self.linger_ms,
            "compression": self.compression,
            "producer_config": dict(self.producer_config),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CollectorConfig:
        return build_config(
            cls,
            data,
            "collector config",
            required=("schema",),
            convert={"schema": schema_from_json, "producer_config": string_map},
        )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> CollectorConfig:
        env = os.environ if env is None else env
        return cls.from_dict(load_client_config(env, default_port=8080))
