"""The feature job's configuration: written by the FeatureJob builder, read once by the job.

Durations are seconds; every expression is Spark SQL. Point-in-time rules (`gyre.pipelines.
features.pit`): a feature at observation time ``t`` aggregates the entity's events with
``t - window < ts <= t``; a label aggregates those with ``t < ts <= t + horizon``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Literal

from gyre.pipelines._common.env import ConfigError, load_config_json
from pydantic import BaseModel, ConfigDict, ValidationError

REDIS_ENV = "GYRE_REDIS_ADDR"  # host:port of the Redis the runtime runs for this job


def key_prefix(namespace: str, feature_job: str) -> str:
    """The online store's keys of one FeatureJob's rows: ``gyre:<namespace>:<featurejob>:``."""
    return f"gyre:{namespace}:{feature_job}:"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureConfig(_Frozen):
    name: str
    aggregation: str | None = None  # count|sum|mean|min|max|stddev|last|distinctCount
    field: str | None = None
    window_s: float | None = None  # None: all history up to t
    filter: str | None = None
    sql: str | None = None


class LabelConfig(_Frozen):
    name: str
    expression: str
    horizon_s: float


class SpineConfig(_Frozen):
    """Observation points: every event's (entity, timestamp), a grid, or rows of a file."""

    kind: Literal["events", "every", "path"] = "events"
    every_s: float | None = None
    path: str | None = None


class ExpectationConfig(_Frozen):
    """A rule on an output column's values (`gyre.pipelines.features.checks`)."""

    column: str
    not_null: bool = False
    min: float | None = None
    max: float | None = None
    allowed_values: tuple[str, ...] | None = None


class DriftConfig(_Frozen):
    """Each run's features against a baseline sample (`gyre.pipelines.features.drift`)."""

    metric: Literal["psi", "ks"] = "psi"
    threshold: float = 0.2
    baseline_uri: str | None = None  # None: the first successful run's rows, kept beside the versions
    sample_rows: int = 20_000


class SourceField(_Frozen):
    name: str
    type: str  # the Stream schema's type: string|int|long|double|boolean|timestamp|...


class SourceConfig(_Frozen):
    kind: Literal["lake", "parquet"]  # a Stream's lake (with its commit log) or Parquet files
    uri: str
    fields: tuple[SourceField, ...] = ()  # known before any data exists (a Stream's schema)


class OnlineConfig(_Frozen):
    redis_url: str | None = None  # None: redis://$GYRE_REDIS_ADDR
    key_prefix: str
    ttl_s: float
    batch_size: int = 500


class FeatureJobConfig(_Frozen):
    name: str
    generation: int
    run: int = 1  # the run's number: a new number is a new run, even of the same generation
    source: SourceConfig
    entity: str
    timestamp_field: str
    features: tuple[FeatureConfig, ...]
    labels: tuple[LabelConfig, ...] = ()
    spine: SpineConfig = SpineConfig()
    offline_uri: str
    keep_versions: int = 5
    online: OnlineConfig | None = None
    expectations: tuple[ExpectationConfig, ...] = ()
    fail_on_violation: bool = True
    drift: DriftConfig | None = None
    master: str = "local[1]"
    spark_conf: Mapping[str, str] = {}
    driver_memory: str = "1g"
    wait_poll_s: float = 5.0  # how often a source without data is looked at again
    status_linger_s: float = 30.0  # after the run: until the final /status was read once

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    def redis_url(self, env: Mapping[str, str] | None = None) -> str | None:
        if self.online is None:
            return None
        if self.online.redis_url:
            return self.online.redis_url
        env = os.environ if env is None else env
        addr = env.get(REDIS_ENV)
        if not addr:
            raise ConfigError(f"online store without redis_url needs ${REDIS_ENV}")
        return f"redis://{addr}"


def load_config(env: Mapping[str, str] | None = None) -> FeatureJobConfig:
    data = load_config_json(env)
    if not data:
        raise ConfigError("the feature job needs its config file ($GYRE_CONFIG)")
    try:
        return FeatureJobConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid feature job config: {e}") from e


def start_process(log: logging.Logger) -> FeatureJobConfig | None:
    """A feature job process's start: logging set up and the config read; None (after logging
    why) when the config is missing or invalid, which the process exits 2 on."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return load_config()
    except ConfigError as e:
        log.error("%s", e)
        return None
