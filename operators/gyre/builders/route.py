"""A weighted route over several workloads → the router workload (`gyre.pipelines.router`).

A Kubernetes Service over two Deployments splits traffic by pod count, so a canary's share
would follow its replica count, not its weight. A route is therefore a workload of its own: a
SERVICE-shaped router (a Deployment and a ClusterIP Service on Kubernetes, a process locally)
that forwards each request to one backend by weight, keeps sticky keys on one backend and
mirrors to a shadow.

Backends are workloads of the same owner, or addresses other objects published (an online
Experiment routes across InferenceServices by their ``status.url``). Workload backends'
addresses are `EndpointRef`s in the router's environment, which each runtime resolves as it
resolves any other (a loopback port locally, ``<owner>-<workload>.<namespace>.svc:<port>`` on
Kubernetes); the config file's backend URLs refer to those variables. Weights live in the
config file and the router rereads it (``reloads_config``): changing them neither restarts nor
rolls the router.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gyre.core.workload import (
    ConfigDirRef,
    EndpointRef,
    EnvValue,
    Port,
    Readiness,
    Resources,
    Workload,
    WorkloadKind,
)
from gyre.pipelines._common.env import CONFIG_ENV, CONFIG_FILE_NAME
from gyre.pipelines.router.config import AssignmentLog, Backend, RouterConfig, Shadow

ROLE = "router"
HTTP_PORT = 8080
METRICS_PORT = 9090


@dataclass(frozen=True)
class RouteBackend:
    """A port of a workload of the route's owner, answering ``weight``'s share (relative); or,
    with ``url``, an address outside the owner (another object's published URL), which
    ``workload`` then only names."""

    workload: str
    port: str
    weight: float
    url: str | None = None


@dataclass(frozen=True)
class RouteShadow:
    """A port of a workload that gets a copy of ``percent`` percent of the requests."""

    workload: str
    port: str
    percent: float = 100.0


@dataclass(frozen=True)
class Route:
    """``name``: the router workload's name, and what sticky keys are hashed with.
    ``sticky_header``: the request header whose value keeps a client on one backend.
    ``policy``: the allocation policy's name (`gyre.pipelines.router.policy.POLICIES`).
    ``route_key``: what sticky keys are hashed with instead of ``name`` (an experiment's name).
    ``assignment_log``: (bootstrap servers, topic) the router logs every assignment to."""

    name: str
    backends: tuple[RouteBackend, ...]
    policy: str = "weighted"
    sticky_header: str | None = None
    shadow: RouteShadow | None = None
    replicas: int = 1
    resources: Resources = field(default_factory=Resources)
    timeout_s: float = 30.0
    route_key: str | None = None
    assignment_log: tuple[str, str] | None = None


def address_env(workload: str) -> str:
    """The router's variable holding a backend workload's ``host:port``."""
    return "GYRE_BACKEND_" + workload.upper().replace("-", "_")


def build_router_config(route: Route) -> RouterConfig:
    """The router's configuration; backend URLs refer to `address_env` variables."""
    shadow = route.shadow
    return RouterConfig(
        route=route.route_key or route.name,
        backends=tuple(
            Backend(name=b.workload, url=b.url or f"http://$({address_env(b.workload)})", weight=b.weight)
            for b in route.backends
        ),
        policy=route.policy,
        sticky_header=route.sticky_header,
        shadow=None
        if shadow is None
        else Shadow(
            name=shadow.workload, url=f"http://$({address_env(shadow.workload)})", percent=shadow.percent
        ),
        timeout_s=route.timeout_s,
        assignment_log=None if route.assignment_log is None else AssignmentLog(*route.assignment_log),
        port=HTTP_PORT,
        metrics_port=METRICS_PORT,
    )


def build_route(route: Route) -> Workload:
    """The router workload: traffic on port ``http``, ``/metrics`` and ``/status`` on ``metrics``.

    Raises ValueError for a backend named twice or a route that refers to itself.
    """
    targets = [b.workload for b in route.backends] + ([route.shadow.workload] if route.shadow else [])
    if len(set(targets)) != len(targets):
        raise ValueError(
            f"route {route.name}: each workload may be a backend or the shadow once, got {targets}"
        )
    if route.name in targets:
        raise ValueError(f"route {route.name}: a route cannot be its own backend")
    config = build_router_config(route)  # validates names and weights (a ConfigError)
    env: dict[str, EnvValue] = {CONFIG_ENV: ConfigDirRef(CONFIG_FILE_NAME)}
    for b in route.backends:
        if b.url is None:
            env[address_env(b.workload)] = EndpointRef(b.port, b.workload)
    if route.shadow is not None:
        env[address_env(route.shadow.workload)] = EndpointRef(route.shadow.port, route.shadow.workload)
    return Workload(
        name=route.name,
        role=ROLE,
        kind=WorkloadKind.SERVICE,
        command=("python", "-m", "gyre.pipelines.router"),
        replicas=route.replicas,
        env=env,
        ports=(Port("http", HTTP_PORT), Port("metrics", METRICS_PORT)),
        resources=route.resources,
        readiness=Readiness(port="metrics", http_path="/healthz", period_s=1.0),
        config_files={CONFIG_FILE_NAME: config.to_json()},
        status_port="metrics",
        reloads_config=True,
    )
