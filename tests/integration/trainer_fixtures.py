"""Helpers for the trainer's integration tests: synthetic Parquet data and real gangs of processes.

A gang is the launcher plus ``workers`` worker processes, started exactly as a runtime
starts them (``python -m gyre.pipelines.trainer launcher|worker`` with ``GYRE_CONFIG``,
``GYRE_REPLICA_INDEX``/``GYRE_REPLICAS`` and ``GYRE_LAUNCHER_ADDR``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.support import free_port


def make_classification_data(
    root: Path, rows: int = 2000, seed: int = 0, days: int = 4, row_group_size: int = 100
) -> Path:
    """Hive-partitioned Parquet (``date=.../``) with numeric, categorical and a timestamp.

    The label depends on x1, x2 and the category; about a third of rows are positive, so the
    majority-class baseline is about 0.67 accuracy.
    """
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=rows)
    x2 = rng.normal(loc=3.0, scale=2.0, size=rows)
    cat = rng.choice(["red", "green", "blue"], size=rows, p=[0.3, 0.5, 0.2])
    noise = rng.normal(scale=0.3, size=rows)
    logit = 1.8 * x1 - 0.6 * (x2 - 3.0) + np.where(cat == "red", 1.2, -0.4) + noise
    label = (logit > 0.9).astype(np.int64)
    ts = np.arange(rows, dtype=np.int64) * 60_000_000 + 1_700_000_000_000_000
    per_day = rows // days
    for d in range(days):
        sl = slice(d * per_day, rows if d == days - 1 else (d + 1) * per_day)
        table = pa.table(
            {
                "user_id": pa.array(np.arange(rows)[sl]),
                "x1": pa.array(x1[sl]),
                "x2": pa.array(x2[sl]),
                "color": pa.array(cat[sl].tolist()),
                "ts": pa.array(ts[sl], type=pa.timestamp("us")),
                "clicked": pa.array(label[sl]),
            }
        )
        part = root / f"date=2024-01-0{d + 1}"
        part.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, part / "part-0.parquet", row_group_size=row_group_size)
    return root


def make_regression_data(root: Path, rows: int = 800, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=rows)
    b = rng.uniform(0, 10, size=rows)
    y = 3.0 * a + 0.5 * b + rng.normal(scale=0.1, size=rows)
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"a": a, "b": b, "y": y}), root / "data.parquet", row_group_size=64)
    return root


def base_config(data: Path, tmp: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "test-job",
        "dataset": {
            "path": f"file://{data}",
            "label": "clicked",
            "timestamp_column": "ts",
            "exclude": ["user_id"],
        },
        "split": {"kind": "time", "validation_fraction": 0.25},
        "model": {
            "kind": "mlp",
            "task": "binary_classification",
            "params": {"hidden": [16, 8], "dropout": 0.0},
        },
        "hyperparameters": {
            "epochs": 2,
            "batch_size": 32,
            "lr": 0.01,
            "optimizer": "adam",
            "seed": 7,
        },
        "backend": "horovod",
        "workers": 2,
        "checkpoint": {"dir": str(tmp / "ckpt"), "every_steps": 20, "keep": 2},
        "output": f"file://{tmp / 'model'}",
        "gang_timeout_s": 60,
        "heartbeat_timeout_s": 10,
        "log_every_steps": 5,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@dataclass
class Gang:
    """A launcher and its workers as real processes; logs go to files in ``logdir``."""

    config: Path
    workers: int
    logdir: Path
    start_workers: int | None = None  # fewer than ``workers`` to test the gang timeout
    env: Mapping[str, str] = field(default_factory=dict)
    metrics: bool = False  # give every worker a GYRE_PORT_METRICS of its own
    metrics_ports: list[int] = field(default_factory=list)
    launcher: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _env(self, extra: Mapping[str, str]) -> dict[str, str]:
        return {
            **os.environ,
            "GYRE_CONFIG": str(self.config),
            "PYTHONUNBUFFERED": "1",
            **self.env,
            **extra,
        }

    def _spawn(self, role: str, name: str, extra: Mapping[str, str]) -> subprocess.Popen[bytes]:
        self.logdir.mkdir(parents=True, exist_ok=True)
        out = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 - closed by the child's exit
        return subprocess.Popen(
            [sys.executable, "-m", "gyre.pipelines.trainer", role],
            env=self._env(extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self) -> Gang:
        port = free_port()
        self.launcher = self._spawn("launcher", "launcher", {"GYRE_PORT_RENDEZVOUS": str(port)})
        n = self.workers if self.start_workers is None else self.start_workers
        for i in range(n):
            env = {
                "GYRE_REPLICA_INDEX": str(i),
                "GYRE_REPLICAS": str(self.workers),
                "GYRE_LAUNCHER_ADDR": f"127.0.0.1:{port}",
            }
            if self.metrics:
                self.metrics_ports.append(free_port())
                env["GYRE_PORT_METRICS"] = str(self.metrics_ports[-1])
            self.procs.append(self._spawn("worker", f"worker-{i}", env))
        return self

    def all(self) -> list[subprocess.Popen[bytes]]:
        return ([self.launcher] if self.launcher else []) + self.procs

    def wait(self, timeout: float = 180.0) -> list[int]:
        """Exit codes (launcher first); kills everything on timeout."""
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.all():
            try:
                codes.append(p.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.stop()
                raise AssertionError(f"gang did not finish in {timeout}s\n{self.logs()}") from None
        return codes

    def stop(self) -> None:
        for p in self.all():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def logs(self) -> str:
        parts = []
        for f in sorted(self.logdir.glob("*.log")):
            parts.append(f"--- {f.name} ---\n{f.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def write_config(path: Path, cfg: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def run_gang(
    tmp: Path, cfg: Mapping[str, Any], tag: str, timeout: float = 180.0, **kw: Any
) -> tuple[list[int], Gang]:
    config = write_config(tmp / f"{tag}.json", cfg)
    gang = Gang(config, int(cfg["workers"]), tmp / f"logs-{tag}", **kw).start()
    try:
        codes = gang.wait(timeout)
    finally:
        gang.stop()
    return codes, gang


# --- a user model module (referenced as "trainer_fixtures:build_user_model") ----------------


def build_user_model(input_dim: int, params: dict[str, Any]) -> Any:
    """A user-supplied network: one hidden layer of ``params['width']`` units."""
    from torch import nn

    width = int(params.get("width", 8))
    return nn.Sequential(nn.Linear(input_dim, width), nn.Tanh(), nn.Linear(width, 1))


def loss(outputs: Any, targets: Any) -> Any:
    """The optional user loss: BCE on logits, with outputs shaped ``[batch, 1]``."""
    from torch.nn import functional

    return functional.binary_cross_entropy_with_logits(outputs.reshape(-1), targets)
