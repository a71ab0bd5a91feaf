"""TrainingJob → a launcher and N workers running `gyre.pipelines.trainer`.

The launcher hosts Horovod's rendezvous (and, for DDP, torch's TCPStore) and the gang; the
workers train data-parallel on their shards. Both are batch workloads that restart on failure
within `runPolicy.backoffLimit`; a restarted gang resumes from the newest checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from gyre.api.trainingjob import TrainingJobSpec
from gyre.core.workload import (
    ConfigDirRef,
    EndpointRef,
    Port,
    Resources,
    RestartPolicy,
    Workload,
    WorkloadKind,
)
from gyre.pipelines.trainer.config import (
    CheckpointConfig,
    DatasetConfig,
    Hyperparameters,
    ModelConfig,
    SplitConfig,
    TrainerConfig,
)

LAUNCHER = "launcher"
WORKER = "worker"
CONFIG_FILE = "trainer.json"
RENDEZVOUS_PORT = 29400
STORE_PORT = 29401
METRICS_PORT = 9400
# The launcher waits this long after the run for the controller to read its final status
# (the controller polls every few seconds while a job runs).
STATUS_LINGER_S = 30.0
TASKS = {"binary": "binary_classification", "regression": "regression"}


def model_version(name: str, generation: int) -> str:
    return f"{name}-g{generation}"


def checkpoint_uri(spec: TrainingJobSpec, name: str, generation: int) -> str:
    return (
        spec.checkpoint.uri or f"{spec.output.uri.rstrip('/')}/checkpoints/{model_version(name, generation)}"
    )


def artifact_uri(spec: TrainingJobSpec, name: str, generation: int) -> str:
    return f"{spec.output.uri.rstrip('/')}/{model_version(name, generation)}"


@dataclass(frozen=True)
class DatasetSource:
    """The training data as resolved from the spec and its dependencies."""

    uri: str
    version: str | None = None  # a FeatureJob's offline version
    feature_job: str | None = None
    features: tuple[str, ...] = ()  # the FeatureJob's feature columns (default features)


def build_trainer_config(
    spec: TrainingJobSpec, name: str, generation: int, dataset: str | DatasetSource
) -> TrainerConfig:
    source = dataset if isinstance(dataset, DatasetSource) else DatasetSource(dataset)
    ds = spec.dataset
    hp = spec.hyperparameters
    return TrainerConfig(
        name=name,
        dataset=DatasetConfig(
            path=source.uri,
            label=ds.label,
            features=tuple(ds.features) or source.features or None,
            timestamp_column=ds.split.time_field,
            exclude=tuple(ds.ignore),
            version=source.version,
            feature_job=source.feature_job,
        ),
        split=SplitConfig(
            kind=ds.split.method, validation_fraction=ds.split.validation_fraction, seed=ds.split.seed
        ),
        model=ModelConfig(
            kind="module" if spec.model.module else "mlp",
            task=TASKS[spec.model.task],
            module=spec.model.module,
            params=dict(spec.model.params),
        ),
        hyperparameters=Hyperparameters(
            epochs=hp.epochs,
            batch_size=hp.batch_size,
            lr=hp.learning_rate,
            optimizer=hp.optimizer,
            weight_decay=hp.weight_decay,
            seed=hp.seed,
        ),
        backend=spec.backend,
        workers=spec.workers,
        checkpoint=CheckpointConfig(
            dir=checkpoint_uri(spec, name, generation),
            every_steps=spec.checkpoint.every_steps,
            keep=spec.checkpoint.keep,
        ),
        gang_timeout_s=float(spec.run_policy.gang_timeout_seconds),
        status_linger_s=STATUS_LINGER_S,
        output=artifact_uri(spec, name, generation),
        model_version=model_version(name, generation),
    )


def build_launcher(spec: TrainingJobSpec, config: TrainerConfig) -> Workload:
    ports = [Port("rendezvous", RENDEZVOUS_PORT)]
    if spec.backend == "ddp":
        ports.append(Port("store", STORE_PORT))
    return Workload(
        name=LAUNCHER,
        role=LAUNCHER,
        kind=WorkloadKind.BATCH,
        command=("python", "-m", "gyre.pipelines.trainer", "launcher"),
        env={"GYRE_CONFIG": ConfigDirRef(CONFIG_FILE)},
        ports=tuple(ports),
        resources=Resources(cpu="250m", memory="256Mi"),
        restart_policy=RestartPolicy.ON_FAILURE,
        backoff_limit=spec.run_policy.backoff_limit,
        config_files={CONFIG_FILE: config.to_json()},
        status_port="rendezvous",  # the run's `TrainerStatus`
    )


def build_workers(spec: TrainingJobSpec, config: TrainerConfig) -> Workload:
    env: dict[str, str | EndpointRef | ConfigDirRef] = {
        "GYRE_CONFIG": ConfigDirRef(CONFIG_FILE),
        "GYRE_LAUNCHER_ADDR": EndpointRef("rendezvous", LAUNCHER),
    }
    return Workload(
        name=WORKER,
        role=WORKER,
        kind=WorkloadKind.BATCH,
        command=("python", "-m", "gyre.pipelines.trainer", "worker"),
        replicas=spec.workers,
        env=env,
        ports=(Port("metrics", METRICS_PORT),),
        resources=Resources(cpu=spec.resources.cpu, memory=spec.resources.memory, gpu=spec.resources.gpu),
        restart_policy=RestartPolicy.ON_FAILURE,
        backoff_limit=spec.run_policy.backoff_limit,
        config_files={CONFIG_FILE: config.to_json()},
    )


def build_trainingjob(
    spec: TrainingJobSpec, name: str, generation: int, dataset: str | DatasetSource
) -> list[Workload]:
    config = build_trainer_config(spec, name, generation, dataset)
    return [build_launcher(spec, config), build_workers(spec, config)]
