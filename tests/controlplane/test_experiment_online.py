"""An online Experiment through the operator and the local runtime: two real InferenceServices,
a real feedback Stream (broker and collector), the experiment's router and analysis as processes.

Simulated users with sticky keys send prediction requests to the Experiment's URL; a user who
was answered by variant ``b`` converts 2.5 times as often as one answered by ``a`` (the two
models' quality, as the business sees it), and their conversions go to the feedback Stream a
round later by request id, or (some) at once by user key only. Thompson sampling moves the traffic to
``b``, the Bayesian analysis decides, and the Experiment promotes ``b`` to all the traffic.
The counts in the status are exactly what the clients saw and sent.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import OperatorProcess, running_operator
from test_inferenceservice import send_all
from test_stream import post

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytest.importorskip("kserve")
pytest.importorskip("scipy", reason="the analysis needs the experiment extra (make setup)")
pytest.importorskip("horovod.torch", reason="the trainer's launcher needs Horovod (make setup)")
pytestmark = [pytest.mark.controlplane, pytest.mark.integration, pytest.mark.timeout(900)]

from tests.integration.modelserver_fixtures import Trained, train_tiny_model  # noqa: E402

MODEL = "clicks"
RATES = {"a": 0.10, "b": 0.25}
USERS = 400
ROUND = 200
BY_KEY_ONLY = 7  # every 7th conversion names the user only, not the request


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return train_tiny_model(tmp_path_factory.mktemp("online-model"))


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from running_operator(cluster, tmp_path, "online", "local", show="gexp", log_lines=150)
    for log in sorted((tmp_path / "local").rglob("*.log")):
        if "analysis" in log.name or "router" in log.name:
            print(f"--- {log} ---\n{log.read_text(errors='replace')[-3000:]}")


FEEDBACK = """
apiVersion: gyre.dev/v1alpha1
kind: Stream
metadata: {name: feedback}
spec:
  kafka: {managed: {replicas: 1}}
  topic: {partitions: 1, retention: 7d}
  schema:
    key: key
    timestampField: ts
    fields:
      - {name: key, type: string, required: true}
      - {name: ts, type: timestamp, required: true}
      - {name: request_id, type: string}
      - {name: conversion, type: int, required: true}
"""


def isvc(name: str, artifact: Path) -> str:
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: InferenceService
metadata: {{name: {name}}}
spec:
  model: {{uri: "file://{artifact}"}}
  modelName: {MODEL}
  protocol: v1
  fallback: {{deadlineMs: 5000, defaultResponse: {{probability: 0.25}}}}
"""


EXPERIMENT = """
apiVersion: gyre.dev/v1alpha1
kind: Experiment
metadata: {name: ab}
spec:
  online:
    variants:
      - {name: a, inferenceService: model-a}
      - {name: b, inferenceService: model-b}
    allocation: {policy: thompson, intervalSeconds: 2}
    analysis: {method: bayesian, metric: conversion, minSamples: 1000, lossThreshold: 0.002}
    feedbackStream: feedback
    promotion: {auto: true, maxErrorRate: 0.05}
"""


