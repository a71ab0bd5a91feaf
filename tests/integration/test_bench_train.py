"""`gyre bench train` end to end at a tiny size: every set-up runs, ranks agree on their step
counts, and it prints one JSON object of the promised shape. The figures are checked to be
figures (positive, consistent with each other), never against the goals: those are timing
on a shared machine, and the bench only reports them."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("horovod.torch")

from gyre.bench import train

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TINY = ["--features", "8", "--hidden", "16", "--batch", "8", "--seconds", "0.3", "--warmup", "2",
        "--rounds", "2", "--allreduce-max-bytes", "16384", "--sweep-rounds", "1",
        "--sweep-scale", "0.01", "--timeout", "180"]  # fmt: skip


def test_bench_train_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main(TINY) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert result["benchmark"] == "train"
    assert result["optimizer"] == "sgd"

    # equal work: every set-up ran the calibrated step count, on every rank
    assert result["steps_per_run"] >= 5
    assert result["ranks_agreed_on_steps"] is True
    rates = result["samples_per_s"]
    assert set(rates) == {"plain1", "hvd2", "ddp2"}
    assert all(v > 0 for v in rates.values()), rates
    assert len(result["samples_per_s_by_round"]) == 2
    # the best round counts
    for key, best in rates.items():
        assert best == max(r[key] for r in result["samples_per_s_by_round"])
    assert result["hvd2_over_ddp2"] == pytest.approx(rates["hvd2"] / rates["ddp2"], rel=1e-3)
    assert result["scaling_efficiency"] == pytest.approx(rates["hvd2"] / (2 * rates["plain1"]), rel=1e-3)

    # the sweep: 1 KiB, 4 KiB and the maximum, each with Horovod, gloo and a memory copy
    sweep = result["allreduce"]
    assert [row["bytes"] for row in sweep] == [1024, 4096, 16384]
    for row in sweep:
        for key in ("busbw_gbps", "memcpy_gbps", "gloo_busbw_gbps", "seconds", "gloo_seconds"):
            assert row[key] > 0, row
    assert result["latency_us_1kb"] == pytest.approx(sweep[0]["seconds"] * 1e6, rel=1e-3)
    assert result["gloo_latency_us_1kb"] == pytest.approx(sweep[0]["gloo_seconds"] * 1e6, rel=1e-3)
    latency = result["latency_1kb"]
    assert latency["first_call_us"] > 0
    assert latency["unique_names_us"] > 0
    assert set(latency["by_cycle_time_ms"]) == set(train.CYCLE_TIMES_MS)
    assert all(v > 0 for v in latency["by_cycle_time_ms"].values())

    # goals are reported with their verdict, not asserted
    goal = result["goals"]["hvd2_over_ddp2"]
    assert goal["value"] == result["hvd2_over_ddp2"]
    assert goal["goal"] == train.GOAL_HVD2_OVER_DDP2
    assert goal["met"] is (goal["value"] >= goal["goal"])
    assert "skipped" in result["cuda"] or result["cuda"]["gpus"] >= 2


def test_ranks_that_disagree_on_the_step_count_fail_the_run() -> None:
    """Regression: a time-driven step count lets ranks diverge (one more step on one rank
    hangs its allreduce); the bench fixes the count and checks every rank ran it."""
    setup = train.Setup("hvd2", "train", "horovod", 2)
    with pytest.raises(AssertionError, match="ranks ran"):
        train._agreed_steps(setup, [{"steps": 10}, {"steps": 11}], 10)
    assert train._agreed_steps(setup, [{"steps": 10}, {"steps": 10}], 10) == 10
