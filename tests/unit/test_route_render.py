"""A weighted route rendered for Kubernetes: the router's Deployment, Service and config, with
the backends' addresses the Service DNS names of the backend workloads."""

from __future__ import annotations

from typing import Any

import pytest
from gyre.builders.route import Route, RouteBackend, RouteShadow, build_route
from gyre.core.workload import Owner, Port, Workload, WorkloadKind
from gyre.pipelines._common.env import CONFIG_FILE_NAME, ConfigError
from gyre.pipelines.router.config import AssignmentLog, Backend, RouterConfig
from gyre.runtimes import k8s_render as r

OWNER = Owner(kind="InferenceService", namespace="ml", name="churn", uid="1234-abcd")
NS = "ml"


def predictor(name: str, port: int = 8080) -> Workload:
    return Workload(
        name=name,
        role="predictor",
        kind=WorkloadKind.SERVICE,
        command=("python", "-m", "gyre.pipelines.x"),
        ports=(Port("http", port),),
    )


PREDICTORS = [predictor("stable"), predictor("canary", 8081), predictor("shadow", 8082)]


def route(stable: float = 80, canary: float = 20, **kwargs: Any) -> Route:
    backends = (RouteBackend("stable", "http", stable), RouteBackend("canary", "http", canary))
    return Route(name="router", backends=backends, **kwargs)


def rendered(rt: Route) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (m["kind"], m["metadata"]["name"]): m for m in r.render(OWNER, [*PREDICTORS, build_route(rt)], NS)
    }


