"""`gyre bench serve` end to end at a tiny size: it runs, measures what it says it measures,
and prints one JSON object (no timed asserts: figures are only checked to be figures)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("kserve")
pytest.importorskip("torch")

from gyre.bench import serve

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_bench_serve_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--seconds",
        "1",
        "--offered-per-s",
        "20",
        "--warmup-s",
        "0.5",
        "--clients",
        "8",
        "--deadline-ms",
        "2000",
    ]
    assert serve.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    for side in ("bare", "gyre"):
        assert result[side]["requests"] == 20, result[side]
        assert result[side]["codes"] == {"200": 20}, result[side]
        assert 0 < result[side]["p50_ms"] <= result[side]["p99_ms"]
    assert result["p99_ratio"] == pytest.approx(result["gyre"]["p99_ms"] / result["bare"]["p99_ms"], abs=1e-3)
    tp = result["throughput"]
    assert tp["batching_on_per_s"] > 0
    assert tp["batching_off_per_s"] > 0
    assert result["batching_gain"] == pytest.approx(
        tp["batching_on_per_s"] / tp["batching_off_per_s"], abs=0.01
    )
    if shutil.which("redis-server"):
        assert result["features"]["codes"] == {"200": 20}, result["features"]
        assert result["features"]["deadline_ms"] == 2000
    assert set(result["goals"]) == {
        "p99_ratio<=1.3",
        "batching_gain>=3",
        "features_p99<=deadline",
        "features_no_fallbacks",
    }
