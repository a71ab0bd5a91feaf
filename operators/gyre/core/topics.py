"""The desired state of a Kafka topic: pure data that the Stream builder computes.

`gyre.controllers.topics` converges a cluster's topic to a `TopicSpec`; this module holds no
client, so builders and tests use it with nothing but the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TopicSpec:
    """The desired state of a topic.

    ``retention_ms``: ``None`` keeps the broker default, ``-1`` keeps data forever.
    ``cleanup_policy``: ``delete``, ``compact`` or ``compact,delete``. ``config``: any other
    topic-level config (``min.insync.replicas``, ``max.message.bytes``, ...); it wins over the
    two named fields when both set the same key.
    """

    name: str
    partitions: int = 1
    replication_factor: int = 1
    retention_ms: int | None = None
    cleanup_policy: str = "delete"
    config: Mapping[str, str] = field(default_factory=dict)

    def desired_config(self) -> dict[str, str]:
        want: dict[str, str] = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None:
            want["retention.ms"] = str(self.retention_ms)
        want.update({str(k): str(v) for k, v in self.config.items()})
        return want

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "partitions": self.partitions,
            "replication_factor": self.replication_factor,
            "retention_ms": self.retention_ms,
            "cleanup_policy": self.cleanup_policy,
            "config": dict(self.config),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TopicSpec:
        return cls(
            name=str(data["name"]),
            partitions=int(data.get("partitions", 1)),
            replication_factor=int(data.get("replication_factor", 1)),
            retention_ms=None if data.get("retention_ms") is None else int(data["retention_ms"]),
            cleanup_policy=str(data.get("cleanup_policy", "delete")),
            config={str(k): str(v) for k, v in (data.get("config") or {}).items()},
        )


def dead_letter_topic_spec(main: TopicSpec, name: str | None = None) -> TopicSpec:
    """The dead-letter topic for ``main``: ``<topic>.dlq``, same replication, 7 days, 1 partition.

    Rejected events are rare and read by people, so one partition keeps them in arrival order.
    """
    return TopicSpec(
        name=name or f"{main.name}.dlq",
        partitions=1,
        replication_factor=main.replication_factor,
        retention_ms=7 * 24 * 3600 * 1000,
        cleanup_policy="delete",
    )
