"""The TrainingJob data plane with real ranks: launcher and workers as separate processes.

Every test starts ``python -m gyre.pipelines.trainer launcher|worker`` processes the way a
runtime does and asserts on what they leave behind: exit codes, the status file, checkpoints
and the model artifact.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("horovod.torch")

from gyre.pipelines.trainer import artifact  # noqa: E402
from gyre.pipelines.trainer.checkpoint import list_checkpoints  # noqa: E402
from gyre.pipelines.trainer.models import build_mlp  # noqa: E402

from tests.support import eventually  # noqa: E402

try:
    from .trainer_fixtures import (
        Gang,
        base_config,
        make_classification_data,
        make_regression_data,
        run_gang,
        write_config,
    )
except ImportError:  # tests/integration collected as a plain directory (no __init__.py)
    from trainer_fixtures import (  # type: ignore[no-redef]
        Gang,
        base_config,
        make_classification_data,
        make_regression_data,
        run_gang,
        write_config,
    )

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def clicks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_classification_data(tmp_path_factory.mktemp("clicks") / "lake", rows=2400)


def _state(model_dir: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(model_dir / "model.pt", weights_only=True)
    return state


def _metadata(model_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((model_dir / "metadata.json").read_text())
    return data


def _assert_ok(codes: list[int], gang: Gang) -> None:
    assert codes == [0] * len(codes), gang.logs()


# Plain SGD (no momentum, no weight decay): the update is lr x gradient, so any constant
# factor on the averaged gradient (a sum over ranks instead of the mean, a wrong divisor)
# shows in the weights. Adam would hide it: its update is invariant to the gradient's scale.
SGD_25_STEPS = {"epochs": 1, "max_steps": 25, "optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0}
WEIGHT_RTOL, WEIGHT_ATOL = 1e-4, 1e-5


def _train_b_or_2b(
    clicks: Path, tmp_path: Path, tag: str, workers: int, env: dict[str, str] | None = None, **cfg: Any
) -> dict[str, Any]:
    """The weights after 25 SGD steps of a global batch of 32: ``workers`` x 32/workers rows."""
    run = base_config(
        clicks,
        tmp_path / tag,
        workers=workers,
        output=str(tmp_path / f"{tag}-model"),
        data_shards=2,
        checkpoint={"dir": None},
        hyperparameters={**SGD_25_STEPS, "batch_size": 32 // workers},
        **cfg,
    )
    codes, gang = run_gang(tmp_path, run, tag, env=env or {})
    _assert_ok(codes, gang)
    assert _metadata(tmp_path / f"{tag}-model")["training"]["workers"] == workers
    return _state(tmp_path / f"{tag}-model")


def _mismatches(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The tensors of two state dicts that differ beyond float32 reduction-order noise."""
    assert a.keys() == b.keys()
    return [
        f"{name}: max |diff| {float((a[name] - b[name]).abs().max()):.3g}"
        for name in a
        if not torch.allclose(a[name], b[name], rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL)
    ]


def test_two_ranks_with_batch_b_equal_one_rank_with_batch_2b(clicks: Path, tmp_path: Path) -> None:
    """Synchronous allreduce: the averaged gradient of 2 x b rows is the gradient of 2b rows."""
    w2 = _train_b_or_2b(clicks, tmp_path, "two", workers=2)
    w1 = _train_b_or_2b(clicks, tmp_path, "one", workers=1)
    assert not _mismatches(w2, w1), _mismatches(w2, w1)
    # and training did move the weights (the comparison is not between two initial states)
    torch.manual_seed(7)  # the config's seed: the initial weights both runs started from
    initial = build_mlp(w1["net.0.weight"].shape[1], {"hidden": [16, 8]}).state_dict()
    assert not torch.allclose(initial["net.0.weight"], w1["net.0.weight"], atol=1e-3)
    meta = _metadata(tmp_path / "two-model")
    assert meta["training"]["steps"] == 25
    assert meta["hyperparameters"]["optimizer"] == "sgd"


SCALED_LOSS = {"kind": "module", "module": "trainer_scaled_loss:build_model", "params": {"hidden": [16, 8]}}


