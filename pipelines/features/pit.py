"""Point-in-time features and labels in Spark.

For every observation point ``(entity, t)`` of the spine:

* a feature aggregates the entity's events with ``t - window < ts <= t`` (all events with
  ``ts <= t`` without a window) that satisfy its filter: never one from after ``t``;
* a label aggregates the entity's events with ``t < ts <= t + horizon``, and only when that
  horizon has elapsed, ``t + horizon <= as_of`` (the newest event time in the source); rows
  whose horizon has not elapsed carry no label and are not training rows.

Aggregations over no events follow SQL: count and distinctCount are 0, the others null.
Features by aggregation are window frames over each entity's events and observation points
together, ordered by time (``RANGE BETWEEN window - 1µs PRECEDING AND CURRENT ROW``, a
filter as a condition inside the aggregate), read at the points: one sort of the events,
however many features and windows, instead of a join of every point with every event of its
entity. SQL features and labels, which are arbitrary aggregate expressions, are range joins
of the spine with the events grouped by observation point (one per window and filter, or
horizon); the values of an empty window come from the same expressions over no rows, so a
SQL feature or label (``count(*) = 0``) means what it says there too. Events are placed by
their event time, whenever they arrived; events without an entity or a timestamp are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gyre.pipelines.features.config import FeatureConfig, FeatureJobConfig, LabelConfig, SourceField
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql import types as T  # noqa: N812

ENTITY = "__e"
T_US = "__t"  # observation time, µs since the epoch
EV_US = "__u"  # event time, µs
LABELED = "__labeled"
FIRST_US = "__first"  # an entity's first event time, µs (`first_events`)
_MICROS = 1_000_000

SPARK_TYPES: dict[str, T.DataType] = {
    "string": T.StringType(),
    "int": T.IntegerType(),
    "long": T.LongType(),
    "float": T.FloatType(),
    "double": T.DoubleType(),
    "boolean": T.BooleanType(),
    "timestamp": T.TimestampType(),
}


class InvalidExpression(ValueError):
    """A feature's or label's expression Spark cannot analyse; the message names it."""


def schema_of(fields: Sequence[SourceField]) -> T.StructType:
    return T.StructType([T.StructField(f.name, SPARK_TYPES.get(f.type, T.StringType())) for f in fields])


def _micros(c: Column, dtype: T.DataType) -> Column:
    if isinstance(dtype, T.TimestampType | T.TimestampNTZType):
        return F.unix_micros(c.cast("timestamp"))
    if isinstance(dtype, T.DateType):
        return F.unix_micros(c.cast("timestamp"))
    if isinstance(dtype, T.NumericType):
        return c.cast("long") * 1000  # epoch milliseconds
    return F.unix_micros(F.to_timestamp(c))


def prepare_events(events: DataFrame, cfg: FeatureJobConfig) -> DataFrame:
    """The events with their event time in µs (`EV_US`); rows without entity or time dropped."""
    dtype = events.schema[cfg.timestamp_field].dataType
    return events.withColumn(EV_US, _micros(F.col(cfg.timestamp_field), dtype)).where(
        F.col(cfg.entity).isNotNull() & F.col(EV_US).isNotNull()
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.split("\n\n", 1)[0].strip()


def validate(spark: SparkSession, schema: T.StructType, cfg: FeatureJobConfig) -> None:
    """Analyse every filter, aggregation, SQL feature and label against the source's schema
    on no rows, before any data is read; the first that Spark rejects raises
    `InvalidExpression` with Spark's message, naming the feature or label."""
    empty = spark.createDataFrame([], schema)
    empty = empty.withColumn(EV_US, F.lit(0).cast("long"))
    for f in cfg.features:
        try:
            if f.sql is not None:
                rows = empty.where(F.expr(f.filter)) if f.filter else empty
                rows.agg(F.expr(f.sql).alias(f.name)).schema  # noqa: B018  (analysis happens here)
            else:
                cols, agg, finish = _framed(f, 0)
                empty.select("*", *cols).agg(finish(agg)).schema  # noqa: B018
        except PySparkException as e:
            raise InvalidExpression(f"feature {f.name!r}: {_first_line(e)}") from e
    for lab in cfg.labels:
        try:
            empty.agg(F.expr(lab.expression).alias(lab.name)).schema  # noqa: B018
        except PySparkException as e:
            raise InvalidExpression(f"label {lab.name!r}: {_first_line(e)}") from e


def first_events(events: DataFrame, cfg: FeatureJobConfig) -> DataFrame:
    """Each entity's first event time (`ENTITY`, `FIRST_US`): where its grid spine starts."""
    return events.groupBy(F.col(cfg.entity).alias(ENTITY)).agg(F.min(EV_US).alias(FIRST_US))


