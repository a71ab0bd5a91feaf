"""FeatureJob → the Spark run (`gyre.pipelines.features`) and, unless the spec names one, a Redis.

The run is a batch workload whose config names everything the job needs: the source (a
Stream's lake, with the Stream's schema so expressions are checked before any data exists, or
Parquet files), the features, labels and spine with their durations in seconds, the offline
store and the online store's key prefix and TTL. On the local runtime it runs Spark as
``local[N]``, N = executors x executor CPUs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gyre.api.featurejob import FeatureJobSpec
from gyre.core.durations import parse_duration
from gyre.core.workload import (
    ConfigDirRef,
    EndpointRef,
    KubernetesContainer,
    Port,
    Readiness,
    Resources,
    RestartPolicy,
    Workload,
    WorkloadKind,
)
from gyre.pipelines.features.config import (
    REDIS_ENV,
    DriftConfig,
    ExpectationConfig,
    FeatureConfig,
    FeatureJobConfig,
    LabelConfig,
    OnlineConfig,
    SourceConfig,
    SourceField,
    SpineConfig,
    key_prefix,
)

RUN = "spark"
REDIS = "redis"
CONFIG_FILE = "features.json"
STATUS_PORT = 8090
REDIS_PORT = 6379
REDIS_IMAGE = "redis:7.0"
# The run keeps serving its final /status this long, until the controller has read it.
STATUS_LINGER_S = 60.0
RUN_BACKOFF_LIMIT = 2


@dataclass(frozen=True)
class ResolvedSource:
    """Where the events are, as the controller resolved it."""

    kind: str  # "lake" (a Stream's) or "parquet"
    uri: str
    fields: Sequence[tuple[str, str]] = ()  # (name, type) when known before any data


def local_cores(spec: FeatureJobSpec) -> int:
    cpu = spec.spark.executor.cpu or "1"
    cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, spec.spark.executors * math.ceil(cores))


def spark_memory(quantity: str | None) -> str:
    """A Kubernetes memory quantity as a JVM size ("1Gi" → "1024m")."""
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T)?", quantity or "1Gi")
    if not m:
        return "1g"
    scale = {
        "Ki": 1 / 1024,
        "k": 1 / 1024,
        "Mi": 1,
        "M": 1,
        "Gi": 1024,
        "G": 1024,
        "Ti": 1 << 20,
        "T": 1 << 20,
    }
    mib = float(m.group(1)) * scale.get(m.group(2) or "", 1 / (1 << 20))
    return f"{max(256, math.ceil(mib))}m"


def _seconds(text: str | None) -> float | None:
    return None if text is None else parse_duration(text)


def build_job_config(
    spec: FeatureJobSpec, namespace: str, name: str, generation: int, source: ResolvedSource, run: int = 1
) -> FeatureJobConfig:
    online = None
    if spec.online is not None and spec.online.enabled:
        online = OnlineConfig(
            redis_url=spec.online.redis_url,
            key_prefix=key_prefix(namespace, name),
            ttl_s=parse_duration(spec.online.ttl),
        )
    if spec.spine.path:
        spine = SpineConfig(kind="path", path=spec.spine.path)
    elif spec.spine.every:
        spine = SpineConfig(kind="every", every_s=parse_duration(spec.spine.every))
    else:
        spine = SpineConfig()
    return FeatureJobConfig(
        name=name,
        generation=generation,
        run=run,
        source=SourceConfig(
            kind="lake" if source.kind == "lake" else "parquet",
            uri=source.uri,
            fields=tuple(SourceField(name=n, type=t) for n, t in source.fields),
        ),
        entity=spec.entity,
        timestamp_field=spec.timestamp_field,
        features=tuple(
            FeatureConfig(
                name=f.name,
                aggregation=f.aggregation,
                field=f.field,
                window_s=_seconds(f.window),
                filter=f.filter,
                sql=f.sql,
            )
            for f in spec.features
        ),
        labels=tuple(
            LabelConfig(name=lab.name, expression=lab.expression, horizon_s=parse_duration(lab.horizon))
            for lab in spec.labels
        ),
        spine=spine,
        offline_uri=spec.offline.uri,
        keep_versions=spec.offline.keep,
        online=online,
        expectations=tuple(
            ExpectationConfig(
                column=e.column,
                not_null=e.not_null,
                min=e.min,
                max=e.max,
                allowed_values=tuple(e.allowed_values) if e.allowed_values is not None else None,
            )
            for e in (spec.validation.expectations if spec.validation else [])
        ),
        fail_on_violation=spec.validation.fail_on_violation if spec.validation else True,
        drift=DriftConfig(metric=baseline.metric, threshold=baseline.threshold, baseline_uri=baseline.uri)
        if (baseline := spec.validation.drift_baseline if spec.validation else None) is not None
        else None,
        master=f"local[{local_cores(spec)}]",
        spark_conf={
            "spark.sql.shuffle.partitions": str(max(2, local_cores(spec) * 2)),
            # local mode: the driver listens on loopback only
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.sql.session.timeZone": "UTC",
            **spec.spark.conf,
        },
        driver_memory=spark_memory(spec.spark.driver.memory),
        status_linger_s=STATUS_LINGER_S,
    )


def wants_redis(spec: FeatureJobSpec) -> bool:
    return spec.online is not None and spec.online.enabled and not spec.online.redis_url


def build_redis() -> Workload:
    """A Redis for the online store: Debian's redis-server locally, the redis image on
    Kubernetes; no persistence (the values are materialized again by the next run)."""
    flags = ("--save", "", "--appendonly", "no")
    return Workload(
        name=REDIS,
        role="online-store",
        kind=WorkloadKind.SERVICE,
        command=("redis-server", "--port", "$(GYRE_PORT_REDIS)", "--bind", "127.0.0.1", *flags),
        ports=(Port("redis", REDIS_PORT),),
        resources=Resources(cpu="250m", memory="256Mi"),
        readiness=Readiness(port="redis"),
        on_kubernetes=KubernetesContainer(
            image=REDIS_IMAGE,
            command=("redis-server", "--port", str(REDIS_PORT), "--protected-mode", "no", *flags),
        ),
    )


def build_run(spec: FeatureJobSpec, config: FeatureJobConfig) -> Workload:
    env: dict[str, str | EndpointRef | ConfigDirRef] = {"GYRE_CONFIG": ConfigDirRef(CONFIG_FILE)}
    if wants_redis(spec):
        env[REDIS_ENV] = EndpointRef("redis", REDIS)
    return Workload(
        name=RUN,
        role="spark-driver",
        kind=WorkloadKind.BATCH,
        command=("python", "-m", "gyre.pipelines.features"),
        env=env,
        ports=(Port("status", STATUS_PORT),),
        resources=Resources(cpu=spec.spark.driver.cpu, memory=spec.spark.driver.memory),
        restart_policy=RestartPolicy.ON_FAILURE,
        backoff_limit=RUN_BACKOFF_LIMIT,
        config_files={CONFIG_FILE: config.to_json()},
        status_port="status",
    )


def build_featurejob(
    spec: FeatureJobSpec, namespace: str, name: str, generation: int, source: ResolvedSource, run: int = 1
) -> list[Workload]:
    """The run numbered ``run`` (a new number replaces a finished run with a new one), and the
    Redis it writes to when the spec names none."""
    config = build_job_config(spec, namespace, name, generation, source, run)
    out = [build_redis()] if wants_redis(spec) else []
    return [*out, build_run(spec, config)]
