"""Drift of a run's features against a baseline (``validation.driftBaseline``).

The baseline is a sample of rows: of the Parquet files ``baseline_uri`` names, or else of the
first successful run, kept under ``<offline uri>/baseline`` (versions come and go, the
baseline stays; the first run scores against itself, 0 for every feature). Each run samples at
most ``sample_rows`` of its training rows and scores every feature
(`gyre.pipelines._common.drift`: PSI or KS for numbers, PSI over the values for the rest).
A drifted feature is flagged, not refused: the run is published either way.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gyre.pipelines._common.drift import categorical_score, numeric_score
from gyre.pipelines.features import offline
from gyre.pipelines.features.config import DriftConfig
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T  # noqa: N812

BASELINE_DIR = "baseline"
NUMERIC = (T.NumericType, T.BooleanType)


def baseline_uri(offline_uri: str) -> str:
    return f"{offline_uri.rstrip('/')}/{BASELINE_DIR}"


def _sample(df: DataFrame, rows: int) -> DataFrame:
    n = df.count()
    return (
        df
        if n <= rows
        else df.sample(withReplacement=False, fraction=min(1.0, 1.2 * rows / n), seed=7).limit(rows)
    )


def _exists(uri: str) -> bool:
    return (Path(offline.local_path(uri)) / "_SUCCESS").exists()


def scores(
    spark: SparkSession, training: DataFrame, features: list[str], cfg: DriftConfig, offline_uri: str
) -> tuple[dict[str, float], str]:
    """Per feature drift score of ``training`` against the baseline, and where the baseline is
    (writing it first when this is the first run to have one)."""
    current = _sample(training.select(*features), cfg.sample_rows)
    where = cfg.baseline_uri or baseline_uri(offline_uri)
    if cfg.baseline_uri is None and not _exists(where):
        current.write.mode("overwrite").parquet(where)
    reference = _sample(spark.read.parquet(where).select(*features), cfg.sample_rows)
    ref_rows, cur_rows = reference.collect(), current.collect()
    kinds = {f.name: f.dataType for f in training.schema.fields}
    out: dict[str, float] = {}
    for name in features:
        ref = [r[name] for r in ref_rows if r[name] is not None]
        cur = [r[name] for r in cur_rows if r[name] is not None]
        if not ref or not cur:
            continue
        if isinstance(kinds[name], NUMERIC):
            score = numeric_score(np.asarray(ref, np.float64), np.asarray(cur, np.float64), cfg.metric)
        else:
            score = categorical_score(ref, cur)
        out[name] = round(score, 4) if math.isfinite(score) else score
    return out, where