def pod_env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_a_route_is_a_router_deployment_behind_a_service_with_its_config() -> None:
    objs = rendered(route())
    deployment = objs[("Deployment", "churn-router")]
    service = objs[("Service", "churn-router")]
    config_map = objs[("ConfigMap", "churn-router-config")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "gyre.pipelines.router"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert service["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 8080), ("metrics", 9090)]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["metadata"]["labels"]["gyre.dev/role"] == "router"
    assert list(config_map["data"]) == [CONFIG_FILE_NAME]


def test_the_routers_config_names_the_backends_by_their_service_dns_names() -> None:
    objs = rendered(route(sticky_header="X-Gyre-Key", shadow=RouteShadow("shadow", "http", percent=50)))
    env = pod_env(objs[("Deployment", "churn-router")])
    assert env["GYRE_BACKEND_STABLE"] == "churn-stable.ml.svc:8080"
    assert env["GYRE_BACKEND_CANARY"] == "churn-canary.ml.svc:8081"
    assert env["GYRE_BACKEND_SHADOW"] == "churn-shadow.ml.svc:8082"
    assert env["GYRE_CONFIG"] == f"{r.CONFIG_DIR}/{CONFIG_FILE_NAME}"
    # The config as the router reads it in that pod: its env expands the backends' URLs.
    written = RouterConfig.from_json(objs[("ConfigMap", "churn-router-config")]["data"][CONFIG_FILE_NAME])
    config = written.resolved(env)
    assert [(b.name, b.url, b.weight) for b in config.backends] == [
        ("stable", "http://churn-stable.ml.svc:8080", 80),
        ("canary", "http://churn-canary.ml.svc:8081", 20),
    ]
    assert config.shadow is not None
    assert (config.shadow.name, config.shadow.url, config.shadow.percent) == (
        "shadow",
        "http://churn-shadow.ml.svc:8082",
        50,
    )
    assert (config.route, config.policy, config.sticky_header) == ("router", "weighted", "X-Gyre-Key")
    # Each backend's address is the one its own Service answers at.
    for name in ("stable", "canary", "shadow"):
        service = objs[("Service", f"churn-{name}")]
        host, port = env[f"GYRE_BACKEND_{name.upper()}"].split(":")
        assert host == f"{service['metadata']['name']}.{NS}.svc"
        assert [p["port"] for p in service["spec"]["ports"]] == [int(port)]


def test_a_weight_change_changes_the_config_map_only() -> None:
    """The router rereads its config: new weights must not roll its pods."""
    before, after = rendered(route(80, 20)), rendered(route(0, 100))
    assert before.keys() == after.keys()
    changed = [key for key in before if before[key] != after[key]]
    assert changed == [("ConfigMap", "churn-router-config")]
    template = after[("Deployment", "churn-router")]["spec"]["template"]
    assert r.ANNOTATION_CONFIG_HASH not in template["metadata"].get("annotations", {})


def test_a_route_to_a_workload_the_owner_does_not_have_is_an_error() -> None:
    w = build_route(Route(name="router", backends=(RouteBackend("missing", "http", 1),)))
    with pytest.raises(ValueError, match="unknown workload 'missing'"):
        r.render(OWNER, [*PREDICTORS, w], NS)


@pytest.mark.parametrize(
    ("rt", "error"),
    [
        (route(0, 0), "at least one backend needs a weight above 0"),
        (route(-1, 20), "weight -1"),
        (route(shadow=RouteShadow("stable", "http")), "a backend or the shadow once"),
        (Route(name="router", backends=()), "at least one backend"),
        (Route(name="router", backends=(RouteBackend("router", "http", 1),)), "its own backend"),
        (route(shadow=RouteShadow("shadow", "http", percent=150)), "not within 0..100"),
    ],
)
def test_invalid_routes_are_errors(rt: Route, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        build_route(rt)


def test_a_url_that_refers_to_an_unset_variable_is_an_error() -> None:
    config = RouterConfig(route="r", backends=(Backend("a", "http://$(GYRE_BACKEND_A)"),))
    with pytest.raises(ConfigError, match="refers to an unset variable"):
        config.resolved({})
    assert config.resolved({"GYRE_BACKEND_A": "127.0.0.1:1"}).backends[0].url == "http://127.0.0.1:1"


ONE_BACKEND: dict[str, Any] = {"route": "r", "backends": [{"name": "a", "url": "http://h"}]}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (
            {"route": "r", "backends": [{"name": "a", "url": "http://h", "weight": 1}], "policy": "x"},
            "policy",
        ),
        ({"route": "r", "backends": [{"name": "a", "url": "http://h", "wieght": 1}]}, "unknown fields"),
        ({"route": "r", "backends": [{"name": "a", "url": "ftp://h"}]}, "must be http"),
        ({"route": "r", "backends": ["a"]}, "must be an object"),
        (
            {**ONE_BACKEND, "assignment_log": {"bootstrap_servers": "", "topic": "t"}},
            r"assignment_log\.bootstrap_servers must be a non-empty string",
        ),
        (
            {**ONE_BACKEND, "assignment_log": {"bootstrap_servers": "k:9092", "topic": 7}},
            r"assignment_log\.topic must be a non-empty string",
        ),
        (
            {**ONE_BACKEND, "assignment_log": {"bootstrap_servers": "k:9092"}},
            "missing required field 'topic'",
        ),
        ({**ONE_BACKEND, "assignment_log": "k:9092/t"}, "assignment_log must be an object"),
        (
            {**ONE_BACKEND, "assignment_log": {"bootstrap_servers": "k:9092", "topic": "t", "acks": 1}},
            r"assignment_log: unknown fields \['acks'\]",
        ),
    ],
)
def test_invalid_router_configs_are_errors_naming_the_field(data: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        RouterConfig.from_dict(data).resolved({})


@pytest.mark.parametrize(
    "assignment_log", [None, AssignmentLog(bootstrap_servers="kafka-0:9092,kafka-1:9092", topic="churn-a")]
)
def test_the_assignment_log_round_trips_through_the_config_file(assignment_log: AssignmentLog | None) -> None:
    config = RouterConfig(route="r", backends=(Backend("a", "http://h"),), assignment_log=assignment_log)
    assert RouterConfig.from_json(config.to_json()) == config
    assert config.to_dict()["assignment_log"] == (
        None
        if assignment_log is None
        else {"bootstrap_servers": "kafka-0:9092,kafka-1:9092", "topic": "churn-a"}
    )
    assert RouterConfig.from_dict(ONE_BACKEND).assignment_log is None  # off unless configured
