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
    """The model to serve: a TrainingJob's artifact, an Experiment's best, or one at a URI (set
    exactly one)."""

    model_config = ConfigDict(json_schema_extra=validations(exactly_one("trainingJob", "experiment", "uri")))

    training_job: DnsName | None = None
    """Serve this TrainingJob's latest artifact."""
    experiment: DnsName | None = None
    """Serve the model of this Experiment's best trial (its status.model: a search with one
    objective), once the Experiment is Ready; a later, better result is rolled out."""
    uri: Uri | None = None
    """Serve an artifact at a URI."""


class FeatureLookup(ApiModel):
    """Online feature lookup: requests carry an entity id, the server adds its features."""

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
    """Fewest model server replicas; 0 scales to zero when idle. Default 1."""
    max_replicas: Annotated[int, Field(ge=1, le=100)] = 3
    """Most model server replicas; default 3."""
    metric: Literal["concurrency", "rps", "cpu"] = "concurrency"
    """What scaling follows: concurrency (in-flight requests per replica, the default), rps
    (requests per second per replica) or cpu (utilisation percent)."""
    target: Annotated[float, Field(gt=0)] = 10
    """The metric's value per replica the autoscaler aims for; default 10."""


class Batching(ApiModel):
    """Server-side batching: concurrent requests are grouped into one model call."""

    enabled: bool = True
    """false calls the model once per request; default true."""
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    """Most requests in one model call; default 32."""
    max_latency_ms: Annotated[int, Field(ge=1, le=10000)] = 5
    """Longest a request waits for a batch to fill, in milliseconds; default 5."""


class CircuitBreaker(ApiModel):
    """Stops calling a failing model for a while and answers with the fallback instead."""

    failure_threshold: Annotated[int, Field(ge=1, le=1000)] = 5
    """Consecutive failures or deadline misses that open the breaker; default 5."""
    reset_timeout: Duration = "30s"
    """How long the breaker stays open before a trial request; default 30s."""


class Fallback(ApiModel):
    """What a request gets when the model is late or failing."""

    deadline_ms: Annotated[int, Field(ge=1, le=60000)] = 100
    """Longest a prediction may take, in milliseconds (feature lookup included); past it the
    default response is answered. Default 100."""
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    default_response: Annotated[dict[str, Any], Field(json_schema_extra=PRESERVE)] | None = None
    """Answered when the model misses its deadline or the breaker is open."""


class CanarySpec(ApiModel):
    """A second model that answers a share of the requests."""

    model: ModelSource
    """The canary model."""
    percent: Annotated[int, Field(ge=0, le=100)] = 10
    """Share of requests the canary answers, in percent; the rest go to spec.model. Default 10."""


class ShadowSpec(ApiModel):
    """A second model that sees a copy of the requests; its answers are only logged."""

    model: ModelSource
    """The shadow model."""
    percent: Annotated[int, Field(ge=0, le=100)] = 100
    """Share of requests mirrored; shadow answers are logged, never returned."""


class TrafficSpec(ApiModel):
    """Traffic splitting between spec.model and other models."""

    canary: CanarySpec | None = None
    shadow: ShadowSpec | None = None


class LoggingSpec(ApiModel):
    """Prediction logging to a Stream (for monitoring, feedback and retraining)."""

    stream: DnsName
    """Predictions (and inputs) are sent to this Stream."""
    sample_rate: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Share of predictions logged, between 0 and 1; default 1 (all)."""


class RetrainTrigger(ApiModel):
    """Retraining when the served inputs drift."""

    training_job: DnsName
    """Re-run this TrainingJob when drift crosses the threshold."""
    cooldown: Duration = "6h"
    """Least time between two retrains; default 6h."""


class DriftSpec(ApiModel):
    """Drift of the served inputs against the model's training data."""

    metric: Literal["psi", "ks"] = "psi"
    """How drift is measured per feature: psi (population stability index, the default) or
    ks (Kolmogorov-Smirnov statistic)."""
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.2
    """Drift score above which the service reports Degraded (and retrains, if set); default 0.2."""
    window: Duration = "1h"
    """Span of recent requests each drift score covers; default 1h."""
    retrain: RetrainTrigger | None = None


