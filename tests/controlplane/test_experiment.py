"""Experiments through the operator and the local runtime: trials are TrainingJobs whose two
ranks (Horovod, or torch DDP where that is all a test needs) are real processes.

A search finds a better validation metric than its template's defaults; a trial the pruner
stops ends its workers; an operator SIGKILLed again and again during a search neither loses,
repeats nor double-counts a trial (the search lives in the API server, not in the operator).
"""

from __future__ import annotations

import importlib.util
import json
import random
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gyre.controlplane.procs import Proc, processes
from operator_harness import OperatorProcess, make_data, running_operator

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytest.importorskip("torch", reason="the train extra (make setup installs it)")
pytest.importorskip("optuna", reason="the search extra (make setup installs it)")
needs_horovod = pytest.mark.skipif(
    importlib.util.find_spec("horovod") is None,
    reason="Horovod is built by scripts/build-horovod.sh (make setup)",
)
pytestmark = [pytest.mark.controlplane, pytest.mark.integration]

TRIAL = "gyre.dev/trial"


def template(data: Path, out: Path, *, epochs: int, backend: str = "horovod") -> str:
    """A small TrainingJob spec on 2 ranks: sgd at a tiny learning rate."""
    return f"""
      dataset:
        path: file://{data}
        label: churned
        features: [plan, page_views, session_seconds]
      model: {{architecture: mlp, task: binary, params: {{hidden: [8]}}}}
      hyperparameters: {{epochs: {epochs}, batchSize: 64, learningRate: 0.0002, optimizer: sgd, seed: 1}}
      workers: 2
      backend: {backend}
      runPolicy: {{gangTimeoutSeconds: 60}}
      output: {{uri: "file://{out}"}}"""


def experiment(name: str, search: str, trial_template: str) -> str:
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: Experiment
metadata: {{name: {name}}}
spec:
  search:{search}
    trialTemplate:{trial_template}
"""


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from running_operator(cluster, tmp_path, "exp", "local", show="gexp,gtj")


def status(op: OperatorProcess, kind: str, name: str) -> dict[str, Any]:
    return dict(op.get(kind, name).get("status") or {})


def trials(op: OperatorProcess, experiment: str) -> list[dict[str, Any]]:
    out = op.cluster.kubectl(
        "get", "gtj", "-n", op.namespace, "-l", f"gyre.dev/experiment={experiment}", "-o", "json"
    ).stdout
    return list(json.loads(out)["items"])


def ended(op: OperatorProcess, name: str) -> dict[str, Any]:
    st = status(op, "experiment", name)
    assert st.get("phase") in ("Succeeded", "Failed"), (st.get("phase"), st.get("trials"))
    return st


def owner_pids(owner: str) -> list[int]:
    """Trainer processes (launcher or worker) the local runtime runs for TrainingJob ``owner``."""

    def mine(p: Proc) -> bool:
        return p.cmdline()[1:3] == ["-m", "gyre.pipelines.trainer"] and f"GYRE_OWNER={owner}".encode() in (
            p.environ().split(b"\0")
        )

    return processes(mine)


@needs_horovod
def test_search_finds_a_better_model_than_the_template(operator: OperatorProcess, tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", rows=1500)
    spec = template(data, tmp_path / "models", epochs=3)
    operator.apply(
        f"""
