"""`InferenceService`: a model server with feature lookup, batching, fallback, canary/shadow and drift."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from gyre.api._base import (
    ApiModel,
    BaseStatus,
    DnsName,
    Duration,
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


class ModelSource(ApiModel):
    model_config = ConfigDict(json_schema_extra=validations(exactly_one("trainingJob", "uri")))

    training_job: DnsName | None = None
    """Serve this TrainingJob's latest artifact."""
    uri: Uri | None = None
    """Serve an artifact at a URI."""


class FeatureLookup(ApiModel):
    feature_job: DnsName
    """Online features come from this FeatureJob's online store."""
    entity_key: FieldName
    """Request field holding the entity id."""


class Autoscaling(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "minReplicas cannot exceed maxReplicas",
                ".minReplicas",
            ),
        )
    )

    min_replicas: Annotated[int, Field(ge=0, le=100)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=100)] = 3
    metric: Literal["concurrency", "rps", "cpu"] = "concurrency"
    target: Annotated[float, Field(gt=0)] = 10


class Batching(ApiModel):
    enabled: bool = True
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    max_latency_ms: Annotated[int, Field(ge=1, le=10000)] = 5


class CircuitBreaker(ApiModel):
    failure_threshold: Annotated[int, Field(ge=1, le=1000)] = 5
    reset_timeout: Duration = "30s"


class Fallback(ApiModel):
    deadline_ms: Annotated[int, Field(ge=1, le=60000)] = 100
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    default_response: Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE)] | None = None
    """Answered when the model misses its deadline or the breaker is open."""


class CanarySpec(ApiModel):
    model: ModelSource
    percent: Annotated[int, Field(ge=0, le=100)] = 10


class ShadowSpec(ApiModel):
    model: ModelSource
    percent: Annotated[int, Field(ge=0, le=100)] = 100
    """Share of requests mirrored; shadow answers are logged, never returned."""


class TrafficSpec(ApiModel):
    canary: CanarySpec | None = None
    shadow: ShadowSpec | None = None


class LoggingSpec(ApiModel):
    stream: DnsName
    """Predictions (and inputs) are sent to this Stream."""
    sample_rate: Annotated[float, Field(ge=0, le=1)] = 1.0


class RetrainTrigger(ApiModel):
    training_job: DnsName
    """Re-run this TrainingJob when drift crosses the threshold."""
    cooldown: Duration = "6h"


class DriftSpec(ApiModel):
    metric: Literal["psi", "ks"] = "psi"
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.2
    window: Duration = "1h"
    retrain: RetrainTrigger | None = None


class MonitoringSpec(ApiModel):
    drift: DriftSpec | None = None


class InferenceServiceSpec(Kind):
    """A model server for a TrainingJob's artifact."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.autoscaling) || !has(self.replicas)",
                "set either replicas or autoscaling, not both",
            ),
        )
    )

    INFO: ClassVar[KindInfo] = KindInfo(
        kind="InferenceService",
        plural="inferenceservices",
        singular="inferenceservice",
        short_names=["gisvc", "ginf"],
        printer_columns=[
            *ready_column(),
            {"name": "URL", "type": "string", "jsonPath": ".status.url"},
            {"name": "Model", "type": "string", "jsonPath": ".status.modelVersion"},
            {"name": "Canary%", "type": "integer", "jsonPath": ".spec.traffic.canary.percent"},
            {"name": "P99ms", "type": "number", "jsonPath": ".status.latencyP99Ms", "priority": 1},
            age_column(),
        ],
    )

    model: ModelSource
    protocol: Literal["v1", "v2"] = "v2"
    features: FeatureLookup | None = None
    replicas: Annotated[int, Field(ge=0, le=100)] | None = None
    autoscaling: Autoscaling | None = None
    resources: Resources = Resources(cpu="1", memory="1Gi")
    batching: Batching = Batching()
    fallback: Fallback = Fallback()
    traffic: TrafficSpec | None = None
    logging: LoggingSpec | None = None
    monitoring: MonitoringSpec | None = None


class InferenceServiceStatus(BaseStatus):
    url: str | None = None
    model_version: str | None = None
    canary_model_version: str | None = None
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    traffic: dict[str, int] = {}
    requests_per_second: float | None = None
    latency_p99_ms: float | None = None
    fallback_rate: float | None = None
    drift_score: float | None = None


InferenceServiceSpec.STATUS = InferenceServiceStatus