def build_spine(
    spark: SparkSession,
    events: DataFrame,
    cfg: FeatureJobConfig,
    as_of_us: int,
    first: DataFrame | None = None,
) -> DataFrame:
    """Distinct observation points (`ENTITY`, `T_US`). A grid starts at each entity's first
    event, from ``first`` (`first_events`) where ``events`` are not all of them."""
    spine = cfg.spine
    if spine.kind == "path":
        assert spine.path is not None
        rows = spark.read.parquet(spine.path)
        dtype = rows.schema[cfg.timestamp_field].dataType
        return (
            rows.select(
                F.col(cfg.entity).alias(ENTITY), _micros(F.col(cfg.timestamp_field), dtype).alias(T_US)
            )
            .where(F.col(ENTITY).isNotNull() & F.col(T_US).isNotNull())
            .distinct()
        )
    if spine.kind == "every":
        assert spine.every_s is not None
        step = int(spine.every_s * _MICROS)
        first = first_events(events, cfg) if first is None else first
        start = F.ceil(F.col(FIRST_US) / F.lit(step)).cast("long") * step
        stop = F.lit((as_of_us // step) * step).cast("long")
        grid = F.when(start <= stop, F.sequence(start, stop, F.lit(step).cast("long"))).otherwise(
            F.array().cast("array<long>")
        )
        return first.select(ENTITY, F.explode(grid).alias(T_US))
    return events.select(F.col(cfg.entity).alias(ENTITY), F.col(EV_US).alias(T_US)).distinct()


def _join_group(
    spine: DataFrame,
    events: DataFrame,
    entity: str,
    lower: Column | None,
    upper: Column,
    aggs: Sequence[Column],
    names: Sequence[str],
    tag: str,
) -> DataFrame:
    """The spine with the values of ``aggs`` over each point's events between the bounds."""
    cond = (events[entity] == spine[ENTITY]) & upper
    if lower is not None:
        cond = cond & lower
    n = f"__n{tag}"
    joined = spine.join(events, cond, "inner").groupBy(ENTITY, T_US).agg(F.count(F.lit(1)).alias(n), *aggs)
    empty = events.where(F.lit(False)).agg(*aggs)
    empty = empty.select([F.col(c).alias(f"__empty{tag}_{c}") for c in names])
    out = spine.join(joined, [ENTITY, T_US], "left").crossJoin(F.broadcast(empty))
    values = [
        F.when(F.col(n).isNull(), F.col(f"__empty{tag}_{c}")).otherwise(F.col(c)).alias(c) for c in names
    ]
    return out.select(ENTITY, T_US, *values)


def _framed(f: FeatureConfig, i: int) -> tuple[list[Column], Column, Callable[[Column], Column]]:
    """Feature ``f`` (number ``i``, no SQL) as `_window_features` computes it: the columns it
    adds to each event (its field where its filter holds; the points have none of them), its
    aggregate over those columns, and what turns the aggregate's value (over a frame) into the
    feature's value with its explicit type."""
    cond = F.expr(f.filter) if f.filter else F.lit(True)
    v, k = f"__v{i}", f"__k{i}"
    agg = f.aggregation

    def same(c: Column) -> Column:
        return c

    def double(c: Column) -> Column:
        return c.cast("double")

    if agg == "count":
        return [F.when(cond, F.lit(1)).alias(v)], F.count(F.col(v)), same
    if f.field is None:
        raise InvalidExpression(f"feature {f.name!r}: aggregation {agg} needs a field")
    x = F.col(f.field)
    cols = [F.when(cond, x).alias(v)]
    if agg == "sum":
        return cols, F.sum(F.col(v)), double
    if agg == "mean":
        return cols, F.avg(F.col(v)), double
    if agg == "min":
        return cols, F.min(F.col(v)), same
    if agg == "max":
        return cols, F.max(F.col(v)), same
    if agg == "stddev":
        return cols, F.stddev_samp(F.col(v)), double
    if agg == "last":
        # The newest non-null value; equal timestamps are ordered by the value itself, so the
        # choice does not depend on how the rows were partitioned.
        key = F.when(cond & x.isNotNull(), F.struct(F.col(EV_US), x))
        return [*cols, key.alias(k)], F.max_by(F.col(v), F.col(k)), same
    if agg == "distinctCount":
        # A frame takes no DISTINCT aggregate: the size of the set of values.
        return cols, F.collect_set(F.col(v)), lambda c: F.size(c).cast("long")
    raise InvalidExpression(f"feature {f.name!r}: unknown aggregation {agg!r}")


def _window_features(events: DataFrame, spine: DataFrame, cfg: FeatureJobConfig) -> DataFrame:
    """The spine with every feature by aggregation, from window frames over each entity's
    events and points in time order (a point's frame holds the events with
    ``t - window < ts <= t``: the frame takes the point's peers, the events at ``t``)."""
    from pyspark.sql import Window

    feats = [f for f in cfg.features if f.sql is None]
    point = "__point"
    columns: list[Column] = []
    frames: list[Column] = []
    for i, f in enumerate(feats):
        cols, agg, finish = _framed(f, i)
        columns += cols
        order = Window.partitionBy(ENTITY).orderBy(T_US)
        if f.window_s is None:
            w = order.rangeBetween(Window.unboundedPreceding, Window.currentRow)
        else:
            w = order.rangeBetween(-(int(f.window_s * _MICROS) - 1), Window.currentRow)
        frames.append(finish(agg.over(w)).alias(f.name))
    ev = events.select(
        F.col(cfg.entity).alias(ENTITY), F.col(EV_US).alias(T_US), *columns, F.lit(False).alias(point)
    )
    points = spine.select(
        ENTITY,
        T_US,
        *[F.lit(None).cast(ev.schema[c].dataType).alias(c) for c in ev.columns[2:-1]],
        F.lit(True).alias(point),
    )
    both = ev.unionByName(points)
    return both.select(ENTITY, T_US, point, *frames).where(F.col(point)).drop(point)


def compute(
    spark: SparkSession, events: DataFrame, spine: DataFrame, cfg: FeatureJobConfig, as_of_us: int
) -> DataFrame:
    """One row per observation point: the entity, the observation time (as the source's
    timestamp column), every feature and label, and `LABELED` (every label's horizon has
    elapsed)."""
    spine = spine.select(ENTITY, T_US).distinct()
    out = spine
    if any(f.sql is None for f in cfg.features):
        out = _window_features(events, spine, cfg)  # one row per point, as the spine has
    groups: dict[tuple[Any, ...], list[FeatureConfig]] = {}
    for f in cfg.features:
        if f.sql is not None:
            groups.setdefault((f.window_s, f.filter), []).append(f)
    tag = 0
    for (window_s, flt), feats in groups.items():
        ev = events.where(F.expr(flt)) if flt else events
        s = spine.alias("s")
        upper = F.col(EV_US) <= s[T_US]
        lower = F.col(EV_US) > s[T_US] - F.lit(int(window_s * _MICROS)) if window_s is not None else None
        part = _join_group(
            s,
            ev,
            cfg.entity,
            lower,
            upper,
            [F.expr(f.sql).alias(f.name) for f in feats if f.sql is not None],
            [f.name for f in feats],
            str(tag),
        )
        out = out.join(part, [ENTITY, T_US], "left")
        tag += 1
    labeled: Column = F.lit(True)
    for horizon_s, labs in _by_horizon(cfg.labels).items():
        h = int(horizon_s * _MICROS)
        s = spine.alias("s")
        part = _join_group(
            s,
            events,
            cfg.entity,
            F.col(EV_US) > s[T_US],
            F.col(EV_US) <= s[T_US] + F.lit(h),
            [F.expr(lab.expression).alias(lab.name) for lab in labs],
            [lab.name for lab in labs],
            str(tag),
        )
        elapsed = F.col(T_US) + F.lit(h) <= F.lit(as_of_us)
        part = part.select(ENTITY, T_US, *[F.when(elapsed, F.col(lab.name)).alias(lab.name) for lab in labs])
        out = out.join(part, [ENTITY, T_US], "left")
        labeled = labeled & elapsed
        tag += 1
    names = [f.name for f in cfg.features] + [lab.name for lab in cfg.labels]
    types = {f.name: f.dataType for f in out.schema.fields}
    # Decimals (what Spark SQL makes of a literal like 1.0) are written as doubles: a training
    # set and an online store of plain numbers.
    values = [
        F.col(n).cast("double").alias(n) if isinstance(types[n], T.DecimalType) else F.col(n) for n in names
    ]
    return out.select(
        F.col(ENTITY).alias(cfg.entity),
        F.timestamp_micros(F.col(T_US)).alias(cfg.timestamp_field),
        *values,
        labeled.alias(LABELED),
        T_US,
    )


def _by_horizon(labels: Sequence[LabelConfig]) -> dict[float, list[LabelConfig]]:
    out: dict[float, list[LabelConfig]] = {}
    for lab in labels:
        out.setdefault(lab.horizon_s, []).append(lab)
    return out


def as_of(events: DataFrame) -> int | None:
    """The newest event time in µs (None: no events)."""
    row = events.agg(F.max(EV_US)).collect()[0]
    return None if row[0] is None else int(row[0])
