"""InferenceService: the builder's workloads and the status computed from the model servers'
and the router's ``/status`` documents (the status contract), without any runtime."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gyre.api.inferenceservice import InferenceServiceSpec
from gyre.builders import inferenceservice as bi
from gyre.controllers.base import ObjectMeta, Ref, Resolved, StatusInput
from gyre.controllers.inferenceservice import (
    InferenceServiceController,
    ServingFacts,
    resolve_artifacts,
)
from gyre.core.workload import ConfigDirRef, EndpointRef, WorkloadKind, WorkloadStatus
from gyre.core.workload import WorkloadPhase as P
from gyre.pipelines.modelserver.config import ModelServerConfig
from gyre.pipelines.modelserver.status import ModelServerStatus
from gyre.pipelines.router.config import RouterConfig
from gyre.pipelines.router.status import BackendStatus, RouterStatus, ShadowStatus

META = ObjectMeta("InferenceService", "ns", "churn", "uid-1", 1)


def spec(**changes: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({"model": {"trainingJob": "churn-v1"}, **changes})


def trained(uri: str | None) -> Resolved:
    ready = {"type": "Ready", "status": "True", "reason": "ModelAvailable", "message": ""}
    status: dict[str, Any] = {"conditions": [{**ready, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    if uri:
        status["model"] = {"uri": uri, "version": "churn-v1-g1"}
    return Resolved(Ref("TrainingJob", "churn-v1", "spec.model.trainingJob"), {"spec": {}, "status": status})


CANARY = {
    "canary": {"model": {"uri": "file:///m/v2"}, "percent": 20},
    "shadow": {"model": {"uri": "file:///m/v3"}},
}


def test_one_model_is_a_model_server_behind_the_router() -> None:
    s = spec(fallback={"deadlineMs": 40, "defaultResponse": {"p": 0.1}}, batching={"maxBatchSize": 8})
    workloads = bi.build_inferenceservice(s, "churn", bi.Artifacts(stable="file:///m/v1"))
    assert [w.name for w in workloads] == ["predictor", "router"]
    server, router = workloads
    assert (server.kind, server.command[-1], server.status_port) == (
        WorkloadKind.SERVICE,
        "gyre.pipelines.modelserver",
        "http",
    )
    assert server.readiness is not None
    assert server.readiness.http_path == "/v2/health/ready"
    assert server.env["GYRE_CONFIG"] == ConfigDirRef("config.json")
    cfg = ModelServerConfig.from_json(server.config_files["config.json"])
    assert (cfg.name, cfg.artifact, cfg.variant) == ("churn", "file:///m/v1", "stable")
    assert (cfg.fallback.deadline_ms, cfg.fallback.default_response, cfg.batching.max_batch_size) == (
        40,
        {"p": 0.1},
        8,
    )
    assert cfg.fallback.reset_timeout_s == 30
    route = json.loads(router.config_files["config.json"])
    assert [(b["name"], b["weight"]) for b in route["backends"]] == [("predictor", 100.0)]
    assert (route["sticky_header"], route["policy"], route["shadow"]) == ("X-Gyre-Key", "weighted", None)
    assert router.env["GYRE_BACKEND_PREDICTOR"] == EndpointRef("http", "predictor")


def test_canary_and_shadow_are_weighted_backends_and_a_mirror() -> None:
    arts = bi.Artifacts(stable="/m/v1", canary="file:///m/v2", shadow="file:///m/v3")
    workloads = bi.build_inferenceservice(spec(traffic=CANARY, replicas=2), "churn", arts)
    assert [w.name for w in workloads] == ["predictor", "canary", "shadow", "router"]
    assert [w.replicas for w in workloads[:3]] == [2, 2, 2]
    variants = [ModelServerConfig.from_json(w.config_files["config.json"]).variant for w in workloads[:3]]
    assert variants == ["stable", "canary", "shadow"]
    route = RouterConfig.from_json(workloads[-1].config_files["config.json"])
    assert [(b.name, b.weight) for b in route.backends] == [("predictor", 80.0), ("canary", 20.0)]
    assert route.shadow is not None
    assert (route.shadow.name, route.shadow.percent) == ("shadow", 100.0)
    promoted = bi.build_router(spec(traffic={**CANARY, "canary": {**CANARY["canary"], "percent": 100}}), arts)
    assert [b["weight"] for b in json.loads(promoted.config_files["config.json"])["backends"]] == [0.0, 100.0]


@pytest.mark.parametrize(
    ("changes", "replicas"),
    [({}, 1), ({"replicas": 3}, 3), ({"autoscaling": {"minReplicas": 0, "maxReplicas": 4}}, 1)],
)
def test_replicas(changes: dict[str, Any], replicas: int) -> None:
    assert bi.replicas(spec(**changes)) == replicas


def test_artifacts_come_from_the_trainingjob_status_or_a_uri() -> None:
    deps = {"spec.model.trainingJob": trained("file:///models/churn-v1-g1")}
    assert resolve_artifacts(spec(), deps) == bi.Artifacts(stable="file:///models/churn-v1-g1")
    assert resolve_artifacts(spec(), {"spec.model.trainingJob": trained(None)}) is None
    direct = spec(model={"uri": "file:///m/x"}, traffic=CANARY)
    assert resolve_artifacts(direct, {}) == bi.Artifacts(
        stable="file:///m/x", canary="file:///m/v2", shadow="file:///m/v3"
    )


def server(variant: str, **kw: Any) -> dict[str, Any]:
    base = {"name": "churn", "variant": variant, "model_version": f"{variant}-v", "ready": True}
    return ModelServerStatus.model_validate({**base, **kw}).to_body()


def status_input(observed: dict[str, P], facts: ServingFacts, s: InferenceServiceSpec) -> StatusInput:
    workloads = bi.build_inferenceservice(s, "churn", resolve_artifacts(s, {}) or bi.Artifacts("/m"))
    return StatusInput(
        meta=META,
        old_status={},
        deps={},
        workloads=workloads,
        observed={n: WorkloadStatus(n, ph, 1, 1 if ph == P.READY else 0) for n, ph in observed.items()},
        facts=facts,
    )


READY = {"predictor": P.READY, "canary": P.READY, "shadow": P.READY, "router": P.READY}


def facts(stable: dict[str, Any] | None = None, canary: dict[str, Any] | None = None) -> ServingFacts:
    router = RouterStatus(
        route="router",
        policy="weighted",
        backends=[
            BackendStatus(name="predictor", url="u", weight=80, requests=790),
            BackendStatus(name="canary", url="u", weight=20, requests=210),
        ],
        shadow=ShadowStatus(name="shadow", url="u", percent=100, requests=990, dropped=10),
    )
    return ServingFacts(
        url="http://127.0.0.1:5000",
        servers={
            "stable": [ModelServerStatus.model_validate(server("stable", **(stable or {})))],
            "canary": [ModelServerStatus.model_validate(server("canary", **(canary or {})))],
            "shadow": [ModelServerStatus.model_validate(server("shadow"))],
        },
        router=router,
    )


def conditions(out: Any) -> dict[str, tuple[bool, str]]:
    return {c.type: (c.status, c.reason) for c in out.conditions}


def test_serving_status_shows_versions_split_and_latency() -> None:
    s = spec(model={"uri": "file:///m/v1"}, traffic=CANARY)
    st_facts = facts({"latency_p50_ms": 1.5, "latency_p99_ms": 9.25, "fallback_rate": 0.0, "requests": 790})
    out = InferenceServiceController().compute_status(s, status_input(READY, st_facts, s))
    st = out.status
    assert (st.url, st.model_version, st.canary_model_version, st.shadow_model_version) == (
        "http://127.0.0.1:5000",
        "stable-v",
        "canary-v",
        "shadow-v",
    )
    assert (st.traffic, st.measured_traffic, st.requests) == (
        {"stable": 80, "canary": 20},
        {"stable": 79.0, "canary": 21.0},
        1000,
    )
    assert (st.latency_p50_ms, st.latency_p99_ms, st.breaker, st.ready_replicas) == (1.5, 9.25, "closed", 1)
    assert [(v.requests, v.dropped) for v in st.variants] == [(790, 0), (210, 0), (990, 10)]
    assert out.phase == "Serving"
    c = conditions(out)
    assert c["Ready"] == (True, "Serving")
    assert c["Progressing"] == (False, "WorkloadsReady")
    assert "Degraded" not in c


@pytest.mark.parametrize(
    ("observed", "stable", "ready", "progressing", "degraded"),
    [
        ({**READY, "canary": P.RUNNING}, {}, True, (True, "RollingOut"), None),
        ({**READY, "router": P.RUNNING}, {}, False, (True, "RollingOut"), None),
        (READY, {"breaker": "open", "fallback_rate": 1.0}, True, (False, "WorkloadsReady"), "BreakerOpen"),
        (READY, {"fallback_rate": 0.2}, True, (False, "WorkloadsReady"), "FallingBack"),
        (READY, {"fallback_rate": 0.01}, True, (False, "WorkloadsReady"), None),
        ({**READY, "predictor": P.FAILED}, {}, False, (True, "RollingOut"), "WorkloadFailed"),
        (READY, {"ready": False}, False, (False, "WorkloadsReady"), None),
    ],
)
def test_conditions(
    observed: dict[str, P],
    stable: dict[str, Any],
    ready: bool,
    progressing: tuple[bool, str],
    degraded: str | None,
) -> None:
    s = spec(model={"uri": "file:///m/v1"}, traffic=CANARY)
    out = InferenceServiceController().compute_status(s, status_input(observed, facts(stable), s))
    c = conditions(out)
    assert c["Ready"][0] is ready
    assert c["Progressing"] == progressing
    assert c.get("Degraded", (None, None))[1] == degraded


def test_an_unpublished_model_waits() -> None:
    inp = StatusInput(META, {}, {"spec.model.trainingJob": trained(None)}, [], {}, ServingFacts())
    out = InferenceServiceController().compute_status(spec(), inp)
    assert conditions(out)["Ready"] == (False, "ModelNotPublished")


def featurejob(online: dict[str, Any], published: dict[str, Any] | None = None) -> Resolved:
    body = {
        "spec": {
            "source": {"stream": "clicks"},
            "entity": "user_id",
            "timestampField": "ts",
            "features": [{"name": "views_7d", "field": "views", "aggregation": "sum", "window": "7d"}],
            "offline": {"uri": "file:///f"},
            "online": online,
        },
        "status": {"online": published} if published is not None else {},
    }
    return Resolved(Ref("FeatureJob", "churn-features", "spec.features.featureJob"), body)


PUBLISHED = {"address": "10.0.0.5:6379", "keyPrefix": "gyre:ns:churn-features:", "keys": 12}


def test_online_features_reach_every_model_server_from_what_the_featurejob_published() -> None:
    s = spec(model={"uri": "file:///m/v1"}, features={"featureJob": "churn-features", "entityKey": "user_id"})
    controller = InferenceServiceController()

    def server_features(dep: Resolved) -> tuple[str, str, str]:
        arts = resolve_artifacts(s, {"spec.features.featureJob": dep})
        assert arts is not None
        (server, _router) = bi.build_inferenceservice(s, "churn", arts)
        cfg = ModelServerConfig.from_json(server.config_files["config.json"])
        assert cfg.features is not None
        return cfg.features.redis_url, cfg.features.entity_key, cfg.features.key_prefix

    # A store the FeatureJob runs itself: the address and prefix of its status.
    assert server_features(featurejob({"enabled": True}, PUBLISHED)) == (
        "redis://10.0.0.5:6379",
        "user_id",
        "gyre:ns:churn-features:",
    )
    # A store its spec names: that URL (with its database), the published prefix.
    named = featurejob({"redisUrl": "redis://10.0.0.5:6379/3"}, PUBLISHED)
    assert server_features(named)[0] == "redis://10.0.0.5:6379/3"
    # Nothing published yet (no successful run): no model server, and the reason says why.
    for unpublished in (featurejob({}), featurejob({"redisUrl": "redis://10.0.0.5:6379/3"})):
        deps = {"spec.features.featureJob": unpublished}
        assert controller.build(META, s, deps, {}, None) == []
        out = controller.compute_status(s, StatusInput(META, {}, deps, [], {}, ServingFacts()))
        assert conditions(out)["Ready"] == (False, "OnlineStoreUnknown")
    off = {"spec.features.featureJob": featurejob({"enabled": False})}
    assert "writes no online store" in controller.check(META, s, off)[0]


def test_predictions_are_logged_to_the_stream_it_names() -> None:
    s = spec(model={"uri": "file:///m/v1"}, logging={"stream": "feedback", "sampleRate": 0.5})
    stream = {"bootstrapServers": "127.0.0.1:9092", "topic": {"name": "feedback"}}
    deps = {
        "spec.logging.stream": Resolved(Ref("Stream", "feedback", "spec.logging.stream"), {"status": stream})
    }
    arts = resolve_artifacts(s, deps)
    assert arts is not None
    (server, _router) = bi.build_inferenceservice(s, "churn", arts)
    cfg = ModelServerConfig.from_json(server.config_files["config.json"])
    assert cfg.logging is not None
    assert (cfg.logging.bootstrap_servers, cfg.logging.topic, cfg.logging.sample_rate) == (
        "127.0.0.1:9092",
        "feedback",
        0.5,
    )


def test_drift_past_the_threshold_is_a_drifted_condition() -> None:
    s = spec(model={"uri": "file:///m/v1"}, traffic=CANARY, monitoring={"drift": {"threshold": 0.2}})
    for drift, want in [
        ({"x1": 0.61, "x2": 0.01}, ("True", "InputsDrifted", ["x1"])),
        ({"x1": 0.05, "x2": 0.01}, ("False", "WithinThreshold", [])),
        (None, ("False", "NotEnoughRequests", None)),
    ]:
        out = InferenceServiceController().compute_status(s, status_input(READY, facts({"drift": drift}), s))
        c = conditions(out)["Drifted"]
        assert (str(c[0]), c[1], out.status.drifted_features) == want, (drift, c)
        if drift:
            assert out.status.drift_score == max(drift.values())


def searched(uri: str | None) -> Resolved:
    ready = {"type": "Ready", "status": "True", "reason": "MaxTrialsReached", "message": ""}
    status: dict[str, Any] = {"conditions": [{**ready, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    if uri:
        status["model"] = {"uri": uri, "version": "churn-tuning-3-g1"}
    return Resolved(
        Ref("Experiment", "churn-tuning", "spec.model.experiment"), {"spec": {}, "status": status}
    )


def test_an_experiments_best_model_is_served_by_reference() -> None:
    s = spec(model={"experiment": "churn-tuning"})
    controller = InferenceServiceController()
    assert [(r.kind, r.name, r.field) for r in controller.references(s)] == [
        ("Experiment", "churn-tuning", "spec.model.experiment")
    ]
    arts = resolve_artifacts(s, {"spec.model.experiment": searched("file:///m/churn-tuning-3-g1")})
    assert arts is not None
    assert arts.stable == "file:///m/churn-tuning-3-g1"
    (server, _router) = bi.build_inferenceservice(s, "churn", arts)
    assert (
        ModelServerConfig.from_json(server.config_files["config.json"]).artifact
        == "file:///m/churn-tuning-3-g1"
    )
    assert resolve_artifacts(s, {"spec.model.experiment": searched(None)}) is None
    inp = StatusInput(META, {}, {"spec.model.experiment": searched(None)}, [], {}, ServingFacts())
    assert conditions(controller.compute_status(s, inp))["Ready"] == (False, "ModelNotPublished")
    # A canary from an Experiment beside a stable TrainingJob.
    both = spec(
        model={"trainingJob": "churn-v1"},
        traffic={"canary": {"model": {"experiment": "churn-tuning"}, "percent": 10}},
    )
    refs = {r.field for r in controller.references(both)}
    assert refs == {"spec.model.trainingJob", "spec.traffic.canary.model.experiment"}
    canary = Resolved(
        Ref("Experiment", "churn-tuning", "spec.traffic.canary.model.experiment"),
        {"spec": {}, "status": {"model": {"uri": "file:///m/best"}}},
    )
    arts = resolve_artifacts(
        both,
        {"spec.model.trainingJob": trained("file:///m/v1"), "spec.traffic.canary.model.experiment": canary},
    )
    assert arts is not None
    assert (arts.stable, arts.canary) == ("file:///m/v1", "file:///m/best")
