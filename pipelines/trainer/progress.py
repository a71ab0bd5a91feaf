"""Training progress: rank 0's reports to the launcher, a JSON status file, log lines, metrics.

At every log interval and at phase changes rank 0 sends its progress to the launcher, which
serves it on ``/status`` (`gyre.pipelines.trainer.status`: what the controller reads), and
writes the same document to the status file (atomically, so a reader never sees half a file):
the run's record next to its checkpoints. Its fields (`TrainerProgress`):

=====================  =======================================================================
``phase``              ``starting`` | ``running`` | ``succeeded`` | ``failed``
``epoch`` / ``epochs`` current epoch (0-based) and the total
``step`` / ``total_steps``  global optimizer steps done / planned
``percent``            ``100 * step / total_steps``
``eta_s``              seconds left at the recent pace (null until measured)
``samples_per_s``      global training throughput (all workers)
``step_time_s``        mean wall time of one step
``allreduce_time_s``   mean time a step waited for the gradient allreduce (Horovod)
``train_loss``         mean training loss over the last interval
``metrics``            latest validation metrics (``val_loss``, ``val_accuracy``, ``val_auc``,
                       ``val_majority_accuracy`` or ``val_rmse``) and ``train_loss`` per epoch
``resumed_from_step``  the checkpoint step this run resumed from (null: fresh start)
``workers`` / ``backend``  gang size and backend
``artifact``           the output URI once written
``message``            a human-readable summary (the error on failure)
``updated_at``         RFC 3339 time of this write
=====================  =======================================================================

Every worker also exposes ``gyre_trainer_*`` gauges, labelled ``trainingjob`` and ``rank``, on
``$GYRE_PORT_METRICS`` (if set).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gyre.pipelines.trainer.status import TrainerProgress

log = logging.getLogger("gyre.trainer")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def mark_failed(path: Path | None, message: str) -> None:
    """Set ``phase: failed`` in the status file, keeping the progress fields already there."""
    if path is None:
        return
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    state.update(phase="failed", message=message, updated_at=now_rfc3339())
    write_json_atomic(path, state)


class Metrics:
    """Prometheus gauges of one worker, served on ``port`` (None: not served)."""

    def __init__(self, job: str, rank: int, port: int | None) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        labels = ["trainingjob", "rank"]  # not "job": Prometheus sets that label on every target

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, labels, registry=self.registry).labels(job, str(rank))

        self.samples_per_s = gauge("gyre_trainer_samples_per_second", "Training throughput")
        self.step_time = gauge("gyre_trainer_step_seconds", "Wall time of one step")
        self.allreduce_time = gauge(
            "gyre_trainer_allreduce_seconds", "Time a step waited for the gradient allreduce"
        )
        self.step = gauge("gyre_trainer_step", "Global steps done")
        self.total_steps = gauge("gyre_trainer_total_steps", "Global steps planned")
        self.loss = gauge("gyre_trainer_train_loss", "Training loss (recent mean)")
        if port:
            try:
                start_http_server(port, registry=self.registry)
            except OSError as e:  # a taken port must not stop training
                log.warning("Metrics not served on port %d: %s", port, e)


class Progress:
    """Rank 0's progress bookkeeping: rates, ETA, the status file and log lines."""

    def __init__(
        self,
        path: Path | None,
        *,
        job: str,
        epochs: int,
        total_steps: int,
        workers: int,
        backend: str,
        global_batch: int,
        enabled: bool,
        publish: Callable[[str], None] | None = None,
    ) -> None:
        """``publish`` receives each report as `TrainerProgress` JSON (to the launcher)."""
        self.path = path
        self.publish = publish
        self.job = job
        self.enabled = enabled
        self.state: dict[str, Any] = {
            "phase": "starting",
            "epoch": 0,
            "epochs": epochs,
            "step": 0,
            "total_steps": total_steps,
            "percent": 0.0,
            "eta_s": None,
            "samples_per_s": None,
            "step_time_s": None,
            "allreduce_time_s": None,
            "train_loss": None,
            "metrics": {},
            "history": [],
            "resumed_from_step": None,
            "workers": workers,
            "backend": backend,
            "artifact": None,
            "message": "",
        }
        self.global_batch = global_batch
        self._interval_start = time.perf_counter()
        self._interval_steps = 0
        self._interval_samples = 0
        self._step_time = 0.0
        self._allreduce = 0.0
        self._loss = 0.0

    def record_step(self, samples: int, step_time: float, allreduce: float, loss: float) -> None:
        self._interval_steps += 1
        self._interval_samples += samples
        self._step_time += step_time
        self._allreduce += allreduce
        self._loss += loss

    def report(self, epoch: int, step: int, metrics: Metrics | None = None) -> None:
        """Close the interval: update rates and ETA, write the status file, log a line."""
        elapsed = time.perf_counter() - self._interval_start
        n = max(self._interval_steps, 1)
        rate = self._interval_samples / elapsed if elapsed > 0 else None
        steps_per_s = self._interval_steps / elapsed if elapsed > 0 else 0.0
        total = self.state["total_steps"]
        self.state.update(
            phase="running",
            epoch=epoch,
            step=step,
            percent=round(100.0 * step / total, 2) if total else 100.0,
            eta_s=round((total - step) / steps_per_s, 1) if steps_per_s > 0 else None,
            samples_per_s=round(rate, 1) if rate else None,
            step_time_s=self._step_time / n,
            allreduce_time_s=self._allreduce / n,
            train_loss=self._loss / n if self._interval_steps else None,
        )
        if metrics is not None:
            metrics.step.set(step)
            metrics.total_steps.set(total)
            if rate:
                metrics.samples_per_s.set(rate / self.state["workers"])
            metrics.step_time.set(self._step_time / n)
            metrics.allreduce_time.set(self._allreduce / n)
            if self._interval_steps:
                metrics.loss.set(self._loss / n)
        self._interval_start = time.perf_counter()
        self._interval_steps = self._interval_samples = 0
        self._step_time = self._allreduce = self._loss = 0.0
        if self.enabled:
            s = self.state
            log.info(
                "TrainingJob %s: epoch %d/%d step %d/%d (%.1f%%) eta %ss samples/s %s "
                "step %.4fs allreduce %.4fs loss %s",
                self.job,
                epoch + 1,
                s["epochs"],
                step,
                total,
                s["percent"],
                s["eta_s"],
                s["samples_per_s"],
                s["step_time_s"],
                s["allreduce_time_s"],
                None if s["train_loss"] is None else round(s["train_loss"], 5),
            )
            self.write()

    def update(self, **fields: Any) -> None:
        self.state.update(fields)
        if self.enabled:
            self.write()

    def write(self) -> None:
        doc = {**self.state, "updated_at": now_rfc3339()}
        if self.path is not None:
            write_json_atomic(self.path, doc)
        if self.publish is not None:
            self.publish(TrainerProgress.model_validate(doc).model_dump_json())
