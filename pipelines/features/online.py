"""The online store: the newest feature row of each entity in Redis, and its read library.

Layout: one hash per entity, ``<key prefix><entity>``, whose fields are the feature names
(values JSON-encoded, so a number reads back as a number) beside three of the row's own:
``_ts`` (the row's feature timestamp, ms), ``_at`` (when it was materialized, ms) and
``_ttl`` (ms). A value is readable for ``_ttl`` after ``_at``: the reader enforces it (a row
past it is *expired*, whatever Redis still holds), and the key's own expiry, refreshed at
every materialization, only reclaims memory. Materialization replaces whole rows in
transactions of `batch_size` entities, so a reader never sees half of a row.

`OnlineTable.get_online_features` reads any number of entities and features in one round
trip and returns each value with its status: present, expired or missing. Every read counts
its values by status (``gyre_online_store_reads_total``) and times its round trip
(``gyre_online_store_read_seconds``), labelled with the FeatureJob the key prefix names, in
the reading process's default registry (a model server's ``/metrics``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import redis
from gyre.pipelines.features.config import key_prefix
from prometheus_client import Counter, Histogram

__all__ = [
    "EntityFeatures",
    "OnlineRow",
    "OnlineTable",
    "OnlineValue",
    "get_online_features",
    "key_prefix",
    "materialize",
    "read_online_features",
]

TS_FIELD = "_ts"
AT_FIELD = "_at"
TTL_FIELD = "_ttl"
_OWN = (TS_FIELD, AT_FIELD, TTL_FIELD)

ValueStatus = Literal["present", "expired", "missing"]

READS = Counter(
    "gyre_online_store_reads_total",
    "Feature values read from a FeatureJob's online store, by status (present, expired, missing).",
    ["featurejob", "status"],
)
READ_SECONDS = Histogram(
    "gyre_online_store_read_seconds",
    "One round trip to a FeatureJob's online store (any number of entities).",
    ["featurejob"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)


def feature_job_of(prefix: str) -> str:
    """The FeatureJob a key prefix (`key_prefix`: ``gyre:<namespace>:<featurejob>:``) names."""
    parts = prefix.split(":")
    return parts[2] if len(parts) == 4 and parts[0] == "gyre" else prefix


def redis_address(url: str) -> str:
    """``host:port`` of a ``redis://`` URL, for messages and status."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def connect(url: str, timeout_s: float = 2.0) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


@dataclass(frozen=True)
class OnlineRow:
    """One entity's feature row as the job materializes it."""

    entity: str
    feature_ts_ms: int
    values: Mapping[str, Any]


def materialize(
    client: redis.Redis,
    prefix: str,
    rows: Iterable[OnlineRow],
    ttl_s: float,
    batch_size: int = 500,
    now_ms: int | None = None,
) -> int:
    """Write ``rows`` (one per entity), replacing each entity's previous row and refreshing
    its expiry; returns the rows written."""
    at = int(time.time() * 1000) if now_ms is None else now_ms
    ttl_ms = max(1, int(ttl_s * 1000))
    written = 0
    pipe = client.pipeline(transaction=True)
    pending = 0
    for row in rows:
        key = prefix + row.entity
        mapping: dict[Any, Any] = {
            name: json.dumps(value) for name, value in row.values.items() if value is not None
        }
        mapping |= {TS_FIELD: row.feature_ts_ms, AT_FIELD: at, TTL_FIELD: ttl_ms}
        pipe.delete(key)
        pipe.hset(key, mapping=mapping)
        pipe.pexpire(key, ttl_ms)
        pending += 1
        if pending >= batch_size:
            pipe.execute()
            written += pending
            pending = 0
    if pending:
        pipe.execute()
        written += pending
    return written


@dataclass(frozen=True)
class OnlineValue:
    value: Any
    status: ValueStatus


@dataclass(frozen=True)
class EntityFeatures:
    """What the online store holds for one entity."""

    entity: str
    values: Mapping[str, OnlineValue]
    feature_time_ms: int | None = None  # the row's feature timestamp (None: no row)
    age_s: float | None = None  # since it was materialized

    @property
    def present(self) -> bool:
        return all(v.status == "present" for v in self.values.values())


class OnlineTable:
    """A FeatureJob's rows in Redis (the address and key prefix its status publishes)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str, timeout_s: float = 2.0) -> OnlineTable:
        return cls(connect(url, timeout_s), prefix)

    def get_online_features(
        self, entities: Sequence[str], features: Sequence[str], now_ms: int | None = None
    ) -> list[EntityFeatures]:
        """The ``features`` of each of ``entities`` (in order), in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for entity in entities:
            pipe.hmget(self.prefix + str(entity), [*features, *_OWN])
        job = feature_job_of(self.prefix)
        with READ_SECONDS.labels(job).time():
            replies = pipe.execute()
        return _counted(job, decode_rows(entities, features, replies, now_ms))


async def read_online_features(
    client: Any, prefix: str, entities: Sequence[str], features: Sequence[str], now_ms: int | None = None
) -> list[EntityFeatures]:
    """`OnlineTable.get_online_features` for an asyncio client (``redis.asyncio.Redis``), as
    the model server reads the store: one round trip, the same statuses."""
    pipe = client.pipeline(transaction=False)
    for entity in entities:
        pipe.hmget(prefix + str(entity), [*features, *_OWN])
    job = feature_job_of(prefix)
    started = time.perf_counter()
    replies = await pipe.execute()
    READ_SECONDS.labels(job).observe(time.perf_counter() - started)
    return _counted(job, decode_rows(entities, features, replies, now_ms))


def _counted(job: str, rows: list[EntityFeatures]) -> list[EntityFeatures]:
    counts: dict[str, int] = {}
    for row in rows:
        for value in row.values.values():
            counts[value.status] = counts.get(value.status, 0) + 1
    for status, n in counts.items():
        READS.labels(job, status).inc(n)
    return rows


def decode_rows(
    entities: Sequence[str],
    features: Sequence[str],
    replies: Sequence[Sequence[bytes | str | None]],
    now_ms: int | None = None,
) -> list[EntityFeatures]:
    """The ``HMGET`` replies of ``entities`` (features, then the row's own fields) → values with
    their status, the TTL enforced at ``now_ms``."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    n = len(features)
    out: list[EntityFeatures] = []
    for entity, reply in zip(entities, replies, strict=True):
        ts, at, ttl = (int(x) if x is not None else None for x in reply[n:])
        if at is None:
            missing = OnlineValue(None, "missing")
            out.append(EntityFeatures(str(entity), dict.fromkeys(features, missing)))
            continue
        expired = ttl is not None and now - at > ttl
        values: dict[str, OnlineValue] = {}
        for name, raw in zip(features, reply[:n], strict=True):
            if raw is None:
                values[name] = OnlineValue(None, "missing")
            elif expired:
                values[name] = OnlineValue(None, "expired")
            else:
                values[name] = OnlineValue(json.loads(raw), "present")
        out.append(EntityFeatures(str(entity), values, ts, (now - at) / 1000.0))
    return out


def get_online_features(
    table: OnlineTable, entities: Sequence[str], features: Sequence[str]
) -> list[EntityFeatures]:
    """`OnlineTable.get_online_features`, as a function."""
    return table.get_online_features(entities, features)
