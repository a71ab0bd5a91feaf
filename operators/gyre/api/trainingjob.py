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
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    time_field: FieldName | None = None
    """For method time: rows after the cutoff validate."""
    seed: Annotated[int, Field(ge=0)] = 0


class DatasetSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra=validations(exactly_one("featureJob", "stream", "path")))

    feature_job: DnsName | None = None
    """A FeatureJob in this namespace; its offline store is read."""
    stream: DnsName | None = None
    """A Stream in this namespace; its lake is read."""
    path: Uri | None = None
    label: FieldName
    features: Annotated[list[FieldName], Field(max_length=1024)] = []
    """Input columns; empty means every column but the label and ignored ones."""
    ignore: Annotated[list[FieldName], Field(max_length=1024)] = []
    """Columns never used as features (ids, free text)."""
    split: SplitSpec = SplitSpec()


class ModelSpec(ApiModel):
    model_config = ConfigDict(json_schema_extra=validations(exactly_one("architecture", "module")))

    architecture: Literal["mlp"] | None = None
    """A built-in model."""
    module: (
        Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$", max_length=256)]
        | None
    ) = None
    """User code: "package.module:build_model"."""
    task: Literal["binary", "regression"] = "binary"
    params: Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE)] = {}
    """Passed to the model builder; the built-in mlp takes hidden (layer widths) and dropout."""


class Hyperparameters(ApiModel):
    epochs: Annotated[int, Field(ge=1, le=10000)] = 5
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 64
    """Per worker."""
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 0.001
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    seed: Annotated[int, Field(ge=0)] = 0


class CheckpointSpec(ApiModel):
    every_steps: Annotated[int, Field(ge=1, le=1000000)] = 100
    uri: Uri | None = None
    """Defaults to <output>/checkpoints."""
    keep: Annotated[int, Field(ge=1, le=100)] = 3


class RunPolicy(ApiModel):
    """Kubeflow-compatible run policy."""

    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 3
    """Restarts of the whole gang (from the latest checkpoint) before the job fails."""
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    suspend: bool = False
    gang_timeout_seconds: Annotated[int, Field(ge=5, le=86400)] = 300
    """A worker not ready within this fails the job instead of hanging."""


class OutputSpec(ApiModel):
    uri: Uri


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
    hyperparameters: Hyperparameters = Hyperparameters()
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    resources: Resources = Resources(cpu="1", memory="2Gi")
    backend: Literal["horovod", "ddp"] = "horovod"
    checkpoint: CheckpointSpec = CheckpointSpec()
    run_policy: RunPolicy = RunPolicy()
    output: OutputSpec


class Progress(ApiModel):
    model_config = ConfigDict(frozen=False)

    epoch: int | None = None
    step: int | None = None
    total_steps: int | None = None
    percent: str | None = None
    eta_seconds: float | None = None


class ReplicaStatus(ApiModel):
    model_config = ConfigDict(frozen=False)

    active: int = 0
    succeeded: int = 0
    failed: int = 0


class ModelRef(ApiModel):
    model_config = ConfigDict(frozen=False)

    uri: str
    version: str | None = None


class TrainingJobStatus(BaseStatus):
    replica_statuses: dict[str, ReplicaStatus] = {}
    progress: Progress | None = None
    restarts: Annotated[int, Field(ge=0)] | None = None
    resumed_from_step: Annotated[int, Field(ge=0)] | None = None
    metrics: dict[str, float] = {}
    """Latest training and validation metrics."""
    samples_per_second: float | None = None
    model: ModelRef | None = None
    start_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    completion_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    ended_workloads: list[str] | None = None
    """Workloads that ran to completion (kept by cleanPodPolicy Running)."""
    failure_message: str | None = None
    gang_pending_since: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """Since when not every worker could start (the gang timeout counts from here)."""


TrainingJobSpec.STATUS = TrainingJobStatus
