"""A training worker: join the gang, read this rank's shard, train data-parallel, save the model.

Order of work (every rank runs the same code; rank 0 alone writes files):

1. join the launcher's gang and wait until every worker joined;
2. join the backend's collective group (Horovod or torch.distributed);
3. compute the split and shards from metadata, read only the owned shards and this rank's
   part of the validation set, fit preprocessing from per-shard statistics of all ranks;
4. build the model and optimizer, resume from the newest checkpoint (rank 0 loads, every
   rank receives it), broadcast rank 0's parameters and optimizer state;
5. train: every global step takes one batch per shard; gradients are averaged over ranks;
   rank 0 checkpoints every ``checkpoint.every_steps`` and reports progress; validation at
   the end of each epoch;
6. rank 0 writes the artifact; every rank tells the launcher it is done.

A heartbeat thread keeps the launcher informed and ends the process when the launcher says
the gang failed, so a worker never hangs in a collective whose peer died.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import gyre
import numpy as np
import numpy.typing as npt
import torch
from gyre.pipelines.trainer import artifact
from gyre.pipelines.trainer.backends import Backend, get_backend
from gyre.pipelines.trainer.checkpoint import load_latest, save_checkpoint
from gyre.pipelines.trainer.config import TrainerConfig, uri_to_path
from gyre.pipelines.trainer.data import (
    ParquetSource,
    RawColumns,
    compute_split,
    feature_kinds,
    iter_batches,
    owned_shards,
    shard_ids,
    steps_per_epoch,
    to_raw,
)
from gyre.pipelines.trainer.models import (
    build_loss,
    build_model,
    build_optimizer,
    predict_output,
)
from gyre.pipelines.trainer.preprocessing import Preprocessor, shard_stats
from gyre.pipelines.trainer.progress import Metrics, Progress, mark_failed, now_rfc3339
from gyre.pipelines.trainer.topology import (
    GangClient,
    GangError,
    WorkerIdentity,
    build_slots,
    default_iface,
)

log = logging.getLogger("gyre.trainer.worker")

METRICS_PORT_ENV = "GYRE_PORT_METRICS"


class Heartbeat(threading.Thread):
    """Beats to the launcher; exits the process when the gang failed or the launcher vanished."""

    def __init__(self, gang: GangClient, timeout_s: float, interval_s: float = 1.0) -> None:
        super().__init__(name="gang-heartbeat", daemon=True)
        self.gang = gang
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        last_ok = time.monotonic()
        while not self.stopped.wait(self.interval_s):
            try:
                state = self.gang.beat()
                last_ok = time.monotonic()
            except OSError as e:
                if time.monotonic() - last_ok > self.timeout_s:
                    log.error("Launcher unreachable for %.0fs (%s); exiting", self.timeout_s, e)
                    os._exit(1)
                continue
            if state.get("phase") == "failed" and not self.stopped.is_set():
                # the peers are gone; a collective would block forever, so leave now
                log.error("Gang failed: %s; worker %d exiting", state["message"], self.gang.rank)
                os._exit(1)


def run_worker(cfg: TrainerConfig, ident: WorkerIdentity) -> int:
    if ident.replicas != cfg.workers:
        raise GangError(f"GYRE_REPLICAS={ident.replicas} but the config has {cfg.workers} workers")
    slot = build_slots(cfg.workers, cfg.placement())[ident.index]
    gang = GangClient(ident.launcher_host, ident.launcher_port, slot.rank)
    # the launcher may start well after this worker (pods start in any order) and only then
    # starts its gang timer, so a worker waits longer than the gang timeout for it
    patience = 2 * cfg.gang_timeout_s + 30
    gang.join(patience)
    log.info(
        "Worker %d joined the gang at %s:%d; waiting for %d workers",
        slot.rank,
        ident.launcher_host,
        ident.launcher_port,
        cfg.workers,
    )
    state = gang.wait_running(patience)
    heartbeat = Heartbeat(gang, cfg.heartbeat_timeout_s)
    heartbeat.start()
    backend = get_backend(cfg.backend)
    try:
        backend.init(
            slot,
            ident.launcher_host,
            ident.launcher_port,
            state.get("store_port"),
            default_iface(ident.launcher_host, cfg.network_interface),
        )
        log.info("Worker %d/%d joined %s", backend.rank, backend.size, backend.name)
        train(cfg, backend, publish=gang.progress)
        heartbeat.stopped.set()
        backend.barrier()
        gang.done()
    except BaseException as e:
        heartbeat.stopped.set()
        log.exception("Worker %d failed", slot.rank)
        if slot.rank == 0:
            mark_failed(cfg.status_path, f"worker 0 failed: {type(e).__name__}: {e}")
        with contextlib.suppress(OSError):  # the launcher may be gone already
            gang.fail(f"{type(e).__name__}: {e}")
        return 1
    try:
        backend.shutdown()
    except Exception:  # the job is done; a teardown hiccup must not fail it
        log.debug("backend shutdown failed", exc_info=True)
    return 0


class ShardData:
    """The owned shards of this rank, preprocessed, plus its part of the validation set."""

    def __init__(self, cfg: TrainerConfig, backend: Backend) -> None:
        self.source = ParquetSource(cfg.dataset.path)
        self.kinds = feature_kinds(self.source, cfg.dataset)
        self.split = compute_split(self.source, cfg.split, cfg.dataset.timestamp_column, cfg.dataset.label)
        shards = shard_ids(self.split.train_ids, cfg.shards)
        self.owned = owned_shards(cfg.shards, backend.rank, backend.size)
        columns = [n for n, _ in self.kinds] + [cfg.dataset.label]
        raws: list[RawColumns] = [
            to_raw(self.source.read_rows(shards[s], columns), self.kinds, cfg.dataset.label)
            for s in self.owned
        ]
        # statistics per shard, merged in shard order: independent of the worker count
        mine = {s: shard_stats(r, self.kinds) for s, r in zip(self.owned, raws, strict=True)}
        merged: dict[int, Any] = {}
        for part in backend.allgather_object(mine):
            merged.update(part)
        self.preprocessor = Preprocessor.fit(
            self.kinds, [merged[s] for s in range(cfg.shards)], cfg.dataset.max_categories
        )
        self.x = [torch.from_numpy(self.preprocessor.transform(r.columns)) for r in raws]
        self.y = [torch.from_numpy(r.label) for r in raws]
        self.shard_size = len(shards[0])
        self.train_rows = self.shard_size * cfg.shards
        val = np.array_split(self.split.validation_ids, backend.size)[backend.rank]
        vraw = to_raw(self.source.read_rows(val, columns), self.kinds, cfg.dataset.label)
        self.val_x = torch.from_numpy(self.preprocessor.transform(vraw.columns))
        self.val_y = torch.from_numpy(vraw.label)
        self.val_rows = len(self.split.validation_ids)


def reference_sample(data: ShardData, seed: int) -> npt.NDArray[Any]:
    """Up to `artifact.REFERENCE_ROWS` of this rank's training rows, preprocessed, drawn at
    random over all its shards (shards are contiguous blocks, in time for a time split)."""
    x = torch.cat(data.x).numpy() if data.x else np.zeros((0, data.preprocessor.input_dim), np.float32)
    rng = np.random.default_rng(seed)
    take = rng.choice(len(x), size=min(len(x), artifact.REFERENCE_ROWS), replace=False)
    return x[np.sort(take)]


def auc(scores: npt.NDArray[Any], labels: npt.NDArray[Any]) -> float | None:
    """ROC AUC by the rank-sum formula (ties get average ranks); None for one class only."""
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def evaluate(
    cfg: TrainerConfig, backend: Backend, model: torch.nn.Module, data: ShardData, loss_fn: Any
) -> dict[str, float | None]:
    """Validation metrics over all ranks' parts of the validation set."""
    # the plain module: a DDP wrapper would sync buffers, a collective that ranks with an
    # empty validation part would not join
    model = backend.unwrap(model)
    model.eval()
    with torch.no_grad():
        out = model(data.val_x).reshape(-1) if len(data.val_y) else torch.zeros(0)
        loss_sum = float(loss_fn(out, data.val_y).item()) * len(data.val_y) if len(out) else 0.0
        pred = predict_output(cfg.model.task, out)
    model.train()
    y = data.val_y
    if cfg.model.task == "binary_classification":
        correct = float(((pred >= 0.5).float() == y).sum().item())
        positives = float(y.sum().item())
        loss_t, n, correct, positives = backend.allreduce_sum([loss_sum, float(len(y)), correct, positives])
        gathered = backend.allgather_object((pred.numpy(), y.numpy()))
        scores = np.concatenate([g[0] for g in gathered])
        labels = np.concatenate([g[1] for g in gathered])
        return {
            "val_loss": loss_t / n,
            "val_accuracy": correct / n,
            "val_auc": auc(scores, labels),
            "val_majority_accuracy": max(positives, n - positives) / n,
        }
    sq = float(((pred - y) ** 2).sum().item())
    loss_t, n, sq = backend.allreduce_sum([loss_sum, float(len(y)), sq])
    return {"val_loss": loss_t / n, "val_rmse": float(np.sqrt(sq / n))}


