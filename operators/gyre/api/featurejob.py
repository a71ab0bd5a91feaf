"""`FeatureJob`: windowed aggregations and labels over a Stream or Parquet, into offline and online stores."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field

from gyre.api._base import (
    ApiModel,
    BaseStatus,
    DnsName,
    Duration,
    FieldName,
    Kind,
    KindInfo,
    Resources,
    Uri,
    age_column,
    cel,
    exactly_one,
    ready_column,
    validations,
)

Aggregation = Literal["count", "sum", "mean", "min", "max", "stddev", "last", "distinctCount"]


class FeatureSource(ApiModel):
    """The events features are computed from: a Stream's lake or Parquet files (set exactly one)."""

    model_config = ConfigDict(json_schema_extra=validations(exactly_one("stream", "path")))

    stream: DnsName | None = None
    """A Stream in this namespace; its lake is read."""
    path: Uri | None = None
    """Parquet files at a URI."""


class FeatureSpec(ApiModel):
    """One feature: an aggregation over a trailing window of the entity's rows, or a SQL
    expression (set exactly one of aggregation and sql)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            exactly_one("aggregation", "sql"),
            cel(
                "!has(self.aggregation) || self.aggregation == 'count' || has(self.field)",
                "field is required for every aggregation but count",
                ".field",
            ),
        )
    )

    name: FieldName
    """Column name of the feature in the offline and online stores (unique within the job)."""
    aggregation: Aggregation | None = None
    """How the field's values in the window are combined: count (rows), sum, mean, min, max,
    stddev, last (the newest value) or distinctCount."""
    field: FieldName | None = None
    """Column aggregated (not needed for count)."""
    window: Duration | None = None
    """Trailing window; unset means all history up to the row's timestamp."""
    filter: Annotated[str, Field(max_length=1024)] | None = None
    """A Spark SQL boolean expression rows must satisfy, e.g. "event = 'purchase'"."""
    sql: Annotated[str, Field(max_length=8192)] | None = None
    """Escape hatch: a Spark SQL expression over the entity's rows."""


class LabelSpec(ApiModel):
    """A training label computed from what the entity did after the feature timestamp."""

    name: FieldName
    """Column name of the label in the offline store."""
    expression: Annotated[str, Field(min_length=1, max_length=4096)]
    """Spark SQL over the entity's events after the cutoff, e.g. "count(*) = 0"."""
    horizon: Duration
    """How far after the feature timestamp the label looks."""


class OfflineStore(ApiModel):
    """Point-in-time correct feature rows for training (a TrainingJob's dataset.featureJob reads it)."""

    uri: Uri
    """Where the Parquet feature rows are written."""
    format: Literal["parquet"] = "parquet"
    """File format: parquet, the only one."""


class OnlineStore(ApiModel):
    """The newest feature values per entity in Redis, for low-latency lookup at serving time."""

    enabled: bool = True
    """false writes no online store; default true."""
    redis_url: Annotated[str, Field(pattern=r"^rediss?://.+$", max_length=1024)] | None = None
    """An external Redis; unset runs one for this FeatureJob."""
    ttl: Duration = "24h"
    """How long a feature row stays readable without a refresh."""


class Expectation(ApiModel):
    """A rule every row's value of one column must satisfy."""

    column: FieldName
    """The feature or source column the rule checks."""
    not_null: bool = False
    """true: a null value is a violation; default false."""
    min: float | None = None
    """Smallest allowed value (inclusive); unset: no lower bound."""
    max: float | None = None
    """Largest allowed value (inclusive); unset: no upper bound."""
    allowed_values: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=256)] | None = (
        None
    )
    """The only values allowed (compared as text); unset: any value."""


class DriftBaseline(ApiModel):
    """A reference distribution; a run whose features drift beyond the threshold is flagged."""

    uri: Uri | None = None
    """A Parquet snapshot to compare against; unset uses the first successful run."""
    metric: Literal["psi", "ks"] = "psi"
    """How drift is measured per feature: psi (population stability index, the default) or
    ks (Kolmogorov-Smirnov statistic)."""
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.2
    """Drift score above which a feature counts as drifted; default 0.2."""


