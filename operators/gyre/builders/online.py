"""An online Experiment's workloads: a router across its InferenceServices and the analysis.

Pure. The router (`gyre.builders.route`) sends each request to one variant's InferenceService
by the allocation in the Experiment's status, keeps a user (the sticky header's key) on one
variant by a hash of the experiment and the key, and logs every assignment with the prediction
to the experiment's assignments topic. The analysis workload (`gyre.pipelines.abtest`) reads
that topic and the feedback Stream's, joins outcomes to assignments, and serves on ``/status``
the figures, the policy's allocation and the decision; the controller writes that allocation
back into the router's configuration, which the router rereads without a restart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from gyre.api.experiment import OnlineSpec
from gyre.builders.route import Route, RouteBackend, build_route
from gyre.core.topics import TopicSpec
from gyre.core.workload import ConfigDirRef, EnvValue, Port, Readiness, Workload, WorkloadKind
from gyre.pipelines._common.env import CONFIG_ENV, CONFIG_FILE_NAME

ROUTER = "router"
ANALYSIS = "analysis"
ANALYSIS_ROLE = "analysis"
METRICS_PORT = 9090
ASSIGNMENTS_RETENTION_MS = 30 * 24 * 3600 * 1000
REWARD = {"conversion": "bernoulli", "continuous": "normal"}


@dataclass(frozen=True)
class TopicRef:
    """A Kafka topic and the brokers that hold it."""

    bootstrap_servers: str
    topic: str


@dataclass(frozen=True)
class OnlineTargets:
    """What the online form runs against, as the referenced objects published it."""

    urls: Mapping[str, str]  # by variant name: its InferenceService's status.url
    feedback: TopicRef  # the feedback Stream's topic
    assignments: TopicRef  # the experiment's own assignments topic (on the feedback cluster)
    feedback_time_field: str | None = None  # the feedback events' time (the Stream's timestampField)


def assignments_topic(namespace: str, name: str) -> TopicSpec:
    """The topic the router logs assignments to; the analysis replays it from the start, so
    it keeps 30 days."""
    return TopicSpec(
        name=f"{namespace}.{name}.assignments", partitions=1, retention_ms=ASSIGNMENTS_RETENTION_MS
    )


def initial_allocation(online: OnlineSpec) -> dict[str, float]:
    """Before any outcome: the fixed weights, or an even split."""
    if online.allocation.policy == "fixed":
        total = float(sum(v.weight or 0 for v in online.variants))
        return {v.name: (v.weight or 0) / total for v in online.variants}
    return {v.name: 1.0 / len(online.variants) for v in online.variants}


def router_allocation(online: OnlineSpec, current: Mapping[str, float] | None) -> dict[str, float]:
    """The allocation the router runs with: ``current`` (the status') when it names every
    variant and gives one a share, else `initial_allocation`."""
    names = [v.name for v in online.variants]
    if current and all(n in current for n in names) and any(current[n] > 0 for n in names):
        return {n: float(current[n]) for n in names}
    return initial_allocation(online)


def build_analysis_config(online: OnlineSpec, experiment: str, targets: OnlineTargets) -> str:
    """The analysis workload's configuration (`gyre.pipelines.abtest.config.AbTestConfig`)."""
    a, alloc = online.analysis, online.allocation
    fixed = alloc.policy == "fixed"
    config = {
        "experiment": experiment,
        "variants": [v.name for v in online.variants],
        "assignments": {
            "bootstrap_servers": targets.assignments.bootstrap_servers,
            "topic": targets.assignments.topic,
        },
        "feedback": {
            "bootstrap_servers": targets.feedback.bootstrap_servers,
            "topic": targets.feedback.topic,
        },
        "metric": a.metric,
        "reward": REWARD[a.reward],
        "request_id_field": online.request_id_field,
        "key_field": online.key_field,
        "timestamp_field": targets.feedback_time_field,
        "attribution_window_s": online.attribution_window_seconds,
        "policy": alloc.policy,
        "epsilon": alloc.epsilon,
        "weights": [float(v.weight or 0) for v in online.variants] if fixed else None,
        "method": a.method,
        "significance": a.significance,
        "min_samples": a.min_samples,
        "mde": a.minimum_detectable_effect,
        "power": a.power,
        "loss_threshold": a.loss_threshold,
        "aa": online.aa,
        "interval_s": min(2.0, alloc.interval_seconds),
        "metrics_port": METRICS_PORT,
    }
    if not fixed:
        config.pop("weights")
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def build_online(
    online: OnlineSpec,
    experiment: str,
    targets: OnlineTargets,
    allocation: Mapping[str, float],
) -> list[Workload]:
    """The router (weights: ``allocation``, by variant) and the analysis workload."""
    backends = tuple(
        RouteBackend(v.name, "http", float(allocation.get(v.name, 0.0)), url=targets.urls[v.name])
        for v in online.variants
    )
    router = build_route(
        Route(
            name=ROUTER,
            backends=backends,
            sticky_header=online.allocation.sticky_header,
            route_key=experiment,
            assignment_log=(targets.assignments.bootstrap_servers, targets.assignments.topic),
        )
    )
    env: dict[str, EnvValue] = {CONFIG_ENV: ConfigDirRef(CONFIG_FILE_NAME)}
    analysis = Workload(
        name=ANALYSIS,
        role=ANALYSIS_ROLE,
        kind=WorkloadKind.SERVICE,
        command=("python", "-m", "gyre.pipelines.abtest"),
        env=env,
        ports=(Port("metrics", METRICS_PORT),),
        readiness=Readiness(port="metrics", http_path="/healthz", period_s=1.0),
        config_files={CONFIG_FILE_NAME: build_analysis_config(online, experiment, targets)},
        status_port="metrics",
    )
    return [router, analysis]