@pytest.fixture(scope="module")
def one_rank_scaled_loss(clicks: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 1 x 2b reference run through the scaled-loss model module (factor 1 on one worker)."""
    tmp = tmp_path_factory.mktemp("scaled-one")
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return _train_b_or_2b(clicks, tmp, "one", workers=1, env=env, model=SCALED_LOSS)


@pytest.mark.parametrize(
    ("scale", "detected"),
    [(1.0, False), (2.0, True), (1.05, True)],
    ids=["control-factor-1", "sum-instead-of-mean", "factor-1.05"],
)
def test_b_vs_2b_comparison_detects_a_wrong_gradient_scale(
    clicks: Path, tmp_path: Path, one_rank_scaled_loss: dict[str, Any], scale: float, detected: bool
) -> None:
    """The equivalence above is only a proof if a wrongly scaled gradient fails it.

    The 2-worker run multiplies its loss, hence (plain SGD) its gradient, by ``scale``;
    factor 2 is a sum over the ranks instead of the mean. The same comparison must tell
    it apart from the 1-worker run, and must not for factor 1 (the control: the module's
    model is the built-in MLP, so only the factor differs).
    """
    env = {
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "TEST_MULTI_WORKER_LOSS_SCALE": str(scale),
    }
    w2 = _train_b_or_2b(clicks, tmp_path, "two", workers=2, env=env, model=SCALED_LOSS)
    found = _mismatches(w2, one_rank_scaled_loss)
    assert bool(found) is detected, found


@pytest.fixture(scope="module")
def trained(clicks: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-rank Horovod classification run to completion: (artifact dir, status file)."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = base_config(clicks, tmp, hyperparameters={"epochs": 4})
    codes, gang = run_gang(tmp, cfg, "cls")
    _assert_ok(codes, gang)
    return tmp / "model", tmp / "ckpt" / "status.json"


def test_classification_beats_the_majority_baseline(trained: tuple[Path, Path]) -> None:
    model_dir, status_file = trained
    meta = _metadata(model_dir)
    m = meta["metrics"]
    assert m["val_accuracy"] > m["val_majority_accuracy"] + 0.05, m
    assert m["val_auc"] > 0.85, m
    assert meta["dataset"]["version"]
    assert meta["dataset"]["location"].startswith("file://")
    assert [f["name"] for f in meta["features"]] == ["x1", "x2", "color"]
    assert meta["code_version"].startswith("gyre ")
    status = json.loads(status_file.read_text())
    assert status["phase"] == "succeeded"
    assert status["percent"] == 100.0
    assert status["step"] == status["total_steps"] > 0
    assert status["samples_per_s"] > 0
    assert status["metrics"]["val_accuracy"] == m["val_accuracy"]


def test_artifact_round_trip_applies_preprocessing(trained: tuple[Path, Path], clicks: Path) -> None:
    model_dir, _ = trained
    model = artifact.load(f"file://{model_dir}")
    rows = ds.dataset(clicks, format="parquet", partitioning="hive").head(50).to_pylist()
    probs = model.predict(rows)
    assert len(probs) == 50
    assert all(0.0 <= p <= 1.0 for p in probs)

    # the same rows as columns, and as a pyarrow table, predict the same
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    assert model.predict(columns) == pytest.approx(probs)

    # predict == network(preprocessing.json applied by hand): serving uses the saved statistics
    pre = json.loads((model_dir / "preprocessing.json").read_text())
    feats = []
    for r in rows:
        vec = [(r[n["name"]] - n["mean"]) / n["std"] for n in pre["numeric"]]
        for c in pre["categorical"]:
            onehot = [0.0] * (len(c["vocabulary"]) + 1)
            v = r[c["name"]]
            onehot[c["vocabulary"].index(v) + 1 if v in c["vocabulary"] else 0] = 1.0
            vec += onehot
        feats.append(vec)
    with torch.no_grad():
        manual = torch.sigmoid(model.network(torch.tensor(feats, dtype=torch.float32)))
    assert probs == pytest.approx(manual.reshape(-1).tolist(), abs=1e-6)

    # raw values, not pre-scaled ones, are expected: an unseen category and a missing value work
    odd = dict(rows[0], color="purple", x2=None)
    assert 0.0 <= model.predict([odd])[0] <= 1.0
    # the label follows x1 upwards, through the scaling
    low, high = dict(rows[0], x1=-3.0), dict(rows[0], x1=3.0)
    p_low, p_high = model.predict([low, high])
    assert p_high > p_low


def test_killed_worker_gang_resumes_from_checkpoint(clicks: Path, tmp_path: Path) -> None:
    cfg = base_config(
        clicks,
        tmp_path,
        hyperparameters={"epochs": 40, "batch_size": 8, "max_steps": 1200},
        checkpoint={"every_steps": 50},
        heartbeat_timeout_s=5,
        log_every_steps=10,
    )
    config = write_config(tmp_path / "fault.json", cfg)
    status_file = tmp_path / "ckpt" / "status.json"

    def status() -> dict[str, Any]:
        data: dict[str, Any] = json.loads(status_file.read_text())
        return data

    gang = Gang(config, 2, tmp_path / "logs-fault", metrics=True).start()
    try:
        eventually(
            lambda: status().get("step", 0) >= 120, 120, what="120 steps", retry_on=(OSError, ValueError)
        )
        # every worker exports its throughput, step time and allreduce time to Prometheus
        for rank, port in enumerate(gang.metrics_ports):
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            for name in ("samples_per_second", "step_seconds", "allreduce_seconds"):
                line = f'gyre_trainer_{name}{{rank="{rank}",trainingjob="test-job"}} '
                assert line in text.decode(), text.decode()
        os.kill(gang.procs[1].pid, signal.SIGKILL)
        killed_at = status()["step"]
        codes = gang.wait(timeout=60)
    finally:
        gang.stop()
    # the launcher and the surviving worker fail instead of hanging in the allreduce
    assert codes == [1, 1, -signal.SIGKILL], gang.logs()
    assert "Gang failed: worker" in gang.logs()
    saved = [s for s, _ in list_checkpoints(tmp_path / "ckpt")]
    assert saved
    assert saved[-1] >= 100
    assert saved[-1] <= killed_at + 50
    assert status()["phase"] == "failed"

    restarted = Gang(config, 2, tmp_path / "logs-restart").start()
    try:
        codes = restarted.wait(timeout=180)
    finally:
        restarted.stop()
    _assert_ok(codes, restarted)
    final = status()
    assert final["phase"] == "succeeded"
    assert final["resumed_from_step"] == saved[-1]
    assert final["step"] == 1200
    meta = _metadata(tmp_path / "model")
    assert meta["training"]["resumed_from_step"] == saved[-1]
    worker0 = (restarted.logdir / "worker-0.log").read_text()
    assert f"resumed from checkpoint at step {saved[-1]}" in worker0
    model = artifact.load(str(tmp_path / "model"))
    assert len(model.predict([{"x1": 0.5, "x2": 1.0, "color": "red"}])) == 1


def test_ddp_backend_trains_regression(tmp_path: Path) -> None:
    data = make_regression_data(tmp_path / "reg", rows=800)
    cfg = base_config(
        data,
        tmp_path,
        backend="ddp",
        dataset={"path": str(data), "label": "y", "timestamp_column": None, "exclude": []},
        split={"kind": "random", "validation_fraction": 0.2, "seed": 3},
        model={"task": "regression", "params": {"hidden": [16]}},
        hyperparameters={"epochs": 6, "batch_size": 16, "lr": 0.02},
    )
    codes, gang = run_gang(tmp_path, cfg, "ddp")
    _assert_ok(codes, gang)
    meta = _metadata(tmp_path / "model")
    assert meta["training"]["backend"] == "ddp"
    assert meta["training"]["workers"] == 2
    y_std = float(np.std(ds.dataset(data).to_table().column("y").to_numpy()))
    assert meta["metrics"]["val_rmse"] < 0.3 * y_std, meta["metrics"]
    model = artifact.load(str(tmp_path / "model"))
    preds = model.predict([{"a": 1.0, "b": 5.0}, {"a": -1.0, "b": 5.0}])
    assert preds[0] - preds[1] == pytest.approx(6.0, abs=1.5)


def test_user_model_module_trains_and_reloads(clicks: Path, tmp_path: Path) -> None:
    cfg = base_config(
        clicks,
        tmp_path,
        workers=1,
        model={
            "kind": "module",
            "module": "trainer_fixtures:build_user_model",
            "params": {"width": 6},
        },
        split={"kind": "random", "validation_fraction": 0.2, "seed": 1},
        hyperparameters={"epochs": 2},
    )
    # The workers import the user module, which imports the shared test support.
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    codes, gang = run_gang(tmp_path, cfg, "user", env=env)
    _assert_ok(codes, gang)
    spec = json.loads((tmp_path / "model" / "model.json").read_text())
    assert spec["module"] == "trainer_fixtures:build_user_model"
    assert _metadata(tmp_path / "model")["metrics"]["val_auc"] > 0.8


def test_gang_timeout_fails_clearly(clicks: Path, tmp_path: Path) -> None:
    cfg = base_config(clicks, tmp_path, gang_timeout_s=8)
    start = time.monotonic()
    codes, gang = run_gang(tmp_path, cfg, "timeout", timeout=60, start_workers=1)
    assert codes == [1, 1], gang.logs()
    assert time.monotonic() - start < 40
    logs = gang.logs()
    # worker 0 normally joins in time; on a very busy machine it may not have started yet
    expected = r"gang timeout: [01] of 2 workers joined within 8s; missing worker\(s\) \[(0, )?1\]"
    assert re.search(expected, logs), logs
    status = json.loads((tmp_path / "ckpt" / "status.json").read_text())
    assert status["phase"] == "failed"
    assert re.search(expected, status["message"])
