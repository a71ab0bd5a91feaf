"""`TrainingJob`: data-parallel torch training (Horovod ring-allreduce by default) into a model artifact."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from gyre.api._base import (
    ApiModel,
    BaseStatus,
    DnsName,
    FieldName,
    Kind,
    KindInfo,
    Resources,
    Uri,
    age_column,
    cel,
    exactly_one,
    ready_column,
    validations,
)

PRESERVE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


class SplitSpec(ApiModel):
    """How rows are divided into training and validation sets."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.method != 'time' || has(self.timeField)",
                "split.method time needs split.timeField",
                ".timeField",
            ),
        )
    )

    method: Literal["random", "time"] = "random"
    """random (the default): a seeded random share of rows validates; time: the newest rows by
    timeField validate, so the model is judged on data later than it trained on."""
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """Share of rows held out for validation, between 0 and 1 (exclusive); default 0.2."""
    time_field: FieldName | None = None
    """For method time: the timestamp column that orders rows; the newest validationFraction
    of them validate. Required by method time."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the random split: the same seed picks the same validation rows. Default 0."""


class DatasetSpec(ApiModel):
    """The training data: a FeatureJob's offline store, a Stream's lake or Parquet files (set
    exactly one), and which columns are the label and the features."""

    model_config = ConfigDict(json_schema_extra=validations(exactly_one("featureJob", "stream", "path")))

    feature_job: DnsName | None = None
    """A FeatureJob in this namespace; its offline store is read (its newest version, or
    featureVersion)."""
    feature_version: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)] | None = (
        None
    )
    """With featureJob: a version of its offline store to train on (one of its
    status.offline.versions); unset: the newest when the run starts."""
    stream: DnsName | None = None
    """A Stream in this namespace; its lake is read."""
    path: Uri | None = None
    """Parquet files (a file or a directory, possibly partitioned) read directly."""
    label: FieldName
    """Column the model learns to predict: 0/1 (or true/false) for task binary, a number for
    task regression."""
    features: Annotated[list[FieldName], Field(max_length=1024)] = []
    """Input columns; empty means every column but the label and ignored ones."""
    ignore: Annotated[list[FieldName], Field(max_length=1024)] = []
    """Columns never used as features (ids, free text)."""
    split: SplitSpec = SplitSpec()
    """How rows are divided into training and validation sets; default a random 20%."""


class ModelSpec(ApiModel):
    """What is trained: a built-in architecture or user code (set exactly one), and its task."""

    model_config = ConfigDict(json_schema_extra=validations(exactly_one("architecture", "module")))

    architecture: Literal["mlp"] | None = None
    """A built-in model: mlp, a multilayer perceptron over the tabular features."""
    module: (
        Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$", max_length=256)]
        | None
    ) = None
    """User code, "package.module:build_model": build_model(input_dim, params) returns a
    torch.nn.Module; a loss(outputs, targets) function beside it replaces the default loss."""
    task: Literal["binary", "regression"] = "binary"
    """binary (the default): binary classification with a logit output and BCE loss, reporting
    accuracy; regression: a numeric output with MSE loss, reporting RMSE."""
    params: Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE)] = {}
    """Passed to the model builder; the built-in mlp takes hidden (layer widths) and dropout."""


class Hyperparameters(ApiModel):
    """Optimisation settings; an Experiment's parameters override them per trial."""

    epochs: Annotated[int, Field(ge=1, le=10000)] = 5
    """Full passes over the training rows; default 5."""
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 64
    """Rows per step on each worker (the global batch is batchSize times workers); default 64."""
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 0.001
    """Step size of the optimizer; default 0.001."""
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    """sgd, adam (the default) or adamw; gradients are averaged over workers before each step."""
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    """L2 penalty (decoupled for adamw); default 0, none."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of weight initialisation and shuffling: the same seed and data train the same model."""


class CheckpointSpec(ApiModel):
    """Periodic checkpoints: a restarted or resumed job continues from the newest one."""

    every_steps: Annotated[int, Field(ge=1, le=1000000)] = 100
    """Optimizer steps between two checkpoints; default 100."""
    uri: Uri | None = None
    """Where checkpoints are written; defaults to <output.uri>/checkpoints/<name>-g<generation>."""
    keep: Annotated[int, Field(ge=1, le=100)] = 3
    """How many of the newest checkpoints are kept; older ones are deleted. Default 3."""


