"""What the feature job serves on ``/status`` (the FeatureJob controller reads it)."""

from __future__ import annotations

from gyre.pipelines._common.status import StatusDoc

# Why a run did not produce a version (the FeatureJob's condition reasons).
SOURCE_EMPTY = "SourceEmpty"
INVALID_EXPRESSION = "InvalidExpression"
REDIS_UNREACHABLE = "RedisUnreachable"
RUN_FAILED = "RunFailed"
VALIDATION_FAILED = "ValidationFailed"


class OfflineVersion(StatusDoc):
    version: str
    uri: str
    rows: int
    source_version: str = ""
    created: str = ""  # RFC 3339


class OnlineResult(StatusDoc):
    address: str  # the Redis the values were written to (host:port)
    key_prefix: str
    keys: int = 0  # entities materialized by this run
    newest_feature_time: str | None = None  # RFC 3339: the newest materialized row's timestamp
    oldest_feature_time: str | None = None
    materialized_at: str | None = None
    ttl_s: float = 0.0


class FeatureRunStatus(StatusDoc):
    phase: str = "starting"  # starting | waiting | running | succeeded | failed
    step: str = ""  # what the run is doing: validating, reading, computing, writing, materializing
    reason: str = ""  # for waiting and failed: one of the constants above
    message: str = ""
    generation: int = 0  # of the FeatureJob this run computes
    run: int = 0  # the run's number (FeatureJobConfig.run)
    drift: dict[str, float] | None = None  # per feature, against the baseline (config.drift)
    drift_baseline: str = ""  # where the baseline is
    started_at: str = ""
    finished_at: str | None = None
    duration_s: float | None = None
    rows: int | None = None  # training rows written (labels elapsed)
    unlabeled_rows: int | None = None  # observation rows whose label horizon has not elapsed
    entities: int | None = None
    partitions_read: list[str] = []  # the source partitions (lake days) this run read
    partitions_changed: list[str] = []  # those new or grown since the version it builds on
    incremental: bool = False  # whether it kept the earlier days of the newest version
    recomputed_from: str = ""  # incremental: the first observation day it recomputed
    full_reason: str = ""  # a full run: why it could not be incremental
    source_version: str = ""  # what the source held when it was read
    version: OfflineVersion | None = None  # the version this run wrote
    versions: list[OfflineVersion] = []  # every version kept, newest first
    online: OnlineResult | None = None
    violations: dict[str, int] = {}  # expectation violations per column (every row it computed)
