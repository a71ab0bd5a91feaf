"""`gyre bench operator` end to end at a tiny size, against the test cluster: it runs the three
operators in an order reversed every other round, measures every object, and prints one JSON
object whose figures are consistent with each other. No timed asserts: the goals are
reported, not checked here."""

from __future__ import annotations

import json

import pytest
from gyre.bench import operator as bench

from tests.controlplane.cluster import Cluster

pytestmark = pytest.mark.controlplane

N, WARMUP = 3, 1


def test_bench_operator_prints_one_consistent_json_object(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--kubeconfig", str(cluster.kubeconfig), "-n", str(N), "--warmup", str(WARMUP), "--rounds", "2"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    result = json.loads(out[0])

    assert (result["resources"], result["warmup"], result["rounds"]) == (N, WARMUP, 2)
    assert result["order"] == ["floor", "apply-floor", "gyre", "gyre", "apply-floor", "floor"]
    for which in ("gyre", "floor", "apply_floor"):
        figures = result[which]
        assert [r["round"] for r in figures["rounds"]] == [0, 1]
        assert 0 < figures["p50_ms"] <= figures["p90_ms"] <= figures["p99_ms"] <= figures["max_ms"]
        assert figures["reconciles_per_s"] > 0
        for r in figures["rounds"]:
            assert r["reconciles_per_s"] > 0
            assert 0 < r["p50_ms"] <= r["p99_ms"] <= figures["max_ms"]
            # Every measured object was created (POST) in its window, and the API server
            # spent CPU on it.
            assert r["api_requests_per_object"] >= 1, r
            assert r["apiserver_cpu_ms_per_object"] > 0, r
        assert figures["requests_per_object"].get("POST trainingjobs", 0) >= 1, figures
    # The apply floor applied the six objects Gyre renders for every object; the floor none.
    apply_floor = result["apply_floor"]["requests_per_object"]
    assert apply_floor.get("APPLY jobs") == pytest.approx(2, abs=0.01), apply_floor
    assert "APPLY jobs" not in result["floor"]["requests_per_object"]
    # Gyre's runtime applied each object's six once, and later passes (pods starting, Jobs
    # running) cost it nothing: they read the watch cache.
    own = result["gyre"]["operator_requests_per_object"]
    assert own == {"APPLY configmaps": 2.0, "APPLY services": 2.0, "APPLY jobs": 2.0}, own
    # Gyre's reconciles really built and applied workloads: a launcher and a worker Job for
    # every object of the phase, warm-up included.
    for r in result["gyre"]["rounds"]:
        assert r["workloads"] == 2 * (N + WARMUP), r
        assert r["reconcile_mean_ms"] > 0
    assert result["ratio"] == pytest.approx(
        result["gyre"]["reconciles_per_s"] / result["floor"]["reconciles_per_s"], rel=0.02
    )
    assert result["p50_over_floor"] == pytest.approx(
        result["gyre"]["p50_ms"] / result["floor"]["p50_ms"], rel=0.02
    )
    assert result["ratio_vs_apply_floor"] == pytest.approx(
        result["gyre"]["reconciles_per_s"] / result["apply_floor"]["reconciles_per_s"], rel=0.02
    )
    goals = result["goals"]
    assert set(goals) == {"ratio", "p99_ms", "p50_over_floor"}
    assert goals["ratio"]["value"] == pytest.approx(result["ratio"], abs=1e-3)
    assert goals["p99_ms"]["value"] == pytest.approx(result["gyre"]["p99_ms"], abs=1e-3)
    for name, g in goals.items():
        op, target = g["goal"].split()
        met = g["value"] >= float(target) if op == ">=" else g["value"] <= float(target)
        assert g["met"] is met, (name, g)
