"""The lake sink's configuration: a frozen dataclass, JSON in ``$GYRE_CONFIG``, env overrides.

The Stream builder renders `LakeSinkConfig.to_json()` into the workload's config file; the
runtime supplies ``GYRE_PORT_HTTP`` (metrics/status port), ``GYRE_KAFKA_BOOTSTRAP``,
``GYRE_REPLICA_INDEX`` and ``GYRE_REPLICAS``, which override the file.
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
    env_int,
    load_client_config,
    string_map,
)
from gyre.pipelines._common.schema import StreamSchema, schema_from_json

COMMITTERS = ("auto", "rename", "object-store")


@dataclass(frozen=True)
class LakeSinkConfig(JsonConfig):
    """Everything the lake sink needs; the JSON keys are the field names.

    * ``topic``: the Kafka topic to consume.
    * ``schema``: the Stream's event schema (`StreamSchema` dict form); the Parquet schema is
      derived from it (`gyre.pipelines.lakesink.arrow.lake_schema`).
    * ``lake_uri``: where the lake is: ``file:///path`` (or a plain path) now; any URI
      ``pyarrow.fs.FileSystem.from_uri`` understands (``s3://bucket/prefix``) by design.
    * ``bootstrap_servers``: Kafka ``host:port[,...]``; ``$GYRE_KAFKA_BOOTSTRAP`` overrides.
    * ``group_id``: the consumer group under which offsets are committed to Kafka as a hint
      for tools (the lake's commit log is what the sink trusts); default
      ``gyre-lakesink-<topic>``.
    * ``flush_records`` / ``flush_interval_s``: a flush (one file per partition and date, plus
      a commit) happens when this many records are buffered or the oldest buffered record has
      waited this long.
    * ``compression``: Parquet codec.
    * ``committer``: ``rename`` (temp file + atomic rename; local and HDFS-like file
      systems), ``object-store`` (no rename; S3-like stores whose writes are atomic) or
      ``auto`` (by file system type).
    * ``fsync``: fsync data files, commit records and directories on local file systems.
    * ``keep_commit_records``: commit records kept per partition (older ones are deleted).
    * ``start_from``: where a partition with nothing in the lake starts: ``earliest`` or
      ``latest``.
    * ``host`` / ``port``: the ``/metrics``, ``/status``, ``/healthz`` server;
      ``$GYRE_PORT_HTTP`` overrides the port.
    * ``replica_index`` / ``replicas``: this sink owns partitions ``p`` with
      ``p % replicas == replica_index`` (``$GYRE_REPLICA_INDEX`` / ``$GYRE_REPLICAS``).
      Static ownership, not a consumer-group rebalance, so a partition never has two writers.
    * ``consumer_config``: extra librdkafka consumer settings.
    """

    topic: str
    schema: StreamSchema
    lake_uri: str
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str | None = None
    flush_records: int = 100_000
    flush_interval_s: float = 5.0
    compression: str = "zstd"
    committer: str = "auto"
    fsync: bool = True
    keep_commit_records: int = 10
    start_from: str = "earliest"
    host: str = "0.0.0.0"
    port: int = 8081
    replica_index: int = 0
    replicas: int = 1
    consumer_config: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.topic or not self.lake_uri:
            raise ConfigError("lake sink config: topic and lake_uri must not be empty")
        if self.committer not in COMMITTERS:
            raise ConfigError(f"lake sink config: committer must be one of {COMMITTERS}")
        if self.start_from not in ("earliest", "latest"):
            raise ConfigError("lake sink config: start_from must be earliest or latest")
        if not 0 <= self.replica_index < self.replicas:
            raise ConfigError("lake sink config: replica_index must be within 0..replicas-1")
        if self.flush_records < 1 or self.flush_interval_s <= 0:
            raise ConfigError("lake sink config: flush_records and flush_interval_s must be > 0")

    @property
    def consumer_group(self) -> str:
        return self.group_id or f"gyre-lakesink-{self.topic}"

    def consumer_settings(self) -> dict[str, str | int | float | bool]:
        settings: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.consumer_group,
            "client.id": f"gyre-lakesink-{self.replica_index}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": self.start_from,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            # The sink buffers for flush_interval_s anyway, so it lets the broker gather up to
            # 1 MiB (or wait 100 ms) per fetch: a fetch per few produce requests costs the
            # broker more CPU than the whole rest of its work on a record.
            "fetch.min.bytes": 1 << 20,
            "fetch.wait.max.ms": 100,
            "socket.nagle.disable": True,
        }
        settings.update(self.consumer_config)
        return settings

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        d["schema"] = self.schema.to_dict()
        d["consumer_config"] = dict(self.consumer_config)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LakeSinkConfig:
        return build_config(
            cls,
            data,
            "lake sink config",
            required=("schema",),
            convert={"schema": schema_from_json, "consumer_config": string_map},
        )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> LakeSinkConfig:
        env = os.environ if env is None else env
        d = load_client_config(env, default_port=8081)
        d["replica_index"] = env_int(env, "GYRE_REPLICA_INDEX", int(d.get("replica_index", 0)))
        d["replicas"] = env_int(env, "GYRE_REPLICAS", int(d.get("replicas", 1)))
        return cls.from_dict(d)