def keyed(users: list[str], rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """A prediction request per user (its sticky key), for `send_all`."""
    return [(user, {"instances": [rows[i % len(rows)]]}) for i, user in enumerate(users)]


def send_events(url: str, events: list[dict[str, Any]]) -> None:
    if events:
        answer = post(url, events)
        assert answer.get("accepted") == len(events), answer


def experiment(op: OperatorProcess) -> dict[str, Any]:
    return op.status("experiment", "ab")


def test_thompson_moves_traffic_to_the_better_model_and_promotes_it(
    operator: OperatorProcess, trained: Trained, tmp_path: Path
) -> None:
    op = operator
    op.apply(FEEDBACK)
    op.apply(isvc("model-a", trained.artifact))
    op.apply(isvc("model-b", trained.artifact))
    op.apply(EXPERIMENT)

    def running() -> dict[str, Any]:
        ready = op.condition("experiment", "ab", "Ready")
        assert ready["status"] == "True", ready
        st = experiment(op)
        assert st.get("url"), st
        return st

    st = eventually(running, timeout=300, interval=1)
    assert st["allocation"] == {"a": 0.5, "b": 0.5}
    url = f"{st['url']}/v1/models/{MODEL}:predict"
    collector = str(op.status("stream", "feedback")["collectorUrl"])

    rng = random.Random(7)
    seen: dict[str, collections.Counter[str]] = {
        "requests": collections.Counter(),
        "conversions": collections.Counter(),
    }
    owed: list[dict[str, Any]] = []  # conversions sent a round late
    allocations: list[float] = []
    converted = 0
    for _round in range(40):
        users = [f"user-{rng.randrange(USERS)}" for _ in range(ROUND)]
        answers = asyncio.run(send_all(url, keyed(users, trained.rows)))
        assert all(a.code == 200 for a in answers), [a for a in answers if a.code != 200][:3]
        send_events(collector, owed)  # the previous round's conversions, by request id: late
        owed = []
        by_key: list[dict[str, Any]] = []  # sent now: the user's latest request is this one
        last = {user: i for i, user in enumerate(users)}
        for i, (user, (_, variant, _, request_id)) in enumerate(zip(users, answers, strict=True)):
            assert variant in RATES, variant
            assert request_id, "every answer names its request"
            seen["requests"][variant] += 1
            if rng.random() >= RATES[variant]:
                continue
            converted += 1
            seen["conversions"][variant] += 1
            event: dict[str, Any] = {"key": user, "ts": int(time.time() * 1000), "conversion": 1}
            if converted % BY_KEY_ONLY == 0 and last[user] == i:
                by_key.append(event)
            else:
                owed.append({**event, "request_id": request_id})
        send_events(collector, by_key)
        time.sleep(2.5)
        st = experiment(op)
        allocations.append(float(st["allocation"].get("b", 0.0)))
        if (st.get("decision") or {}).get("promoted"):
            break
    send_events(collector, owed)
    assert st["decision"]["promoted"] == "b", st.get("decision")
    assert st["winner"] == "b"
    assert st["allocation"] == {"a": 0.0, "b": 1.0}
    # Thompson moved traffic to b before the analysis decided (1,000 requests in all)
    assert max(allocations[:-1] or [0.0]) > 0.6, allocations

    # The counts are exactly what the clients saw and sent.
    def counted() -> dict[str, Any]:
        by_name = {v["name"]: v for v in experiment(op)["variants"]}
        for name in RATES:
            assert by_name[name]["requests"] == seen["requests"][name], (name, by_name[name], seen)
            rate = by_name[name]["rate"]
            assert rate * by_name[name]["requests"] == pytest.approx(seen["conversions"][name], abs=1e-6)
        return by_name

    by_name = eventually(counted, timeout=60, interval=1)
    print(
        f"promoted after {len(allocations)} rounds of {ROUND}: requests {dict(seen['requests'])}, "
        f"conversions {dict(seen['conversions'])}, b's share per round {allocations}; "
        f"{st['decision']['reason']}: {st['decision']['message']}"
    )
    assert by_name["b"]["pBest"] > 0.99
    assert by_name["b"]["rate"] > by_name["a"]["rate"]
    ready = op.condition("experiment", "ab", "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Promoted"), ready
    row = op.cluster.kubectl("get", "gexp", "ab", "-n", op.namespace).stdout
    assert " b " in row + " ", row

    # After the promotion every request goes to b.
    answers = asyncio.run(send_all(url, keyed([f"user-{i}" for i in range(100)], trained.rows)))
    assert {a.backend for a in answers} == {"b"}

    import yaml
    from gyre.api.experiment import ExperimentSpec, ExperimentStatus
    from gyre.operator.plot import plot_online

    spec = ExperimentSpec.model_validate(yaml.safe_load(EXPERIMENT)["spec"])
    written, skipped = plot_online(spec, ExperimentStatus.model_validate(experiment(op)), tmp_path / "plots")
    assert [p.name for p in written] == ["posteriors.png", "allocation.png"], skipped
    assert all(p.stat().st_size > 10_000 for p in written)
