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
    model_config = ConfigDict(json_schema_extra=validations(exactly_one("stream", "path")))

    stream: DnsName | None = None
    """A Stream in this namespace; its lake is read."""
    path: Uri | None = None
    """Parquet files at a URI."""


class FeatureSpec(ApiModel):
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
    aggregation: Aggregation | None = None
    field: FieldName | None = None
    """Column aggregated (not needed for count)."""
    window: Duration | None = None
    """Trailing window; unset means all history up to the row's timestamp."""
    filter: Annotated[str, Field(max_length=1024)] | None = None
    """A Spark SQL boolean expression rows must satisfy, e.g. "event = 'purchase'"."""
    sql: Annotated[str, Field(max_length=8192)] | None = None
    """Escape hatch: a Spark SQL expression over the entity's rows."""


class LabelSpec(ApiModel):
    name: FieldName
    expression: Annotated[str, Field(min_length=1, max_length=4096)]
    """Spark SQL over the entity's events after the cutoff, e.g. "count(*) = 0"."""
    horizon: Duration
    """How far after the feature timestamp the label looks."""


class OfflineStore(ApiModel):
    uri: Uri
    format: Literal["parquet"] = "parquet"


class OnlineStore(ApiModel):
    enabled: bool = True
    redis_url: Annotated[str, Field(pattern=r"^rediss?://.+$", max_length=1024)] | None = None
    """An external Redis; unset runs one for this FeatureJob."""
    ttl: Duration = "24h"
    """How long a feature row stays readable without a refresh."""


class Expectation(ApiModel):
    column: FieldName
    not_null: bool = False
    min: float | None = None
    max: float | None = None
    allowed_values: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=256)] | None = (
        None
    )


class DriftBaseline(ApiModel):
    uri: Uri | None = None
    """A Parquet snapshot to compare against; unset uses the first successful run."""
    metric: Literal["psi", "ks"] = "psi"
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.2


class ValidationSpec(ApiModel):
    expectations: Annotated[list[Expectation], Field(max_length=128)] = []
    drift_baseline: DriftBaseline | None = None
    fail_on_violation: bool = True


class SparkSpec(ApiModel):
    executors: Annotated[int, Field(ge=1, le=200)] = 1
    driver: Resources = Resources(cpu="1", memory="1Gi")
    executor: Resources = Resources(cpu="1", memory="2Gi")
    conf: Annotated[dict[str, str], Field(max_length=128)] = {}
    """Extra spark.* settings."""


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
    features: Annotated[list[FeatureSpec], Field(min_length=1, max_length=256)]
    labels: Annotated[list[LabelSpec], Field(max_length=16)] = []
    mode: Literal["batch", "streaming"] = "batch"
    schedule: (
        Annotated[str, Field(pattern=r"^(@(hourly|daily|weekly)|(\S+\s+){4}\S+)$", max_length=128)] | None
    ) = None
    """Cron schedule for batch mode; unset runs once per spec change."""
    offline: OfflineStore
    online: OnlineStore | None = None
    validation: ValidationSpec | None = None
    spark: SparkSpec = SparkSpec()


class FeatureJobStatus(BaseStatus):
    rows_written: Annotated[int, Field(ge=0)] | None = None
    entities: Annotated[int, Field(ge=0)] | None = None
    last_run_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    offline_uri: str | None = None
    online_keys: Annotated[int, Field(ge=0)] | None = None
    validation_failures: Annotated[int, Field(ge=0)] | None = None
    drift_score: float | None = None


FeatureJobSpec.STATUS = FeatureJobStatus
