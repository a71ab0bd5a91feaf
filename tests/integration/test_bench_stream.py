"""`gyre bench stream` end to end at a tiny size: it runs, measures what it says it measures,
and prints one JSON object (no timed asserts: figures are only checked to be figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gyre.bench import stream

pytestmark = pytest.mark.integration


def test_bench_stream_prints_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--events", "4000", "--warmup-events", "1000", "--batch", "500",
            "--latency-seconds", "1", "--latency-warmup-s", "0.5", "--workdir", str(tmp_path)]  # fmt: skip
    assert stream.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert result["events"] == 4000
    assert result["warmup_events"] == 1000
    assert result["events_per_s"] > 0
    assert result["raw_events_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["events_per_s"] / result["raw_events_per_s"], abs=1e-3)
    # 1 s at 5000 events/s in requests of 50 events: 100 measured requests, after the warm-up.
    assert result["latency_requests"] == 100
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    for name in ("collector", "sink", "broker", "client", "raw_broker", "raw_client"):
        assert result[f"{name}_cpu_us_per_event"] > 0
    # Every timed and warm-up event is in the lake exactly once (latency-run events follow).
    import pyarrow.dataset as ds

    table = ds.dataset(str(tmp_path / "lake"), format="parquet", partitioning="hive").to_table()
    ids = table["event_id"].to_pylist()
    assert len(ids) == len(set(ids))
    assert set(range(5000)) <= set(ids)