apiVersion: gyre.dev/v1alpha1
kind: TrainingJob
metadata: {{name: baseline}}
spec:{spec}
"""
    )
    search = """
    objective: {metric: validation, goal: maximize}
    algorithm: {name: tpe, seed: 3, startupTrials: 2}
    parameters:
      - {name: hyperparameters.learningRate, type: double, min: 0.005, max: 0.2, log: true}
      - {name: hyperparameters.optimizer, type: categorical, values: [adam, sgd]}
    parallelTrials: 2
    maxTrials: 4"""
    operator.apply(experiment("tune", search, spec))

    st = eventually(lambda: ended(operator, "tune"), timeout=300, interval=1)
    assert st["phase"] == "Succeeded", st
    assert st["trials"] == {"running": 0, "completed": 4, "failed": 0, "pruned": 0, "stopped": 0}
    assert st["trialsTotal"] == 4
    baseline = eventually(lambda: _succeeded(operator, "baseline"), timeout=120, interval=1)
    best = st["best"]
    assert best["value"] > baseline["metrics"]["validation"] + 0.02, (best, baseline["metrics"])
    # The best trial is one of the children, its model is published for dependents.
    children = {t["metadata"]["name"]: t for t in trials(operator, "tune")}
    assert sorted(children) == ["tune-0", "tune-1", "tune-2", "tune-3"]
    winner = children[best["trial"]]
    assert winner["status"]["metrics"]["validation"] == best["value"]
    assert st["model"]["uri"] == winner["status"]["model"]["uri"] == best["modelUri"]
    assert Path(st["model"]["uri"].removeprefix("file://"), "metadata.json").exists()
    params = json.loads(winner["metadata"]["annotations"][TRIAL])["params"]
    assert winner["spec"]["hyperparameters"]["learningRate"] == params["hyperparameters.learningRate"]
    assert best["parameters"]["hyperparameters.optimizer"] == winner["spec"]["hyperparameters"]["optimizer"]
    for t in children.values():
        (ref,) = t["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"]) == ("Experiment", "tune")
        assert len(t["status"]["history"]) == 3, "per-epoch metrics in the trial's status"
    ready = operator.condition("experiment", "tune", "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "MaxTrialsReached"), ready
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    )
    labels = f'experiment="tune",namespace="{operator.namespace}"'
    assert f'gyre_experiment_trials{{{labels},state="completed"}} 4.0' in text
    assert f"gyre_experiment_best_value{{{labels}}} {best['value']}" in text
    columns = operator.cluster.kubectl("get", "gexp", "tune", "-n", operator.namespace).stdout
    header, row = (line.split() for line in columns.splitlines()[:2])
    shown = dict(zip(header, row, strict=False))
    assert (shown["TRIALS"], shown["DONE"]) == ("4", "4"), columns
    assert float(shown["BEST"]) == pytest.approx(best["value"], abs=1e-3), columns


def experiment_samples(op: OperatorProcess, name: str) -> dict[tuple[str, str], float]:
    """The operator's Experiment series for ``name``, by (metric, state)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, s.labels.get("state", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("gyre_experiment_") and s.labels.get("experiment") == name
    }


def _succeeded(op: OperatorProcess, name: str) -> dict[str, Any]:
    st = status(op, "trainingjob", name)
    assert st.get("phase") == "Succeeded", st.get("phase")
    return st


