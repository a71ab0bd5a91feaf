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
    """Trailing window: at observation time t, the events with t - window < timestamp <= t;
    unset means all history up to t."""
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
    """How far after the feature timestamp the label looks: the events with
    t < timestamp <= t + horizon; a row whose horizon has not elapsed (t + horizon after the
    newest event) gets no label and is no training row."""


class SpineSpec(ApiModel):
    """The observation points of the training set, one row per (entity, time): every
    event's timestamp (the default), a fixed grid (every), or the rows of a Parquet file of
    (entity, timestamp) (path); set at most one."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!(has(self.every) && has(self.path))", "set at most one of every and path")
        )
    )

    every: Duration | None = None
    """A grid: for each entity, every multiple of this duration (since the Unix epoch) from its
    first event to the newest event in the source."""
    path: Uri | None = None
    """Parquet files whose rows (the entity and timestampField columns) are the points."""


class OfflineStore(ApiModel):
    """Point-in-time correct feature rows for training (a TrainingJob's dataset.featureJob reads it)."""

    uri: Uri
    """Where the Parquet feature rows are written: each run adds an immutable version under
    versions/<version>/, partitioned by observation_date."""
    format: Literal["parquet"] = "parquet"
    """File format: parquet, the only one."""
    keep: Annotated[int, Field(ge=1, le=100)] = 5
    """How many versions are kept (the newest); default 5."""


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
    """The column the rule checks: a feature, a label, the entity or the timestampField."""
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
    start_timeout: Duration = "2m"
    """How long the driver's pod may be kept from starting (unschedulable, an image that cannot
    be pulled, a container that cannot be created) before the FeatureJob is Degraded with the
    cause (reason DriverNotStarting); the run keeps waiting and starts once the cause is gone,
    and the previous version stays published. The cause shows in Progressing at once."""


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
            {"name": "Rows", "type": "integer", "jsonPath": ".status.offline.rows"},
            {"name": "Version", "type": "string", "jsonPath": ".status.offline.latestVersion", "priority": 1},
            {"name": "Keys", "type": "integer", "jsonPath": ".status.online.keys"},
            {"name": "Freshness", "type": "date", "jsonPath": ".status.online.newestFeatureTime"},
            {"name": "Last Run", "type": "date", "jsonPath": ".status.lastRun.time"},
            age_column(),
        ],
    )

    source: FeatureSource
    entity: FieldName
    """Column that identifies the entity features describe (e.g. user_id)."""
    timestamp_field: FieldName
    """Event-time column: windows end at each row's timestamp, so no feature sees the future."""
    spine: SpineSpec = SpineSpec()
    """The observation points; default every event's timestamp."""
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


class LastRun(ApiModel):
    """What the last run did (successful or not)."""

    model_config = ConfigDict(frozen=False)

    generation: int | None = None
    """The FeatureJob generation it computed."""
    run: Annotated[int, Field(ge=1)] | None = None
    """Its number (runs of a FeatureJob are numbered from 1, across generations)."""
    trigger: Literal["spec", "schedule"] | None = None
    """What started it: a spec change (or the first run), or spec.schedule."""
    scheduled_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """With trigger schedule: the schedule's time it ran for."""
    time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """When it finished."""
    duration_seconds: float | None = None
    """How long it took, from start to the online store written."""
    rows: Annotated[int, Field(ge=0)] | None = None
    """Training rows written (their label horizon has elapsed)."""
    unlabeled_rows: Annotated[int, Field(ge=0)] | None = None
    """Observation rows left out of the training set: their label horizon has not elapsed."""
    entities: Annotated[int, Field(ge=0)] | None = None
    """Distinct entities in its rows."""
    version: str | None = None
    """The offline version it wrote."""
    partitions_read: Annotated[list[str], Field(max_length=4096)] = []
    """The source partitions (lake days) it read."""
    partitions_changed: Annotated[list[str], Field(max_length=4096)] = []
    """Those new or grown since the version it built on (a full run: every partition)."""
    incremental: bool | None = None
    """Whether it kept the newest version's earlier observation days and recomputed only the
    later ones (reading the changed lake days and the feature window before them)."""
    recomputed_from: str | None = None
    """An incremental run: the first observation day (UTC) it recomputed."""
    full_run_reason: str | None = None
    """A full run: why it could not be incremental (no earlier version, a changed definition, a
    feature without a window, a file spine, a removed partition)."""
    source_version: str | None = None
    """What the source held when it was read (a Stream's lake: each Kafka partition's next offset)."""
    succeeded: bool | None = None
    """Whether it wrote a new version."""
    reason: str | None = None
    """Why it did not succeed (InvalidExpression, RedisUnreachable, RunFailed)."""
    message: str | None = None
    """What it reported at its end."""


