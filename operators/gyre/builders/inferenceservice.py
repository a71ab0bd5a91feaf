"""InferenceService → model servers (`gyre.pipelines.modelserver`) behind a router.

Each model the service serves is a SERVICE workload of its own: ``predictor`` (spec.model),
``canary`` and ``shadow`` (spec.traffic). In front of them is the route's router workload
(`gyre.builders.route`): it splits requests between the predictor and the canary by
``traffic.canary.percent``, keeps a request key (the ``X-Gyre-Key`` header) on one model, and
mirrors ``traffic.shadow.percent`` of the requests to the shadow, whose answers are dropped.
The router is the service's address even without a canary, so adding one, changing its share
or promoting it changes weights in place (the router rereads them) instead of the address.

Every model server is named after the service (or its ``modelName``), so clients use the same paths
(``/v1/models/<name>:predict``, ``/v2/models/<name>/infer``) whichever model answers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gyre.api.inferenceservice import InferenceServiceSpec
from gyre.builders.route import Route, RouteBackend, RouteShadow, build_route
from gyre.core.durations import parse_duration
from gyre.core.workload import Autoscale, ConfigDirRef, Port, Readiness, Resources, Workload, WorkloadKind
from gyre.pipelines._common.env import CONFIG_ENV, CONFIG_FILE_NAME
from gyre.pipelines.modelserver.config import (
    BatchingConfig,
    DriftConfig,
    FallbackConfig,
    FeaturesConfig,
    LoggingConfig,
    ModelServerConfig,
)

PREDICTOR = "predictor"
CANARY = "canary"
SHADOW = "shadow"
ROUTER = "router"
WORKLOAD_OF = {"stable": PREDICTOR, "canary": CANARY, "shadow": SHADOW}
ROLE = "predictor"
HTTP_PORT = 8080
STICKY_HEADER = "X-Gyre-Key"
READY_PATH = "/v2/health/ready"


@dataclass(frozen=True)
class OnlineStoreRef:
    """Where spec.features' FeatureJob keeps its online values: the Redis URL and the keys'
    prefix (a key is the prefix and the entity), as the FeatureJob publishes them."""

    url: str
    key_prefix: str


@dataclass(frozen=True)
class Artifacts:
    """Where each model's artifact is (None: that model is not served), and the online store
    spec.features reads (None: no feature lookup)."""

    stable: str
    canary: str | None = None
    shadow: str | None = None
    online_store: OnlineStoreRef | None = None
    prediction_log: tuple[str, str] | None = None  # spec.logging's Stream: bootstrap servers, topic


def replicas(spec: InferenceServiceSpec) -> int:
    """Model server replicas: spec.replicas, else autoscaling's minimum (at least one, so
    the service answers), else 1."""
    if spec.replicas is not None:
        return spec.replicas
    if spec.autoscaling is not None:
        return max(spec.autoscaling.min_replicas, 1)
    return 1


def build_server_config(
    spec: InferenceServiceSpec,
    name: str,
    variant: str,
    uri: str,
    online_store: OnlineStoreRef | None = None,
    prediction_log: tuple[str, str] | None = None,
) -> ModelServerConfig:
    b, f = spec.batching, spec.fallback
    watch = spec.monitoring.drift if spec.monitoring else None
    drift = DriftConfig(metric=watch.metric, window_s=parse_duration(watch.window)) if watch else None
    logging = None
    if spec.logging is not None and prediction_log is not None:
        logging = LoggingConfig(
            bootstrap_servers=prediction_log[0], topic=prediction_log[1], sample_rate=spec.logging.sample_rate
        )
    features = None
    if spec.features is not None and online_store is not None:
        features = FeaturesConfig(
            redis_url=online_store.url,
            entity_key=spec.features.entity_key,
            key_prefix=online_store.key_prefix,
        )
    return ModelServerConfig(
        name=spec.model_name or name,
        artifact=uri,
        variant=variant,
        batching=BatchingConfig(
            enabled=b.enabled, max_batch_size=b.max_batch_size, max_latency_ms=float(b.max_latency_ms)
        ),
        fallback=FallbackConfig(
            deadline_ms=float(f.deadline_ms),
            failure_threshold=f.circuit_breaker.failure_threshold,
            reset_timeout_s=parse_duration(f.circuit_breaker.reset_timeout),
            default_response=f.default_response,
        ),
        features=features,
        logging=logging,
        drift=drift,
        port=HTTP_PORT,
    )


# What each spec.autoscaling.metric follows on Kubernetes: cpu, a resource; the others, per-pod
# metrics of the custom metrics API as prometheus-adapter names them by default (a counter's
# ``_total`` becomes ``_per_second``).
AUTOSCALE_METRICS = {
    "cpu": Autoscale(0, 0, 0, resource="cpu"),
    "concurrency": Autoscale(0, 0, 0, pods_metric="gyre_model_inflight_requests"),
    "rps": Autoscale(0, 0, 0, pods_metric="gyre_model_requests_per_second"),
}


def autoscale(spec: InferenceServiceSpec) -> Autoscale | None:
    """How a model server's replicas scale: spec.autoscaling, unless spec.replicas fixes them."""
    a = spec.autoscaling
    if a is None or spec.replicas is not None:
        return None
    return dataclasses.replace(
        AUTOSCALE_METRICS[a.metric], min_replicas=a.min_replicas, max_replicas=a.max_replicas, target=a.target
    )