class MonitoringSpec(ApiModel):
    """Monitoring of the served model beyond its Prometheus metrics."""

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
    model_name: DnsName | None = None
    """The model's name in the prediction paths (/v1/models/<modelName>:predict); default the
    InferenceService's name. The variants of an online Experiment serve one name."""
    protocol: Literal["v1", "v2"] = "v2"
    """Inference protocol: v2 (the Open Inference Protocol, the default) or v1 (KServe's
    :predict)."""
    features: FeatureLookup | None = None
    replicas: Annotated[int, Field(ge=0, le=100)] | None = None
    """A fixed number of model server replicas (unset: 1, or autoscaling if set); not both."""
    autoscaling: Autoscaling | None = None
    """Scale replicas with load between minReplicas and maxReplicas; not with replicas."""
    resources: Resources = Resources(cpu="1", memory="1Gi")
    """Resources of each model server replica; default 1 CPU and 1Gi of memory."""
    batching: Batching = Batching()
    fallback: Fallback = Fallback()
    traffic: TrafficSpec | None = None
    logging: LoggingSpec | None = None
    monitoring: MonitoringSpec | None = None


class VariantStatus(ApiModel):
    """One model the service serves: stable (spec.model), canary or shadow."""

    name: Literal["stable", "canary", "shadow"]
    """Which of the service's models this is."""
    model_version: str | None = None
    """The version its model server loaded."""
    ready_replicas: Annotated[int, Field(ge=0)] = 0
    """Its model server replicas ready to answer."""
    requests: Annotated[int, Field(ge=0)] = 0
    """Requests the router sent it (mirrored ones, for the shadow) since the router started."""
    dropped: Annotated[int, Field(ge=0)] = 0
    """Shadow only: mirrors the router did not send because too many were in flight (a slow
    shadow never slows the service down)."""
    compared: Annotated[int, Field(ge=0)] | None = None
    """Shadow only: its answers compared with the answer the client got (both predictions,
    neither a fallback)."""
    different: Annotated[int, Field(ge=0)] | None = None
    """Shadow only: compared answers whose predictions differ (by more than 1e-6)."""
    max_difference: float | None = None
    """Shadow only: the largest absolute difference between its predictions and the client's."""
    latency_p50_ms: float | None = None
    """Median prediction latency of its recent requests, in milliseconds."""
    latency_p99_ms: float | None = None
    """99th percentile of its recent prediction latency, in milliseconds."""
    fallback_rate: float | None = None
    """Share of its recent requests answered by the fallback, between 0 and 1."""
    breaker: Literal["closed", "open", "half_open"] | None = None
    """Its circuit breaker: closed (calling the model), open (answering the fallback) or
    half_open (trying the model again)."""
    drift: dict[str, float] | None = None
    """Per feature drift score of its live inputs against the training sample, over
    monitoring.drift.window (unset: not monitored, or too few requests yet)."""


class InferenceServiceStatus(BaseStatus):
    """The service's conditions, address, models and serving figures."""

    url: str | None = None
    """Where clients send prediction requests (the router; add /v1/models/<name>:predict or
    /v2/models/<name>/infer)."""
    model_version: str | None = None
    """Version of the model spec.model serves."""
    canary_model_version: str | None = None
    """Version of the canary model, when there is one."""
    shadow_model_version: str | None = None
    """Version of the shadow model, when there is one."""
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Model server replicas of spec.model ready to answer."""
    traffic: dict[str, int] = {}
    """Configured share of requests per model (stable, canary), in percent."""
    measured_traffic: dict[str, float] = {}
    """Measured share of requests per model (stable, canary) since the router started, in
    percent."""
    requests: Annotated[int, Field(ge=0)] | None = None
    """Requests the router answered since it started."""
    requests_per_second: float | None = None
    """Prediction requests per second, recently."""
    latency_p50_ms: float | None = None
    """Median prediction latency of spec.model's recent requests, in milliseconds."""
    latency_p99_ms: float | None = None
    """99th percentile of prediction latency, in milliseconds."""
    fallback_rate: float | None = None
    """Share of requests answered by the fallback (deadline or breaker), between 0 and 1."""
    breaker: Literal["closed", "open", "half_open"] | None = None
    """spec.model's circuit breaker: closed, open or half_open."""
    variants: list[VariantStatus] = []
    """Figures per model: stable, canary, shadow."""
    sampled_at: str | None = None
    """When the figures were read (RFC 3339); requestsPerSecond is over the time since the
    previous reading."""
    drift_score: float | None = None
    """The largest per feature drift score of spec.model's live inputs (monitoring.drift)."""
    drifted_features: list[str] | None = None
    """Features whose drift score is past monitoring.drift.threshold."""


InferenceServiceSpec.STATUS = InferenceServiceStatus
