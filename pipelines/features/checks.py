"""Expectations on a run's rows: counted per column in one pass before a version is published."""

from __future__ import annotations

from collections.abc import Sequence

from gyre.pipelines.features.config import ExpectationConfig
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F  # noqa: N812


def violated(e: ExpectationConfig) -> Column:
    """True for a row that breaks the expectation (a null breaks only not_null)."""
    c = F.col(e.column)
    bad: Column = F.lit(False)
    if e.not_null:
        bad = bad | c.isNull()
    if e.min is not None:
        bad = bad | F.coalesce(c.cast("double") < F.lit(e.min), F.lit(False))
    if e.max is not None:
        bad = bad | F.coalesce(c.cast("double") > F.lit(e.max), F.lit(False))
    if e.allowed_values is not None:
        allowed = c.cast("string").isin(list(e.allowed_values))
        bad = bad | F.coalesce(~allowed, F.lit(False))
    return bad


def unknown_columns(expectations: Sequence[ExpectationConfig], columns: Sequence[str]) -> list[str]:
    return sorted({e.column for e in expectations} - set(columns))


def count_violations(rows: DataFrame, expectations: Sequence[ExpectationConfig]) -> dict[str, int]:
    """Violations per column (each row counts once per column, whatever rules it breaks)."""
    if not expectations:
        return {}
    by_column: dict[str, Column] = {}
    for e in expectations:
        by_column[e.column] = by_column[e.column] | violated(e) if e.column in by_column else violated(e)
    row = rows.agg(*[F.sum(bad.cast("long")).alias(col) for col, bad in by_column.items()]).collect()[0]
    return {col: int(row[col] or 0) for col in by_column}