def test_a_pruned_trial_stops_its_workers(operator: OperatorProcess, tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", rows=6000)
    # adam at 0.05 learns within an epoch, sgd at 0.00001 not at all: once a good trial
    # completed, a bad one is below the median at its first epoch.
    search = """
    objective: {metric: validation, goal: maximize}
    algorithm: {name: random, seed: 2}
    earlyStopping: {algorithm: median, minTrials: 1, startStep: 0}
    parameters:
      - {name: hyperparameters.optimizer, type: categorical, values: [adam, sgd]}
      - {name: hyperparameters.learningRate, type: categorical, values: ["0.05", "0.00001"]}
    parallelTrials: 1
    maxTrials: 5"""
    # Enough epochs that a loaded machine still prunes the bad trial before its last one.
    epochs = 30
    operator.apply(
        experiment("prune", search, template(data, tmp_path / "models", epochs=epochs, backend="ddp"))
    )

    def a_pruned_trial() -> dict[str, Any]:
        for t in trials(operator, "prune"):
            if TRIAL + "-outcome" in t["metadata"]["annotations"]:
                return t
        raise AssertionError("no trial pruned yet")

    pruned = eventually(a_pruned_trial, timeout=300, interval=0.5)
    name = pruned["metadata"]["name"]
    outcome = json.loads(pruned["metadata"]["annotations"][TRIAL + "-outcome"])
    assert outcome["state"] == "pruned", outcome
    assert outcome["step"] < epochs, "stopped before its last epoch"
    assert pruned["spec"]["runPolicy"]["suspend"] is True
    eventually(lambda: _phase(operator, name, "Suspended"), timeout=60)
    eventually(lambda: owner_pids(name) == [], timeout=30, what=f"the processes of {name} gone")
    st = eventually(lambda: ended(operator, "prune"), timeout=300, interval=1)
    assert st["trials"]["pruned"] >= 1, st["trials"]
    assert st["trials"]["pruned"] + st["trials"]["completed"] == 5, st["trials"]


def _phase(op: OperatorProcess, name: str, phase: str) -> None:
    assert status(op, "trainingjob", name).get("phase") == phase


def test_sigkill_the_operator_again_and_again_during_a_search(
    operator: OperatorProcess, tmp_path: Path
) -> None:
    """An operator killed at any moment and started again neither loses, repeats nor
    double-counts a trial: every trial number exists once, is never re-created or rewritten,
    and the counts are those of the children."""
    data = make_data(tmp_path / "data", rows=800)
    search = """
    algorithm: {name: random, seed: 5}
    parameters:
      - {name: hyperparameters.learningRate, type: double, min: 0.001, max: 0.1, log: true}
      - {name: model.params.dropout, type: double, min: 0.0, max: 0.3}
    parallelTrials: 2
    maxTrials: 6"""
    operator.apply(experiment("crash", search, template(data, tmp_path / "models", epochs=2, backend="ddp")))
    first_seen: dict[str, tuple[str, str]] = {}  # name → (uid, trial annotation)

    def observe() -> None:
        for t in trials(operator, "crash"):
            md = t["metadata"]
            seen = first_seen.setdefault(md["name"], (md["uid"], md["annotations"][TRIAL]))
            assert seen == (md["uid"], md["annotations"][TRIAL]), f"{md['name']} re-created or rewritten"

    def progress() -> tuple[int, int]:
        children = trials(operator, "crash")
        done = sum(1 for t in children if (t.get("status") or {}).get("phase") == "Succeeded")
        return len(children), done

    rng = random.Random(7)
    kills = 0
    while kills < 4:
        # Killed only once this operator moved the search on (a trial created or finished),
        # at a random moment after: mid-search, with its own work applied.
        before = progress()
        eventually(
            lambda b=before: progress() != b or ended_or_none(operator, "crash"),
            timeout=180, interval=0.2, what="the search to move on",
        )  # fmt: skip
        time.sleep(rng.uniform(0.0, 1.5))
        observe()
        if ended_or_none(operator, "crash"):
            break
        operator.kill()
        kills += 1
        observe()
        operator.start()
    st = eventually(lambda: ended(operator, "crash"), timeout=300, interval=1)
    observe()
    assert kills >= 3, f"the search ended after {kills} kills"
    assert st["phase"] == "Succeeded", st
    children = trials(operator, "crash")
    names = sorted(t["metadata"]["name"] for t in children)
    numbers = sorted(json.loads(t["metadata"]["annotations"][TRIAL])["number"] for t in children)
    assert numbers == list(range(6)), names
    assert names == sorted(f"crash-{i}" for i in range(6)), "no retry: a killed operator fails no trial"
    params = {json.dumps(json.loads(t["metadata"]["annotations"][TRIAL])["params"]) for t in children}
    assert len(params) == 6, "no trial repeated another's parameters"
    assert all(t["metadata"]["generation"] == 1 for t in children), "no trial's spec rewritten"
    succeeded = sum(1 for t in children if t["status"].get("phase") == "Succeeded")
    assert st["trials"]["completed"] == succeeded == 6, st["trials"]
    assert st["trialsTotal"] == 6


def ended_or_none(op: OperatorProcess, name: str) -> bool:
    return (status(op, "experiment", name).get("phase") or "") in ("Succeeded", "Failed")