def build_model_server(spec: InferenceServiceSpec, name: str, variant: str, artifacts: Artifacts) -> Workload:
    uri = {"stable": artifacts.stable, "canary": artifacts.canary, "shadow": artifacts.shadow}[variant]
    assert uri is not None
    config = build_server_config(spec, name, variant, uri, artifacts.online_store, artifacts.prediction_log)
    r = spec.resources
    return Workload(
        name=WORKLOAD_OF[variant],
        role=ROLE,
        kind=WorkloadKind.SERVICE,
        command=("python", "-m", "gyre.pipelines.modelserver"),
        replicas=replicas(spec),
        env={CONFIG_ENV: ConfigDirRef(CONFIG_FILE_NAME)},
        ports=(Port("http", HTTP_PORT),),
        resources=Resources(cpu=r.cpu, memory=r.memory, gpu=r.gpu),
        readiness=Readiness(port="http", http_path=READY_PATH, period_s=1.0),
        config_files={CONFIG_FILE_NAME: config.to_json()},
        status_port="http",
        labels={"gyre.dev/variant": variant},
        autoscale=autoscale(spec),
    )


def canary_percent(spec: InferenceServiceSpec, artifacts: Artifacts) -> int:
    canary = spec.traffic.canary if spec.traffic else None
    return canary.percent if canary is not None and artifacts.canary else 0


def configured_traffic(spec: InferenceServiceSpec, artifacts: Artifacts) -> dict[str, int]:
    p = canary_percent(spec, artifacts)
    return {"stable": 100 - p, "canary": p} if artifacts.canary else {"stable": 100}


def build_router(spec: InferenceServiceSpec, artifacts: Artifacts) -> Workload:
    p = canary_percent(spec, artifacts)
    backends = [RouteBackend(PREDICTOR, "http", float(100 - p))]
    if artifacts.canary:
        backends.append(RouteBackend(CANARY, "http", float(p)))
    shadow = spec.traffic.shadow if spec.traffic else None
    return build_route(
        Route(
            name=ROUTER,
            backends=tuple(backends),
            sticky_header=STICKY_HEADER,
            shadow=RouteShadow(SHADOW, "http", float(shadow.percent))
            if shadow is not None and artifacts.shadow
            else None,
            timeout_s=max(spec.fallback.deadline_ms / 1000.0 * 10, 5.0),
        )
    )


def build_inferenceservice(spec: InferenceServiceSpec, name: str, artifacts: Artifacts) -> list[Workload]:
    """The model servers and the router, in a fixed order."""
    servers = [build_model_server(spec, name, "stable", artifacts)]
    if artifacts.canary:
        servers.append(build_model_server(spec, name, "canary", artifacts))
    if artifacts.shadow:
        servers.append(build_model_server(spec, name, "shadow", artifacts))
    return [*servers, build_router(spec, artifacts)]