class ValidationSpec(ApiModel):
    """Data checks run on every run's output before it is published."""

    expectations: Annotated[list[Expectation], Field(max_length=128)] = []
    """Rules on column values; violations are counted in status.validationFailures."""
    drift_baseline: DriftBaseline | None = None
    fail_on_violation: bool = True
    """true (the default): a run with violations fails and its output is not published;
    false: it is published and the violations are reported."""


class SparkSpec(ApiModel):
    """The Spark application that computes the features."""

    executors: Annotated[int, Field(ge=1, le=200)] = 1
    """Spark executors; default 1."""
    driver: Resources = Resources(cpu="1", memory="1Gi")
    """Resources of the Spark driver; default 1 CPU and 1Gi of memory."""
    executor: Resources = Resources(cpu="1", memory="2Gi")
    """Resources of each executor; default 1 CPU and 2Gi of memory."""
    conf: Annotated[dict[str, str], Field(max_length=128)] = {}
    """Extra spark.* settings, e.g. {"spark.sql.shuffle.partitions": "64"}."""


class FeatureJobSpec(Kind):
    """Features (windowed aggregations, SQL) and labels computed with Spark, point-in-time correct."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!(self.mode == 'streaming' && has(self.schedule))",
                "schedule applies to batch mode only; remove it or set mode: batch",
                ".schedule",
            ),
            cel(
                "self.features.all(f, self.features.exists_one(g, g.name == f.name))",
                "features names must be unique",
                ".features",
            ),
        )
    )

    INFO: ClassVar[KindInfo] = KindInfo(
        kind="FeatureJob",
        plural="featurejobs",
        singular="featurejob",
        short_names=["gfj"],
        printer_columns=[
            *ready_column(),
            {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
            {"name": "Rows", "type": "integer", "jsonPath": ".status.rowsWritten"},
            {"name": "Last Run", "type": "date", "jsonPath": ".status.lastRunTime"},
            age_column(),
        ],
    )

    source: FeatureSource
    entity: FieldName
    """Column that identifies the entity features describe (e.g. user_id)."""
    timestamp_field: FieldName
    """Event-time column: windows end at each row's timestamp, so no feature sees the future."""
    features: Annotated[list[FeatureSpec], Field(min_length=1, max_length=256)]
    """The features computed per entity and timestamp (names unique)."""
    labels: Annotated[list[LabelSpec], Field(max_length=16)] = []
    """Training labels computed alongside the features; default none."""
    mode: Literal["batch", "streaming"] = "batch"
    """batch (the default): runs once per spec change or on schedule; streaming: runs
    continuously, updating features as events arrive."""
    schedule: (
        Annotated[str, Field(pattern=r"^(@(hourly|daily|weekly)|(\S+\s+){4}\S+)$", max_length=128)] | None
    ) = None
    """Cron schedule for batch mode; unset runs once per spec change."""
    offline: OfflineStore
    online: OnlineStore | None = None
    validation: ValidationSpec | None = None
    spark: SparkSpec = SparkSpec()


class FeatureJobStatus(BaseStatus):
    """The job's conditions and what its last run produced."""

    rows_written: Annotated[int, Field(ge=0)] | None = None
    """Feature rows the last run wrote to the offline store."""
    entities: Annotated[int, Field(ge=0)] | None = None
    """Distinct entities in the last run's output."""
    last_run_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """When the last successful run finished."""
    offline_uri: str | None = None
    """Where the offline store's rows are (what dependents read)."""
    online_keys: Annotated[int, Field(ge=0)] | None = None
    """Entities held in the online store."""
    validation_failures: Annotated[int, Field(ge=0)] | None = None
    """Expectation violations in the last run."""
    drift_score: float | None = None
    """The largest drift score of any feature against the baseline, in the last run."""


FeatureJobSpec.STATUS = FeatureJobStatus
