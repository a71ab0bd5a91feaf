"""The feature job: one run of a FeatureJob, as the Spark driver program.

Waits (phase ``waiting``) until the source holds data, validates every expression on no rows,
reads the source, computes the point-in-time rows (`pit`), writes them as a new offline
version (`offline`), materializes each entity's newest row into the online store (`online`)
and prunes old versions. Its progress and result are served on ``/status``
(`FeatureRunStatus`); after the run it keeps serving until the final status was read once.

Exit status: 0 when the run succeeded or can never succeed as written (an invalid
expression: running it again would not help, the status says why); 1 for a failure worth a
retry (the online store unreachable, a Spark error).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from gyre.pipelines._common.httpserver import MetricsServer
from gyre.pipelines._common.status import STATUS_PATH
from gyre.pipelines.features import incremental, offline, online, status
from gyre.pipelines.features.config import FeatureJobConfig, start_process
from gyre.pipelines.features.status import FeatureRunStatus, OnlineResult

log = logging.getLogger("gyre.features")
PORT_ENV = "GYRE_PORT_STATUS"
FIRST_STATE = "_gyre_first"  # in a version with a grid spine: each entity's first event time


class RunState:
    """The run's `FeatureRunStatus`, updated by the run and served by the HTTP thread."""

    def __init__(self, cfg: FeatureJobConfig) -> None:
        self._lock = threading.Condition()
        self._doc = FeatureRunStatus(
            generation=cfg.generation, run=cfg.run, started_at=offline.rfc3339(datetime.now(UTC))
        )
        self._final_read = False

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._doc = self._doc.model_copy(update=fields)
            self._final_read = False

    @property
    def doc(self) -> FeatureRunStatus:
        with self._lock:
            return self._doc

    def serve(self) -> tuple[int, Any]:
        with self._lock:
            if self._doc.phase in ("succeeded", "failed"):
                self._final_read = True
                self._lock.notify_all()
            return 200, self._doc.to_body()

    def wait_read(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        with self._lock:
            while not self._final_read:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True


def wait_for_data(cfg: FeatureJobConfig, state: RunState) -> offline.SourceSnapshot:
    while True:
        snap = offline.snapshot(cfg.source.uri, cfg.source.kind)
        if snap.has_data:
            return snap
        state.update(
            phase="waiting",
            reason=status.SOURCE_EMPTY,
            message=f"the source {cfg.source.uri} holds no data yet",
        )
        time.sleep(cfg.wait_poll_s)


def run(cfg: FeatureJobConfig, state: RunState) -> int:
    from gyre.pipelines.features import checks, drift, pit  # Spark is imported by the driver only
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F  # noqa: N812

    started = time.monotonic()
    snap = wait_for_data(cfg, state)
    redis_url = cfg.redis_url()
    client = online.connect(redis_url) if redis_url else None
    if client is not None:
        try:
            _ping(client)
        except Exception as e:
            address = online.redis_address(redis_url or "")
            state.update(
                phase="failed",
                reason=status.REDIS_UNREACHABLE,
                message=f"the online store at {address} did not answer: {e}",
            )
            return 1
    state.update(phase="running", step="starting Spark", reason="", message="")
    # Observation days are UTC days, as the lake's are (an incremental run relies on it).
    spark = (
        SparkSession.builder.appName(f"gyre-features-{cfg.name}")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    try:
        # A Stream's schema is known without reading anything; plain Parquet has its own.
        if cfg.source.fields:
            schema = pit.schema_of(cfg.source.fields)
        else:
            schema = spark.read.parquet(cfg.source.uri).schema
        state.update(step="validating")
        try:
            pit.validate(spark, schema, cfg)
        except pit.InvalidExpression as e:
            state.update(phase="failed", reason=status.INVALID_EXPRESSION, message=str(e))
            log.error("FeatureJob %s: %s", cfg.name, e)
            return 0
        plan = plan_run(cfg, snap)
        state.update(
            step="reading",
            partitions_read=list(plan.read),
            partitions_changed=list(plan.changed),
            incremental=plan.incremental,
            recomputed_from=plan.recompute_from,
            full_reason=plan.full_reason,
            source_version=snap.version,
        )
        events = pit.prepare_events(read_source(spark, cfg.source.uri, plan), cfg).cache()
        newest = pit.as_of(events)
        as_of_us = max((t for t in (newest, plan.as_of_us) if t is not None), default=None)
        if as_of_us is None:
            state.update(
                phase="waiting", reason=status.SOURCE_EMPTY, message="the source has no valid events"
            )
            return 1
        state.update(step="computing")
        first = pit.first_events(events, cfg) if cfg.spine.kind == "every" else None
        if first is not None and plan.base is not None:
            earlier = spark.read.parquet(str(offline.local_path(plan.base.uri) / FIRST_STATE))
            first = (
                first.unionByName(earlier).groupBy(pit.ENTITY).agg(F.min(pit.FIRST_US).alias(pit.FIRST_US))
            )
        spine = pit.build_spine(spark, events, cfg, as_of_us, first)
        if plan.recompute_from_us is not None:
            spine = spine.where(F.col(pit.T_US) >= F.lit(plan.recompute_from_us))
        rows = pit.compute(spark, events, spine, cfg, as_of_us).cache()
        if cfg.expectations:
            state.update(step="validating rows")
            violations = checks.count_violations(rows, cfg.expectations)
            state.update(violations=violations)
            bad = {c: n for c, n in violations.items() if n}
            if bad and cfg.fail_on_violation:
                detail = ", ".join(f"{c}: {n}" for c, n in sorted(bad.items()))
                state.update(
                    phase="failed",
                    reason=status.VALIDATION_FAILED,
                    message=f"{sum(bad.values())} expectation violations ({detail}); no version written",
                )
                return 0
        # Every row of the version: the recomputed ones and, incrementally, the kept days'.
        old_rows = kept_rows(spark, cfg, plan)
        every = rows if old_rows is None else rows.unionByName(old_rows).cache()
        version = offline.new_version_id()
        tmp = offline.begin_version(cfg.offline_uri, version)
        training = rows.where(F.col(pit.LABELED)).drop(pit.LABELED, pit.T_US)
        training = training.withColumn(
            offline.PARTITION_COLUMN, F.date_format(F.col(cfg.timestamp_field), "yyyy-MM-dd")
        )
        state.update(step="writing")
        training.write.partitionBy(offline.PARTITION_COLUMN).parquet(str(tmp))
        kept_days = offline.link_days(plan.base.uri, tmp, plan.recompute_from) if plan.base else []
        if first is not None:
            first.write.parquet(str(tmp / FIRST_STATE))
        counts = every.agg(
            F.count(F.lit(1)).alias("all"),
            F.sum(F.col(pit.LABELED).cast("long")).alias("labeled"),
            F.count_distinct(F.col(cfg.entity)).alias("entities"),
        ).collect()[0]
        n_rows = int(counts["labeled"] or 0)
        schema_doc = {f.name: f.dataType.simpleString() for f in training.schema.fields}
        extra = {
            incremental.PIT_KEY: incremental.pit_key(cfg),
            incremental.INPUTS: dict(snap.fingerprints),
            incremental.AS_OF_US: as_of_us,
            "base_version": plan.base.version if plan.base else None,
            "kept_days": kept_days,
        }
        written = offline.commit_version(
            cfg.offline_uri, version, tmp, n_rows, snap.version, schema_doc, extra
        )
        if cfg.drift is not None:
            state.update(step="scoring drift")
            scores, where = drift.scores(
                spark,
                every.where(F.col(pit.LABELED)),
                [f.name for f in cfg.features],
                cfg.drift,
                cfg.offline_uri,
            )
            state.update(drift=scores, drift_baseline=where)
        state.update(
            rows=n_rows,
            unlabeled_rows=int(counts["all"]) - n_rows,
            entities=int(counts["entities"]),
            version=written,
        )
        if client is not None and cfg.online is not None:
            state.update(step="materializing")
            state.update(online=materialize(cfg, every, client, redis_url or ""))
        # Pruned last: an incremental run reads the version it builds on until here.
        state.update(versions=offline.prune_versions(cfg.offline_uri, cfg.keep_versions))
        state.update(
            phase="succeeded",
            step="",
            finished_at=offline.rfc3339(datetime.now(UTC)),
            duration_s=round(time.monotonic() - started, 3),
            message=f"version {version}: {n_rows} rows of {int(counts['entities'])} entities",
        )
        log.info("FeatureJob %s wrote version %s (%d rows)", cfg.name, version, n_rows)
        return 0
    finally:
        spark.stop()


def plan_run(cfg: FeatureJobConfig, snap: offline.SourceSnapshot) -> incremental.Plan:
    """What this run reads and recomputes, after the newest committed version."""
    versions = offline.list_versions(cfg.offline_uri)
    base = versions[0] if versions else None
    manifest = offline.read_manifest(base) if base is not None else None
    return incremental.plan(cfg, snap.partitions, snap.fingerprints, base, manifest)


def read_source(spark: Any, uri: str, plan: incremental.Plan) -> Any:
    """The source, or incrementally only the partitions the plan reads."""
    if not plan.incremental:
        return spark.read.parquet(uri)
    root = uri.rstrip("/")
    return spark.read.option("basePath", root).parquet(*[f"{root}/{p}" for p in plan.read])


def kept_rows(spark: Any, cfg: FeatureJobConfig, plan: incremental.Plan) -> Any:
    """The base version's rows of the days an incremental run keeps, shaped as `pit.compute`'s
    (all of them are training rows: their label horizon had elapsed); None: no such days."""
    from gyre.pipelines.features import pit
    from pyspark.sql import functions as F  # noqa: N812

    if plan.base is None:
        return None
    days = [d for day, d in offline.day_dirs(plan.base.uri).items() if day < plan.recompute_from]
    if not days:
        return None
    names = [f.name for f in cfg.features] + [lab.name for lab in cfg.labels]
    old = spark.read.option("basePath", str(offline.local_path(plan.base.uri))).parquet(*map(str, days))
    ts = F.col(cfg.timestamp_field)
    return old.select(
        F.col(cfg.entity), ts, *names, F.lit(True).alias(pit.LABELED), F.unix_micros(ts).alias(pit.T_US)
    )


def _ping(client: Any, attempts: int = 10) -> None:
    """The online store answers (a Redis started beside this run may still be starting)."""
    for i in range(attempts):
        try:
            client.ping()
            return
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(1.0)


def materialize(cfg: FeatureJobConfig, rows: Any, client: Any, redis_url: str) -> OnlineResult:
    """Each entity's newest row (features only) into Redis."""
    from gyre.pipelines.features import pit
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    assert cfg.online is not None
    names = [f.name for f in cfg.features]
    newest = Window.partitionBy(cfg.entity).orderBy(F.col(pit.T_US).desc())
    latest = rows.withColumn("__rank", F.row_number().over(newest)).where(F.col("__rank") == 1)
    latest = latest.select(cfg.entity, pit.T_US, *names)
    bounds: list[int] = []

    def rows_iter() -> Any:
        for r in latest.toLocalIterator():
            ts_ms = int(r[pit.T_US]) // 1000
            bounds.append(ts_ms)
            yield online.OnlineRow(str(r[cfg.entity]), ts_ms, {n: _plain(r[n]) for n in names})

    keys = online.materialize(
        client, cfg.online.key_prefix, rows_iter(), cfg.online.ttl_s, cfg.online.batch_size
    )

    def iso(ms: int | None) -> str | None:
        return None if ms is None else offline.rfc3339(datetime.fromtimestamp(ms / 1000, UTC))

    return OnlineResult(
        address=online.redis_address(redis_url),
        key_prefix=cfg.online.key_prefix,
        keys=keys,
        newest_feature_time=iso(max(bounds) if bounds else None),
        oldest_feature_time=iso(min(bounds) if bounds else None),
        materialized_at=offline.rfc3339(datetime.now(UTC)),
        ttl_s=cfg.online.ttl_s,
    )


def _plain(value: Any) -> Any:
    """A value as JSON holds it (Spark hands out decimals, dates and timestamps)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def main() -> int:
    cfg = start_process(log)
    if cfg is None:
        return 2
    state = RunState(cfg)
    server = MetricsServer("0.0.0.0", int(os.environ.get(PORT_ENV, "0")), {STATUS_PATH: state.serve})
    server.start()
    try:
        try:
            code = run(cfg, state)
        except Exception as e:
            log.exception("FeatureJob %s failed", cfg.name)
            state.update(phase="failed", reason=status.RUN_FAILED, message=f"{type(e).__name__}: {e}")
            code = 1
        if cfg.status_linger_s > 0 and not state.wait_read(cfg.status_linger_s):
            log.info("final status not read within %gs; exiting", cfg.status_linger_s)
        return code
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