class RunPolicy(ApiModel):
    """Kubeflow-compatible run policy."""

    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 3
    """Restarts of the whole gang (from the latest checkpoint) before the job fails."""
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    """Seconds the job may run, counted from its start; past it the job fails with reason
    DeadlineExceeded. Unset: no limit."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
    """Seconds after the job succeeds or fails before the TrainingJob itself is deleted (its
    model artifact stays). Unset: kept forever."""
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    """Which workloads are removed once the job finished: Running (the default) removes the ones
    still running and keeps the ended ones for their logs; All removes every one; None keeps all."""
    suspend: bool = False
    """true stops the workers (status Suspended) without failing the job; setting it back to
    false starts them again from the newest checkpoint."""
    gang_timeout_seconds: Annotated[int, Field(ge=5, le=86400)] = 300
    """A worker not ready within this fails the job instead of hanging."""


class OutputSpec(ApiModel):
    """Where the trained model goes."""

    uri: Uri
    """Base URI of model artifacts: each generation of the spec writes <uri>/<name>-g<generation>
    (the model version), with the weights, the preprocessing and the metrics."""


class TrainingJobSpec(Kind):
    """Train a torch model on N data-parallel workers."""

    INFO: ClassVar[KindInfo] = KindInfo(
        kind="TrainingJob",
        plural="trainingjobs",
        singular="trainingjob",
        short_names=["gtj"],
        printer_columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            *ready_column(),
            {"name": "Workers", "type": "integer", "jsonPath": ".spec.workers"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent"},
            {"name": "Val Metric", "type": "number", "jsonPath": ".status.metrics.validation"},
            {"name": "Model", "type": "string", "jsonPath": ".status.model.version", "priority": 1},
            age_column(),
        ],
    )

    dataset: DatasetSpec
    model: ModelSpec = ModelSpec(architecture="mlp")
    """What is trained; default the built-in mlp for binary classification."""
    hyperparameters: Hyperparameters = Hyperparameters()
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    """Data-parallel worker processes (pods on Kubernetes), each training on its shard of the
    rows, gradients averaged by allreduce; default 2."""
    resources: Resources = Resources(cpu="1", memory="2Gi")
    """Resources of each worker; default 1 CPU and 2Gi of memory."""
    backend: Literal["horovod", "ddp"] = "horovod"
    """How workers average gradients: horovod (the default; ring-allreduce over gloo on CPU,
    NCCL on GPU) or ddp (torch DistributedDataParallel)."""
    checkpoint: CheckpointSpec = CheckpointSpec()
    run_policy: RunPolicy = RunPolicy()
    """Restarts, deadline, cleanup and suspension of the job (as Kubeflow's runPolicy)."""
    output: OutputSpec


class Progress(ApiModel):
    """How far training is, as rank 0 last reported it."""

    model_config = ConfigDict(frozen=False)

    epoch: int | None = None
    """The epoch being trained, counted from 1."""
    step: int | None = None
    """Optimizer steps done so far (global, the same on every worker)."""
    total_steps: int | None = None
    """Optimizer steps the whole job takes (epochs times steps per epoch)."""
    percent: str | None = None
    """step / totalSteps as a percentage, e.g. "42%"."""
    eta_seconds: float | None = None
    """Estimated seconds until training ends, from the recent step rate."""


class ReplicaStatus(ApiModel):
    """Processes (pods) of one role, counted by state."""

    model_config = ConfigDict(frozen=False)

    active: int = 0
    """Replicas running or starting."""
    succeeded: int = 0
    """Replicas that exited successfully."""
    failed: int = 0
    """Replica failures seen (each may have been restarted)."""


class ModelRef(ApiModel):
    """The model artifact this job produced."""

    model_config = ConfigDict(frozen=False)

    uri: str
    """Where the artifact is: <spec.output.uri>/<version>."""
    version: str | None = None
    """The model version, <name>-g<generation>: a spec change trains a new version."""
    features: Annotated[list[str], Field(max_length=1024)] = []
    """The model's input columns, as the trainer used them: what a request to a model server
    serving it must carry (or its feature lookup must supply)."""


class DatasetRef(ApiModel):
    """Where a run's training data is, and which version of it."""

    model_config = ConfigDict(frozen=False)

    uri: str
    """The Parquet files read."""
    version: str | None = None
    """A FeatureJob's offline version (absent for a lake or a path)."""
    feature_job: str | None = None
    """The FeatureJob it comes from."""


class EpochMetrics(ApiModel):
    """The validation metrics after one epoch."""

    model_config = ConfigDict(frozen=False)

    epoch: int
    """The epoch, counted from 1."""
    metrics: dict[str, float] = {}
    """As status.metrics, after this epoch (validation, valLoss, trainLoss...)."""


class TrainingJobStatus(BaseStatus):
    """The job's phase and conditions, its workers, progress, metrics and model."""

    replica_statuses: dict[str, ReplicaStatus] = {}
    """Replicas by role (launcher, worker), counted by state."""
    progress: Progress | None = None
    restarts: Annotated[int, Field(ge=0)] | None = None
    """Restarts of the whole gang so far (at most runPolicy.backoffLimit)."""
    resumed_from_step: Annotated[int, Field(ge=0)] | None = None
    """The checkpoint step the current run resumed from, if it resumed."""
    metrics: dict[str, float] = {}
    """Latest training and validation metrics (train_loss, val_loss, val_accuracy, val_rmse...),
    and validation: the task's main validation metric."""
    history: Annotated[list[EpochMetrics], Field(max_length=10000)] | None = None
    """The metrics after each epoch so far, oldest first (what early stopping compares)."""
    samples_per_second: float | None = None
    """Training throughput over all workers, in rows per second."""
    model: ModelRef | None = None
    dataset: DatasetRef | None = None
    """The data this generation's run trains on (fixed when the run starts)."""
    start_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """When the workers were first started for this generation."""
    completion_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """When the job succeeded or failed."""
    ended_workloads: list[str] | None = None
    """Workloads that ran to completion (kept by cleanPodPolicy Running)."""
    failure_message: str | None = None
    """Why the job failed, when it did (also the Failed condition's message)."""
    gang_pending_since: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """Since when not every worker could start (the gang timeout counts from here)."""


TrainingJobSpec.STATUS = TrainingJobStatus