class OfflineVersionStatus(ApiModel):
    """One immutable version of the offline store."""

    model_config = ConfigDict(frozen=False)

    version: str
    """Its name (a UTC timestamp first, so names sort by age)."""
    uri: str
    """Its Parquet directory, partitioned by observation_date."""
    rows: Annotated[int, Field(ge=0)]
    """Training rows in it."""
    source_version: str | None = None
    """The source version it was computed from."""
    created: str | None = None
    """When it was written (RFC 3339)."""


class OfflineStatus(ApiModel):
    """The offline store: what a TrainingJob with dataset.featureJob reads."""

    model_config = ConfigDict(frozen=False)

    uri: str
    """The store's root (offline.uri)."""
    latest_version: str | None = None
    """The newest version's name."""
    latest_uri: str | None = None
    """The newest version's Parquet directory: what dependents read by default."""
    rows: Annotated[int, Field(ge=0)] | None = None
    """Rows of the newest version."""
    source_version: str | None = None
    """The source version the newest version was computed from."""
    versions: Annotated[list[OfflineVersionStatus], Field(max_length=100)] = []
    """Every version kept, newest first."""


class OnlineStatus(ApiModel):
    """The online store: where the newest values are, how many and how fresh."""

    model_config = ConfigDict(frozen=False)

    address: str | None = None
    """host:port of the Redis holding the values."""
    key_prefix: str | None = None
    """The keys are this prefix and the entity (gyre.pipelines.features.online reads them)."""
    keys: Annotated[int, Field(ge=0)] | None = None
    """Entities the last run materialized."""
    newest_feature_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """The feature timestamp of the newest materialized row."""
    oldest_feature_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """The feature timestamp of the oldest materialized row."""
    materialized_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """When the values were written; they read as expired ttl after it."""
    ttl_seconds: float | None = None
    """online.ttl in seconds."""


class CurrentRun(ApiModel):
    """The run the FeatureJob is on: in progress, or the last one started."""

    model_config = ConfigDict(frozen=False)

    number: Annotated[int, Field(ge=1)]
    """The run's number."""
    generation: int
    """The FeatureJob generation it computes."""
    trigger: Literal["spec", "schedule"]
    """What started it."""
    scheduled_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """With trigger schedule: the schedule's time it runs for."""
    start_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    """When it was started."""


class FeatureJobStatus(BaseStatus):
    """The job's conditions and what its runs produced."""

    current_run: CurrentRun | None = None
    """The run in progress, or the last one started (one run at a time: a schedule's time that
    passes during a run starts the next run when that one ends)."""
    last_schedule_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """The schedule's time the last scheduled run ran for."""
    next_schedule_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """When spec.schedule starts the next run."""
    history: Annotated[list[LastRun], Field(max_length=20)] = []
    """The last finished runs, newest first (at most 20)."""

    last_run: LastRun | None = None
    """The last run that finished."""
    offline: OfflineStatus | None = None
    """The published offline version (kept when a later run fails)."""
    online: OnlineStatus | None = None
    """The online store's address, keys and freshness."""
    features: Annotated[list[str], Field(max_length=256)] = []
    """The feature columns, in spec order (what a TrainingJob trains on by default)."""
    labels: Annotated[list[str], Field(max_length=16)] = []
    """The label columns."""
    entity: str | None = None
    """The entity column of the rows."""
    timestamp_field: str | None = None
    """The observation-time column of the rows."""
    failure_message: str | None = None
    """Why the last run failed (the previous version stays served)."""
    validation_failures: Annotated[int, Field(ge=0)] | None = None
    """Expectation violations in the last run."""
    violations: Annotated[dict[str, int], Field(max_length=128)] = {}
    """Expectation violations of the last run per column."""
    drift_score: float | None = None
    """The largest drift score of any feature against the baseline, in the last run."""
    drift: Annotated[dict[str, float], Field(max_length=256)] = {}
    """Each feature's drift score against the baseline in the last successful run
    (validation.driftBaseline)."""
    drifted_features: Annotated[list[str], Field(max_length=256)] = []
    """The features whose score is above validation.driftBaseline.threshold."""
    drift_baseline: str | None = None
    """Where the baseline sample is (driftBaseline.uri, or the first run's rows kept beside the
    offline versions)."""


FeatureJobSpec.STATUS = FeatureJobStatus
