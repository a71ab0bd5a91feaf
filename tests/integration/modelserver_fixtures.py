"""Helpers for the model server's tests: a tiny model trained by the real trainer, the trainer's
own validation predictions, and model server processes started as a runtime starts them
(``python -m gyre.pipelines.modelserver`` with ``GYRE_CONFIG`` and ``GYRE_PORT_HTTP``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from gyre.pipelines.modelserver.config import ModelServerConfig
from gyre.pipelines.trainer import artifact
from gyre.pipelines.trainer.config import TrainerConfig
from gyre.pipelines.trainer.data import ParquetSource, compute_split, feature_kinds, to_raw
from gyre.pipelines.trainer.models import predict_output

from tests.support import eventually, free_port

try:
    from .trainer_fixtures import base_config, make_classification_data, run_gang
except ImportError:  # tests/integration collected as a plain directory
    from trainer_fixtures import base_config, make_classification_data, run_gang  # type: ignore[no-redef]

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


@dataclass(frozen=True)
class Trained:
    """An artifact the real trainer wrote, and what the trainer itself predicts for its
    validation rows (computed with the trainer's own data path: split, raw columns, the
    fitted preprocessing, the network)."""

    artifact: Path
    rows: list[dict[str, Any]]  # the validation rows as a client sends them (the raw columns)
    entities: list[int]  # each validation row's user_id (not a feature: the entity key)
    labels: list[float]
    predictions: list[float]
    metadata: dict[str, Any]


def train_tiny_model(tmp: Path) -> Trained:
    data = make_classification_data(tmp / "lake", rows=1200)
    cfg = base_config(
        data,
        tmp,
        workers=1,
        backend="ddp",
        hyperparameters={"epochs": 3, "batch_size": 32},
        output=f"file://{tmp / 'model'}",
    )
    codes, gang = run_gang(tmp, cfg, "tiny", timeout=240)
    assert codes == [0, 0], gang.logs()
    tcfg = TrainerConfig.from_dict(cfg)
    source = ParquetSource(tcfg.dataset.path)
    kinds = feature_kinds(source, tcfg.dataset)
    split = compute_split(source, tcfg.split, tcfg.dataset.timestamp_column, tcfg.dataset.label)
    names = [n for n, _ in kinds]
    table: pa.Table = source.read_rows(split.validation_ids, [*names, tcfg.dataset.label, "user_id"])
    raw = to_raw(table, kinds, tcfg.dataset.label)
    model = artifact.load(str(tmp / "model"))
    with torch.no_grad():
        x = torch.from_numpy(model.preprocessor.transform(raw.columns))
        preds = predict_output(tcfg.model.task, model.network(x)).numpy()
    rows = table.select(names).to_pylist()
    metadata = json.loads((tmp / "model" / "metadata.json").read_text())
    entities = table.column("user_id").to_pylist()
    return Trained(tmp / "model", rows, entities, raw.label.tolist(), [float(p) for p in preds], metadata)


def slow_copy(src: Path, dst: Path) -> Path:
    """The artifact with its network rebuilt by `slow_model` (same weights, same preprocessing)."""
    shutil.copytree(src, dst)
    spec = json.loads((dst / artifact.MODEL_SPEC_FILE).read_text())
    spec.update(kind="module", module="slow_model:build_model")
    (dst / artifact.MODEL_SPEC_FILE).write_text(json.dumps(spec))
    return dst


@dataclass
class ServerProc:
    """A model server process; its log goes to ``log``."""

    config: ModelServerConfig
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.config.name}-{self.config.variant}.log"

    def start(self, wait: bool = True) -> ServerProc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        path = self.workdir / f"{self.config.name}-{self.config.variant}.json"
        path.write_text(self.config.to_json())
        env = {
            **os.environ,
            "GYRE_CONFIG": str(path),
            "GYRE_PORT_HTTP": str(self.port),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(HERE), str(ROOT / "operators"), os.environ.get("PYTHONPATH", "")]
            ),
            **self.env,
        }
        out = open(self.log, "ab")  # noqa: SIM115 - closed by the child's exit
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gyre.pipelines.modelserver"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            eventually(self.ready, timeout=90, interval=0.2, what=f"model server ready\n{self.tail()}")
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"model server exited\n{self.tail()}"
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/status", timeout=5) as r:
            body: dict[str, Any] = json.loads(r.read())
            return body

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return bool(np.allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol))


@dataclass
class RedisServer:
    """A real ``redis-server`` on a loopback port, in ``workdir`` (no persistence)."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.proc = subprocess.Popen(
            [*args, "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        eventually(self.ping, timeout=20, interval=0.1, retry_on=(OSError,))
        return self

    def ping(self) -> bool:
        import redis

        return bool(redis.Redis(port=self.port, socket_timeout=1).ping())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
