"""`TrainerConfig`: everything a TrainingJob's launcher and workers need, parsed once.

The builder writes it as JSON to the file named by ``$GYRE_CONFIG``; every process of the job
reads the same file. Values only the runtime knows come from the environment instead:
``GYRE_REPLICA_INDEX`` / ``GYRE_REPLICAS`` (which worker this is), ``GYRE_LAUNCHER_ADDR``
(``host:port`` of the launcher's rendezvous port), ``GYRE_PORT_RENDEZVOUS`` /
``GYRE_PORT_STORE`` (ports the launcher listens on) and ``GYRE_PORT_METRICS``.

JSON shape (keys are the field names below; nested objects for the nested dataclasses)::

    {"dataset": {"path": "file:///lake/clicks", "label": "clicked", "features": null,
                 "timestamp_column": "ts", "exclude": []},
     "split": {"kind": "time", "validation_fraction": 0.2, "seed": 0},
     "model": {"kind": "mlp", "task": "binary_classification",
               "params": {"hidden": [64, 32], "dropout": 0.1}},
     "hyperparameters": {"epochs": 3, "batch_size": 64, "lr": 0.001, "optimizer": "adam",
                         "seed": 42},
     "backend": "horovod", "workers": 2,
     "checkpoint": {"dir": "/ckpt", "every_steps": 50, "keep": 2},
     "output": "file:///models/churn-v3", "status_file": "/ckpt/status.json",
     "gang_timeout_s": 120}
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_ENV = "GYRE_CONFIG"

TASKS = ("binary_classification", "regression")
OPTIMIZERS = ("sgd", "adam", "adamw")
SPLITS = ("random", "time")


class ConfigError(ValueError):
    """The configuration is missing or invalid; the message says which field and why."""


def uri_to_path(uri: str) -> Path:
    """A local filesystem path for a plain path or a ``file://`` URI (other schemes: error)."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:
        raise ConfigError(f"unsupported URI scheme in {uri!r}: only local paths and file://")
    return Path(uri)


@dataclass(frozen=True)
class DatasetConfig:
    path: str  # directory (possibly hive-partitioned) or file of Parquet; plain path or file://
    label: str
    features: tuple[str, ...] | None = None  # None: every other column (see `exclude`)
    timestamp_column: str | None = None  # needed for a time split; never a feature by default
    exclude: tuple[str, ...] = ()  # columns never used as features (ids, ...)
    max_categories: int = 64  # per categorical feature; rarer values share the unknown bucket
    version: str | None = None  # a FeatureJob's offline version (lineage); None: a content hash
    feature_job: str | None = None  # the FeatureJob it came from (lineage)


@dataclass(frozen=True)
class SplitConfig:
    kind: str = "random"  # "random" (seeded) or "time" (newest rows are validation)
    validation_fraction: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """The built-in MLP (``kind: mlp``) or user code (``module: "pkg.mod:build_model"``).

    User code: ``build_model(input_dim: int, params: dict) -> torch.nn.Module``; the module maps
    a float tensor ``[batch, input_dim]`` to ``[batch]`` or ``[batch, 1]`` (a logit for binary
    classification, the value for regression). If the module that defines ``build_model`` also
    defines ``loss(outputs, targets) -> Tensor``, training uses it instead of the default
    (BCE-with-logits, or MSE).
    """

    kind: str = "mlp"  # "mlp" or "module"
    task: str = "binary_classification"
    module: str | None = None  # "pkg.mod:build_model" when kind == "module"
    params: Mapping[str, Any] = field(default_factory=dict)  # mlp: hidden, dropout


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 1
    batch_size: int = 32  # per worker
    lr: float = 1e-3
    optimizer: str = "adam"  # "sgd" (plain: no momentum), "adam" or "adamw"
    weight_decay: float = 0.0
    seed: int = 42
    max_steps: int | None = None  # stop early after this many global steps (tests, smoke runs)


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str | None = None  # None: no checkpoints, no resume
    every_steps: int = 100
    keep: int = 2