def train(cfg: TrainerConfig, backend: Backend, publish: Callable[[str], None] | None = None) -> None:
    hp = cfg.hyperparameters
    torch.manual_seed(hp.seed)
    np.random.seed(hp.seed % 2**32)
    torch.set_num_threads(max(1, int(os.environ.get("GYRE_TORCH_THREADS", "1"))))
    rank0 = backend.rank == 0
    started = time.time()

    data = ShardData(cfg, backend)
    per_shard_batch = hp.batch_size * backend.size // cfg.shards
    epoch_steps = steps_per_epoch(data.shard_size, per_shard_batch)
    total_steps = epoch_steps * hp.epochs
    if hp.max_steps is not None:
        total_steps = min(total_steps, hp.max_steps)

    model = build_model(cfg.model, data.preprocessor.input_dim).to(backend.device)
    optimizer = build_optimizer(hp.optimizer, model.parameters(), hp.lr, hp.weight_decay)
    model, optimizer = backend.wrap(model, optimizer)
    loss_fn = build_loss(cfg.model)
    # the model's size, a metric like the others (an objective a search may minimise)
    size = {"model_parameters": float(sum(p.numel() for p in backend.unwrap(model).parameters()))}

    ckpt_dir = uri_to_path(cfg.checkpoint.dir) if cfg.checkpoint.dir else None
    resume = load_latest(ckpt_dir) if (rank0 and ckpt_dir) else None
    resume = backend.broadcast_object(resume)
    start_step = 0
    metrics_hist: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    if resume is not None:
        backend.unwrap(model).load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        start_step = int(resume["step"])
        metrics_hist = dict(resume.get("metrics", {}))
        history = list(resume.get("history", []))
    backend.broadcast_state(model, optimizer)

    port = os.environ.get(METRICS_PORT_ENV)
    prom = Metrics(cfg.name, backend.rank, int(port) if port else None)
    progress = Progress(
        cfg.status_path,
        job=cfg.name,
        epochs=hp.epochs,
        total_steps=total_steps,
        workers=backend.size,
        backend=backend.name,
        global_batch=hp.batch_size * backend.size,
        enabled=rank0,
        publish=publish,
    )
    progress.update(
        phase="running",
        step=start_step,
        resumed_from_step=start_step if resume is not None else None,
        metrics=metrics_hist,
        history=history,
        message=f"resumed from step {start_step}" if resume is not None else "started",
    )
    if resume is not None and rank0:
        log.info("TrainingJob %s resumed from checkpoint at step %d", cfg.name, start_step)

    step = start_step
    epoch = step // epoch_steps if epoch_steps else 0
    model.train()
    while step < total_steps and epoch < hp.epochs:
        orders = [np.random.default_rng([hp.seed, epoch, s]).permutation(data.shard_size) for s in data.owned]
        for _, positions in iter_batches(orders, per_shard_batch, step - epoch * epoch_steps):
            t0 = time.perf_counter()
            xb = torch.cat([x[torch.from_numpy(p)] for x, p in zip(data.x, positions, strict=True)])
            yb = torch.cat([y[torch.from_numpy(p)] for y, p in zip(data.y, positions, strict=True)])
            xb, yb = xb.to(backend.device), yb.to(backend.device)
            optimizer.zero_grad()
            out = model(xb).reshape(-1)
            loss = loss_fn(out, yb)
            loss.backward()  # type: ignore[no-untyped-call]
            waited = backend.step(optimizer)
            step += 1
            progress.record_step(len(yb) * backend.size, time.perf_counter() - t0, waited, float(loss.item()))
            if step % cfg.log_every_steps == 0 or step == total_steps:
                progress.report(epoch, step, prom)
            if ckpt_dir and rank0 and step % cfg.checkpoint.every_steps == 0:
                save_checkpoint(
                    ckpt_dir,
                    step,
                    {
                        "step": step,
                        "model": backend.unwrap(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "metrics": metrics_hist,
                        "history": history,
                        "dataset_version": data.source.version(),
                    },
                    keep=cfg.checkpoint.keep,
                )
            if step >= total_steps:
                break
        if step >= total_steps or step % epoch_steps == 0:
            val = evaluate(cfg, backend, model, data, loss_fn)
            metrics_hist = {**val, "train_loss": progress.state["train_loss"], "epoch": epoch, **size}
            history = [*[h for h in history if h.get("epoch") != epoch], metrics_hist]
            if rank0:
                log.info(
                    "TrainingJob %s: epoch %d validation %s",
                    cfg.name,
                    epoch + 1,
                    {k: (round(v, 5) if isinstance(v, float) else v) for k, v in val.items()},
                )
            progress.update(metrics=metrics_hist, history=history)
        epoch += 1

    if not metrics_hist or "val_loss" not in metrics_hist:
        val = evaluate(cfg, backend, model, data, loss_fn)
        metrics_hist = {**val, "train_loss": progress.state["train_loss"], **size}
    if rank0:
        created = now_rfc3339()
        version = cfg.model_version or time.strftime("v%Y%m%d%H%M%S", time.gmtime())
        metadata = {
            "name": cfg.name,
            "model_version": version,
            "created_at": created,
            "code_version": f"gyre {gyre.__version__}",
            "task": cfg.model.task,
            "metrics": metrics_hist,
            "hyperparameters": asdict(hp),
            "model": {
                "kind": cfg.model.kind,
                "module": cfg.model.module,
                "params": dict(cfg.model.params),
            },
            "features": data.preprocessor.features,
            "label": cfg.dataset.label,
            "dataset": {
                "location": cfg.dataset.path,
                "version": cfg.dataset.version or data.source.version(),
                "content_version": data.source.version(),
                "feature_job": cfg.dataset.feature_job,
                "rows": data.source.num_rows,
                "train_rows": data.train_rows,
                "validation_rows": data.val_rows,
                "split": data.split.description,
            },
            "training": {
                "backend": backend.name,
                "workers": backend.size,
                "data_shards": cfg.shards,
                "steps": step,
                "resumed_from_step": progress.state["resumed_from_step"],
                "duration_s": round(time.time() - started, 3),
            },
        }
        artifact.save(
            cfg.output,
            backend.unwrap(model),
            cfg.model,
            data.preprocessor.input_dim,
            data.preprocessor,
            metadata,
            reference=reference_sample(data, hp.seed),
        )
        log.info("TrainingJob %s wrote model %s to %s", cfg.name, version, cfg.output)
        progress.update(
            phase="succeeded",
            step=step,
            percent=100.0,
            eta_s=0,
            artifact=cfg.output,
            features=[f["name"] for f in data.preprocessor.features],
            metrics=metrics_hist,
            message=f"model {version} written",
        )
