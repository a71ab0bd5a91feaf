"""`gyre bench features` end to end at a tiny size: Spark (the job's own aggregation) and DuckDB
agree on every output column's sum, the online reads come from a real redis-server, and it
prints one JSON object (no timed asserts: figures are only checked to be figures)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("pyspark", reason="pyspark is in the features extra (make setup)")
pytest.importorskip("duckdb", reason="duckdb is in the features extra (make setup)")

from gyre.bench import features

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_bench_features_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--events", "20000", "--users", "300", "--days", "20", "--entities", "200", "--calls", "20"]
    argv += ["--clients", "4"]
    assert features.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    off = result["offline"]
    assert off["events"] == 20000
    assert off["spine_rows"] > 300  # a daily grid per user over the days they were seen
    assert off["spark_s"] > 0
    assert off["duckdb_s"] > 0
    assert off["ratio"] == pytest.approx(off["spark_s"] / off["duckdb_s"], rel=0.02)
    online = result["online"]
    if shutil.which("redis-server") is None:
        assert "skipped" in online
        return
    assert 0 < online["online_p50_ms"] <= online["online_p99_ms"]
    assert 0 < online["raw_p50_ms"] <= online["raw_p99_ms"]
    assert online["online_ratio"] == pytest.approx(online["online_p99_ms"] / online["raw_p99_ms"], abs=0.01)
    assert set(result["goals"]) == {"ratio_le_3", "online_p99_ms_le_2", "online_ratio_le_1_5"}


def test_spark_and_duckdb_disagreeing_fails_the_run() -> None:
    a = dict.fromkeys(features.CHECKSUM, 1.0)
    assert features.same(a, dict(a))
    assert not features.same(a, {**a, "views_7d": 2.0})