@dataclass(frozen=True)
class TrainerConfig:
    dataset: DatasetConfig
    output: str  # artifact directory (path or file://)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    backend: str = "horovod"  # "horovod" or "ddp"
    workers: int = 1
    # Data shards: the unit of data parallelism. Each shard is a contiguous block of training
    # rows; a worker owns shards s with s % workers == rank. Fixing it (default: workers)
    # makes the global batch sequence independent of the worker count.
    data_shards: int | None = None
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    status_file: str | None = None  # None: <checkpoint.dir>/status.json, else no status file
    # The launcher serves the run's `/status`; after the gang ended it stays up to this long
    # until the final status has been read once (0: exit at once).
    status_linger_s: float = 0.0
    gang_timeout_s: float = 120.0  # all workers must join within this
    heartbeat_timeout_s: float = 30.0  # a silent worker after the start fails the gang
    # Placement of workers on hosts, for Horovod's local/cross ranks: 0 means all workers
    # share one host (local runtime); 1 means one worker per host (one pod per worker);
    # None: 1 inside Kubernetes (KUBERNETES_SERVICE_HOST is set in every pod), else 0.
    workers_per_host: int | None = None
    network_interface: str | None = None  # gloo's NIC; None: "lo" on loopback, else default
    log_every_steps: int = 10
    name: str = "trainingjob"  # for logs and metrics labels
    model_version: str | None = None  # None: derived from the creation time

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.backend not in ("horovod", "ddp"):
            raise ConfigError(f"backend must be horovod or ddp, got {self.backend!r}")
        if self.model.task not in TASKS:
            raise ConfigError(f"model.task must be one of {TASKS}, got {self.model.task!r}")
        if self.model.kind not in ("mlp", "module"):
            raise ConfigError(f"model.kind must be mlp or module, got {self.model.kind!r}")
        if self.model.kind == "module" and not self.model.module:
            raise ConfigError("model.module ('pkg.mod:build_model') is required for kind module")
        if self.hyperparameters.optimizer not in OPTIMIZERS:
            raise ConfigError(f"hyperparameters.optimizer must be one of {OPTIMIZERS}")
        if self.hyperparameters.batch_size < 1 or self.hyperparameters.epochs < 1:
            raise ConfigError("hyperparameters.batch_size and epochs must be >= 1")
        if self.split.kind not in SPLITS:
            raise ConfigError(f"split.kind must be one of {SPLITS}, got {self.split.kind!r}")
        if self.split.kind == "time" and not self.dataset.timestamp_column:
            raise ConfigError("a time split needs dataset.timestamp_column")
        if not 0.0 < self.split.validation_fraction < 1.0:
            raise ConfigError("split.validation_fraction must be in (0, 1)")
        shards = self.shards
        if shards % self.workers != 0:
            raise ConfigError(f"data_shards ({shards}) must be a multiple of workers")
        global_batch = self.hyperparameters.batch_size * self.workers
        if global_batch % shards != 0:
            raise ConfigError(f"batch_size x workers ({global_batch}) must be a multiple of data_shards")
        if self.checkpoint.every_steps < 1:
            raise ConfigError("checkpoint.every_steps must be >= 1")

    @property
    def shards(self) -> int:
        return self.data_shards or self.workers

    def placement(self, env: Mapping[str, str] | None = None) -> int:
        """`workers_per_host` resolved; launcher and workers resolve it alike."""
        if self.workers_per_host is not None:
            return self.workers_per_host
        env = os.environ if env is None else env
        return 1 if env.get("KUBERNETES_SERVICE_HOST") else 0

    @property
    def status_path(self) -> Path | None:
        if self.status_file:
            return uri_to_path(self.status_file)
        if self.checkpoint.dir:
            return uri_to_path(self.checkpoint.dir) / "status.json"
        return None

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = _plain(dataclasses.asdict(self))
        return plain

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainerConfig:
        try:
            built: TrainerConfig = _build(cls, data, "")
            return built
        except (TypeError, KeyError) as e:
            raise ConfigError(f"invalid trainer config: {e}") from e

    @classmethod
    def from_json(cls, text: str) -> TrainerConfig:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"trainer config is not JSON: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError("trainer config must be a JSON object")
        return cls.from_dict(data)


def load_config(env: Mapping[str, str] | None = None) -> TrainerConfig:
    """The config in the file named by ``$GYRE_CONFIG``."""
    env = os.environ if env is None else env
    path = env.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"${CONFIG_ENV} must name the trainer's JSON config file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {CONFIG_ENV}={path}: {e}") from e
    return TrainerConfig.from_json(text)


_NESTED: dict[str, type] = {
    "dataset": DatasetConfig,
    "split": SplitConfig,
    "model": ModelConfig,
    "hyperparameters": Hyperparameters,
    "checkpoint": CheckpointConfig,
}
_TUPLES = {"features", "exclude"}


def _build(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown field(s) {sorted(unknown)} in {where or 'config'}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _NESTED and cls is TrainerConfig:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} must be an object")
            kwargs[key] = _build(_NESTED[key], value, key)
        elif key in _TUPLES and value is not None:
            kwargs[key] = tuple(value)
        elif key == "params":
            kwargs[key] = dict(value or {})
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
