"""The online Experiment's builder and controller decisions, on their output."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gyre.api.experiment import ExperimentSpec, OnlineSpec
from gyre.builders.online import (
    ANALYSIS,
    ROUTER,
    OnlineTargets,
    TopicRef,
    assignments_topic,
    build_online,
    initial_allocation,
    router_allocation,
)
from gyre.controllers.base import ObjectMeta, Ref, Resolved, StatusInput
from gyre.controllers.experiment import ExperimentController
from gyre.controllers.online import FEEDBACK_PATH, Guard, OnlineFacts, decide_promotion, variant_path
from gyre.core.workload import WorkloadPhase, WorkloadStatus
from gyre.pipelines._common.env import CONFIG_FILE_NAME
from gyre.pipelines.abtest.status import AbTestStatus, DecisionStatus, VariantStatus
from gyre.pipelines.router.config import RouterConfig

META = ObjectMeta("Experiment", "ns", "ab", "uid-1", 1, created="2026-01-01T00:00:00Z")
TARGETS = OnlineTargets(
    urls={"a": "http://127.0.0.1:9001", "b": "http://127.0.0.1:9002"},
    feedback=TopicRef("127.0.0.1:9092", "ns.feedback"),
    assignments=TopicRef("127.0.0.1:9092", "ns.ab.assignments"),
)


def online(**kw: Any) -> OnlineSpec:
    body: dict[str, Any] = {
        "variants": [
            {"name": "a", "inferenceService": "model-a"},
            {"name": "b", "inferenceService": "model-b"},
        ],
        "feedbackStream": "feedback",
        **kw,
    }
    return OnlineSpec.model_validate(body)


def test_should_route_across_the_variants_urls_by_the_allocation_and_log_assignments() -> None:
    router, analysis = build_online(online(), "ab", TARGETS, {"a": 0.25, "b": 0.75})
    assert (router.name, analysis.name) == (ROUTER, ANALYSIS)
    config = RouterConfig.from_dict(json.loads(router.config_files[CONFIG_FILE_NAME]))
    assert [(b.name, b.url, b.weight) for b in config.backends] == [
        ("a", "http://127.0.0.1:9001", 0.25),
        ("b", "http://127.0.0.1:9002", 0.75),
    ]
    assert config.route == "ab"  # users are hashed with the experiment's name
    assert config.sticky_header == "X-Gyre-Key"
    assert config.assignment_log is not None
    assert (config.assignment_log.bootstrap_servers, config.assignment_log.topic) == (
        "127.0.0.1:9092",
        "ns.ab.assignments",
    )
    assert not [k for k in router.env if k.startswith("GYRE_BACKEND_")]  # no same-owner backends


def test_should_configure_the_analysis_from_the_spec() -> None:
    spec = online(
        allocation={"policy": "epsilonGreedy", "epsilon": 0.2},
        analysis={"method": "ttest", "reward": "continuous", "metric": "revenue", "minSamples": 50},
        attributionWindowSeconds=120,
        aa=True,
    )
    _, analysis = build_online(spec, "ab", TARGETS, initial_allocation(spec))
    config = json.loads(analysis.config_files[CONFIG_FILE_NAME])
    assert config["variants"] == ["a", "b"]
    assert config["feedback"] == {"bootstrap_servers": "127.0.0.1:9092", "topic": "ns.feedback"}
    assert config["assignments"]["topic"] == "ns.ab.assignments"
    assert (config["policy"], config["epsilon"], config["method"], config["reward"]) == (
        "epsilonGreedy",
        0.2,
        "ttest",
        "normal",
    )
    assert (config["metric"], config["min_samples"], config["attribution_window_s"], config["aa"]) == (
        "revenue",
        50,
        120,
        True,
    )
    assert "weights" not in config
    from gyre.pipelines.abtest.config import AbTestConfig

    AbTestConfig.from_dict(config)  # what the workload accepts


def test_should_start_fixed_weights_or_an_even_split_and_keep_a_complete_allocation() -> None:
    fixed = online(
        allocation={"policy": "fixed"},
        variants=[
            {"name": "a", "inferenceService": "model-a", "weight": 90},
            {"name": "b", "inferenceService": "model-b", "weight": 10},
        ],
    )
    assert initial_allocation(fixed) == {"a": 0.9, "b": 0.1}
    assert initial_allocation(online()) == {"a": 0.5, "b": 0.5}
    assert router_allocation(online(), {"a": 0.2, "b": 0.8}) == {"a": 0.2, "b": 0.8}
    assert router_allocation(online(), {"a": 1.0}) == {"a": 0.5, "b": 0.5}  # b missing
    assert router_allocation(online(), {"a": 0.0, "b": 0.0}) == {"a": 0.5, "b": 0.5}
    assert assignments_topic("ns", "ab").name == "ns.ab.assignments"


@pytest.mark.parametrize(
    ("kw", "winner", "decided", "guard", "promote", "why"),
    [
        ({}, "b", False, None, False, None),
        ({"aa": True}, "b", True, None, False, None),
        ({}, None, True, None, False, None),
        ({"promotion": {"auto": False}}, "b", True, None, False, "promotion.auto"),
        ({}, "b", True, Guard(None, 0.01), True, None),
        ({}, "b", True, Guard(None, 0.2), False, "error rate 0.200"),
        ({"promotion": {"auto": True, "maxLatencyP99Ms": 50}}, "b", True, Guard(80.0, 0.0), False, "80.0 ms"),
        (
            {"promotion": {"auto": True, "maxLatencyP99Ms": 50}},
            "b",
            True,
            Guard(None, 0.0),
            False,
            "not known",
        ),
        ({"promotion": {"auto": True, "maxLatencyP99Ms": 50}}, "b", True, Guard(20.0, 0.0), True, None),
        ({}, "b", True, Guard(None, None, "prometheus", "Prometheus at http://p: refused"), False, "refused"),
    ],
)
def test_should_promote_only_a_decided_winner_within_the_guards(
    kw: dict[str, Any], winner: str | None, decided: bool, guard: Guard | None, promote: bool, why: str | None
) -> None:
    kw.setdefault("promotion", {"auto": True})
    got, blocked = decide_promotion(online(**kw), winner, decided, guard)
    assert got is promote
    assert (blocked is None) if why is None else (why in (blocked or ""))


def _deps(urls: bool = True) -> dict[str, Resolved]:
    ready = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Serving",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ]
    deps = {
        variant_path(i): Resolved(
            Ref("InferenceService", f"model-{v}", variant_path(i)),
            {
                "spec": {"model": {"uri": "file:///m"}, "modelName": "clicks"},
                "status": {"conditions": ready, **({"url": f"http://127.0.0.1:900{i}"} if urls else {})},
            },
        )
        for i, v in enumerate("ab")
    }
    deps[FEEDBACK_PATH] = Resolved(
        Ref("Stream", "feedback", FEEDBACK_PATH),
        {"status": {"bootstrapServers": "127.0.0.1:9092", "topic": {"name": "ns.feedback", "partitions": 1}}},
    )
    return deps


def _analysis(decided: bool, winner: str | None, allocation: float = 0.8) -> AbTestStatus:
    return AbTestStatus(
        experiment="ab",
        method="bayesian",
        policy="thompson",
        reward="bernoulli",
        metric="conversion",
        ready=True,
        control="a",
        variants=[
            VariantStatus(
                name="a", requests=400, outcomes=40, reward_sum=40, rate=0.1, allocation=1 - allocation
            ),
            VariantStatus(
                name="b",
                requests=600,
                outcomes=180,
                reward_sum=180,
                rate=0.3,
                allocation=allocation,
                p_best=0.999,
            ),
        ],
        decision=DecisionStatus(
            decided=decided,
            winner=winner,
            reason="ExpectedLossBelowThreshold" if decided else "CollectingSamples",
        ),
    )


def _status(
    spec: ExperimentSpec, facts: OnlineFacts, old: dict[str, Any] | None = None, urls: bool = True
) -> Any:
    observed = {n: WorkloadStatus(n, WorkloadPhase.READY, 1, 1) for n in (ROUTER, ANALYSIS)}
    inp = StatusInput(META, old or {}, _deps(urls), [], observed, facts)
    return ExperimentController().compute_status(spec, inp)


def _spec(**kw: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {"online": online(**kw).model_dump(by_alias=True, exclude_none=True)}
    )


def test_should_wait_for_the_variants_urls() -> None:
    out = _status(_spec(), OnlineFacts(), urls=False)
    ready = next(c for c in out.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == (False, "WaitingForTargets")
    assert "model-a" in ready.message
    assert "status.url" in ready.message


def test_should_take_the_policys_allocation_while_collecting() -> None:
    out = _status(_spec(), OnlineFacts(url="http://127.0.0.1:7000", analysis=_analysis(False, None)))
    assert out.status.allocation == {"a": 0.2, "b": 0.8}
    assert out.status.winner is None
    assert out.phase == "Running"
    assert [v.requests for v in out.status.variants] == [400, 600]
    assert out.status.history[-1].allocation == {"a": 0.2, "b": 0.8}
    ready = next(c for c in out.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == (True, "Collecting")


def test_should_promote_the_winner_and_keep_the_promotion() -> None:
    spec = _spec(promotion={"auto": True})
    out = _status(spec, OnlineFacts(url="http://x", analysis=_analysis(True, "b")))
    assert out.status.allocation == {"a": 0.0, "b": 1.0}
    assert out.status.winner == "b"
    assert out.status.decision.promoted == "b"
    assert out.phase == "Succeeded"
    # a later pass whose analysis (restarted, say) is undecided keeps the promotion
    old = {"decision": out.status.decision.model_dump(by_alias=True), "allocation": out.status.allocation}
    again = _status(spec, OnlineFacts(url="http://x", analysis=_analysis(False, None, 0.5)), old)
    assert again.status.allocation == {"a": 0.0, "b": 1.0}
    assert again.status.winner == "b"


def test_should_not_promote_in_aa_mode_nor_without_auto() -> None:
    aa = _status(
        _spec(aa=True, promotion={"auto": True}), OnlineFacts(url="http://x", analysis=_analysis(True, "b"))
    )
    assert aa.status.winner is None
    assert aa.status.decision.promoted is None
    manual = _status(_spec(), OnlineFacts(url="http://x", analysis=_analysis(True, "b")))
    assert manual.status.winner == "b"
    assert manual.status.decision.promoted is None
    assert "promotion.auto" in (manual.status.decision.promotion_blocked or "")
    assert manual.status.allocation == {"a": 0.2, "b": 0.8}


def test_should_reject_variants_that_serve_different_model_names() -> None:
    deps = _deps()
    body = dict(deps[variant_path(1)].body or {})
    body["spec"] = {"model": {"uri": "file:///m"}}  # serves "model-b"
    deps[variant_path(1)] = Resolved(deps[variant_path(1)].ref, body)
    problems = ExperimentController().check(META, _spec(), deps)
    assert problems
    assert "spec.modelName" in problems[0]
    assert ExperimentController().check(META, _spec(), _deps()) == []


def test_should_read_the_guards_from_prometheus_when_the_spec_names_one() -> None:
    spec = _spec(promotion={"auto": True, "prometheusUrl": "http://prometheus:9090", "maxLatencyP99Ms": 50})
    slow = Guard(80.0, 0.0, "prometheus")
    out = _status(spec, OnlineFacts(url="http://x", analysis=_analysis(True, "b"), prometheus_guard=slow))
    assert out.status.decision.promoted is None
    assert "80.0 ms (prometheus)" in (out.status.decision.promotion_blocked or "")
    unread = _status(spec, OnlineFacts(url="http://x", analysis=_analysis(True, "b")))
    assert "not read" in (unread.status.decision.promotion_blocked or "")
    fast = Guard(12.0, 0.001, "prometheus")
    ok = _status(spec, OnlineFacts(url="http://x", analysis=_analysis(True, "b"), prometheus_guard=fast))
    assert ok.status.decision.promoted == "b"


def test_should_render_for_kubernetes_with_the_variants_urls_in_the_routers_config() -> None:
    from gyre.core.workload import Owner
    from gyre.runtimes import k8s_render as r

    targets = OnlineTargets(
        urls={"a": "http://model-a-router.ns.svc:8080", "b": "http://model-b-router.ns.svc:8080"},
        feedback=TARGETS.feedback,
        assignments=TARGETS.assignments,
    )
    owner = Owner(kind="Experiment", namespace="ns", name="ab", uid="uid-1")
    manifests = r.render(owner, build_online(online(), "ab", targets, {"a": 0.5, "b": 0.5}), "ns")
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in manifests)
    assert ("Deployment", "ab-router") in kinds
    assert ("Deployment", "ab-analysis") in kinds
    config = next(
        m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == "ab-router-config"
    )
    router = RouterConfig.from_dict(json.loads(config["data"][CONFIG_FILE_NAME]))
    assert [b.url for b in router.backends] == list(targets.urls.values())
