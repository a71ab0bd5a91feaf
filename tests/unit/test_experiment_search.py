"""The search form's planning, pass by pass, against the trials' stored state.

Each pass here gets only what the API server would hold (the trial TrainingJobs with their
annotations, spec and status), never anything kept from the pass before: that is what makes
an operator restarted at any moment neither lose, repeat nor double-count a trial.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from gyre.api.experiment import ExperimentSpec
from gyre.builders.experiment import OUTCOME_ANNOTATION, TRAINING_JOB, TRIAL_ANNOTATION
from gyre.controllers.base import ObjectMeta, StatusInput
from gyre.controllers.experiment import ExperimentController, decide_search
from gyre.controllers.search import COMPLETED, FAILED, RUNNING, Trial, grid_size, trials_from_children
from gyre.core.children import ChildObject, ChildState

pytest.importorskip("optuna", reason="the search extra (make setup installs it)")

CONTROLLER = ExperimentController()
META = ObjectMeta("Experiment", "ns", "tune", "uid-1", 1, created="2099-01-01T00:00:00Z")


def spec(**search: Any) -> ExperimentSpec:
    body = {
        "parameters": [
            {"name": "hyperparameters.learningRate", "type": "double", "min": 0.001, "max": 1.0, "log": True},
            {"name": "model.params.dropout", "type": "double", "min": 0.0, "max": 0.5},
        ],
        "parallelTrials": 2,
        "maxTrials": 6,
        "trialTemplate": {
            "dataset": {"path": "file:///data", "label": "y"},
            "hyperparameters": {"epochs": 4},
            "output": {"uri": "file:///models"},
            "runPolicy": {"ttlSecondsAfterFinished": 10},
        },
    } | search
    return ExperimentSpec.model_validate({"search": body})


Store = dict[tuple[str, str], ChildState]


def store_apply(store: Store, wanted: list[ChildObject]) -> Store:
    """What the API server holds after the operator applied ``wanted`` (declarative: the
    children not wanted are pruned; status is the TrainingJob controller's and stays)."""
    out: Store = {}
    for c in wanted:
        old = store.get(c.key)
        spec_ = dict(c.body["spec"])
        generation = (old.generation if old else 1) + (1 if old and dict(old.spec) != spec_ else 0)
        out[c.key] = ChildState(
            TRAINING_JOB, c.name, f"uid-{c.name}", generation,
            dict(old.status) if old else {},
            annotations=dict(c.body["metadata"]["annotations"]), spec=spec_,
        )  # fmt: skip
    return out


def one_pass(s: ExperimentSpec, store: Store) -> Store:
    wanted = CONTROLLER.build_children(META, s, {}, {}, None, children=dict(store))
    return store_apply(store, wanted)


def finish(store: Store, name: str, status: Mapping[str, Any]) -> None:
    c = store[("TrainingJob", name)]
    store[c.key] = ChildState(
        c.type, c.name, c.uid, c.generation, {"observedGeneration": c.generation, **status},
        annotations=c.annotations, spec=c.spec,
    )  # fmt: skip


def note(c: ChildState) -> dict[str, Any]:
    return dict(json.loads(c.annotations[TRIAL_ANNOTATION]))


def quality(params: Mapping[str, Any]) -> float:
    return (
        1.0
        - abs(float(params["hyperparameters.learningRate"]) - 0.05)
        - float(params["model.params.dropout"])
    )


def run_to_end(s: ExperimentSpec, score: Callable[[Mapping[str, Any]], float] = quality) -> Store:
    store: Store = {}
    for _ in range(50):
        store = one_pass(s, store)
        store = one_pass(s, store)  # a repeated pass (after a crash) changes nothing
        running = [c for c in store.values() if not c.status]
        if not running:
            break
        first = min(running, key=lambda c: note(c)["number"])
        finish(
            store, first.name, {"phase": "Succeeded", "metrics": {"validation": score(note(first)["params"])}}
        )
    return store


def test_trials_are_numbered_once_applied_with_their_parameters_and_never_changed() -> None:
    s = spec()
    store: Store = {}
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(20):
        store = one_pass(s, store)
        for c in store.values():
            n = note(c)
            assert seen.setdefault(c.name, n["params"]) == n["params"], "a trial's parameters changed"
            lr = c.spec["hyperparameters"]["learningRate"]
            assert lr == n["params"]["hyperparameters.learningRate"]
            assert c.spec["model"]["params"]["dropout"] == n["params"]["model.params.dropout"]
            assert "ttlSecondsAfterFinished" not in c.spec["runPolicy"]
            assert ": null" not in json.dumps(c.spec), "the API server rejects null for an unset field"
        running = [c for c in store.values() if not c.status]
        assert len(running) <= 2, "parallelTrials exceeded"
        if running:
            finish(store, running[0].name, {"phase": "Succeeded", "metrics": {"validation": 0.5}})
    assert sorted(c.name for c in store.values()) == [f"tune-{i}" for i in range(6)]
    assert len({json.dumps(p, sort_keys=True) for p in seen.values()}) == 6


def test_a_repeated_pass_declares_the_same_trials() -> None:
    s = spec()
    store = one_pass(s, {})
    again = CONTROLLER.build_children(META, s, {}, {}, None, children=dict(store))
    assert {c.name: dict(c.body["spec"]) for c in again} == {k[1]: dict(v.spec) for k, v in store.items()}


def test_status_counts_and_best_come_from_the_trials() -> None:
    s = spec()
    store = run_to_end(s)
    trials = trials_from_children(store, s.search)  # type: ignore[arg-type]
    assert [t.state for t in trials] == [COMPLETED] * 6
    out = CONTROLLER.compute_status(
        s,
        StatusInput(meta=META, old_status={}, deps={}, workloads=[], observed={}, facts=None, children=store),
    )
    # as the pass writes it: only what it set, a merge patch (a zero must be set too)
    status = out.status.model_dump(by_alias=True, exclude_unset=True)
    assert out.phase == "Succeeded"
    assert status["trials"] == {"running": 0, "completed": 6, "failed": 0, "pruned": 0, "stopped": 0}
    best = max(trials, key=lambda t: (t.values or (0,))[0])
    assert status["best"]["number"] == best.number
    assert status["best"]["value"] == pytest.approx(quality(best.params))


def test_a_failed_trial_is_retried_with_the_same_parameters_then_counts_as_failed() -> None:
    s = spec(maxTrials=1, parallelTrials=1, trialRetries=1, maxFailedTrials=0)
    store = one_pass(s, {})
    finish(store, "tune-0", {"phase": "Failed", "failureMessage": "boom"})
    store = one_pass(s, store)
    assert sorted(k[1] for k in store) == ["tune-0", "tune-0-r1"]
    assert (
        note(store[("TrainingJob", "tune-0-r1")])["params"]
        == note(store[("TrainingJob", "tune-0")])["params"]
    )
    finish(store, "tune-0-r1", {"phase": "Failed", "failureMessage": "boom"})
    store = one_pass(s, store)
    assert sorted(k[1] for k in store) == ["tune-0", "tune-0-r1"], "no second retry"
    trials = trials_from_children(store, s.search)  # type: ignore[arg-type]
    assert [t.state for t in trials] == [FAILED]
    assert decide_search(s.search, trials, 0).reason == "TooManyFailedTrials"  # type: ignore[arg-type]


def history(values: list[float]) -> list[dict[str, Any]]:
    return [{"epoch": i + 1, "metrics": {"validation": v}} for i, v in enumerate(values)]


@pytest.mark.parametrize("algorithm", ["median", "successiveHalving"])
def test_a_trial_worse_than_the_others_at_the_same_epoch_is_pruned_and_suspended(algorithm: str) -> None:
    s = spec(
        maxTrials=8, parallelTrials=1,
        earlyStopping={"algorithm": algorithm, "minTrials": 2, "startStep": 0, "reductionFactor": 2},
    )  # fmt: skip
    store: Store = {}
    for i in range(3):  # three good trials, seen running by the pruner, then finished
        store = one_pass(s, store)
        finish(store, f"tune-{i}", {"phase": "Running", "history": history([0.8, 0.85])})
        store = one_pass(s, store)
        finish(store, f"tune-{i}", {"phase": "Succeeded", "metrics": {"validation": 0.9},
                                    "history": history([0.8, 0.85, 0.9])})  # fmt: skip
    store = one_pass(s, store)
    finish(store, "tune-3", {"phase": "Running", "history": history([0.2])})
    store = one_pass(s, store)
    bad = store[("TrainingJob", "tune-3")]
    assert bad.spec["runPolicy"]["suspend"] is True, "a pruned trial's workers are stopped"
    out = json.loads(bad.annotations[OUTCOME_ANNOTATION])
    assert out["state"] == "pruned"
    assert out["intermediate"] == {"1": 0.2}
    # Its status is reset by the new generation; the outcome annotation keeps what it was.
    finish(store, "tune-3", {"phase": "Suspended"})
    trials = trials_from_children(store, s.search)  # type: ignore[arg-type]
    assert trials[3].state == "pruned"
    assert trials[4].state == RUNNING, "a new trial took the pruned one's place"


def test_the_time_budget_stops_running_trials() -> None:
    s = spec(budgetSeconds=1)
    old = ObjectMeta("Experiment", "ns", "tune", "uid-1", 1, created="2000-01-01T00:00:00Z")
    store: Store = {}
    wanted = CONTROLLER.build_children(old, s, {}, {}, None, children={})
    assert wanted == [], "no trial starts past the budget"
    store = one_pass(s, {})  # started in time (META's creation is in the future)
    wanted = CONTROLLER.build_children(old, s, {}, {}, None, children=dict(store))
    assert all(c.body["spec"]["runPolicy"]["suspend"] is True for c in wanted)
    assert {json.loads(c.body["metadata"]["annotations"][OUTCOME_ANNOTATION])["state"] for c in wanted} == {
        "stopped"
    }


def test_grid_runs_every_point_once() -> None:
    s = spec(
        algorithm={"name": "grid"}, maxTrials=100,
        parameters=[
            {"name": "hyperparameters.optimizer", "type": "categorical", "values": ["adam", "sgd"]},
            {"name": "hyperparameters.batchSize", "type": "int", "min": 16, "max": 48, "step": 16},
        ],
    )  # fmt: skip
    assert grid_size(s.search) == 6  # type: ignore[arg-type]
    store = run_to_end(s, lambda p: 0.5)
    points = {
        (c.spec["hyperparameters"]["optimizer"], c.spec["hyperparameters"]["batchSize"])
        for c in store.values()
    }
    assert len(store) == 6
    assert points == {(o, b) for o in ("adam", "sgd") for b in (16, 32, 48)}


@pytest.mark.parametrize(("algorithm", "trials"), [("random", 5), ("tpe", 5), ("cmaes", 5), ("gp", 3)])
def test_every_single_objective_sampler_runs(algorithm: str, trials: int) -> None:
    s = spec(algorithm={"name": algorithm, "startupTrials": 2}, maxTrials=trials)
    store = run_to_end(s)
    assert len(store) == trials


def test_several_objectives_give_a_pareto_front() -> None:
    s = spec(
        algorithm={"name": "nsga2", "populationSize": 4}, maxTrials=6,
        objectives=[
            {"metric": "validation", "goal": "maximize"},
            {"metric": "modelParameters", "goal": "minimize"},
        ],
    )  # fmt: skip
    store: Store = {}
    for _ in range(20):
        store = one_pass(s, store)
        for c in store.values():
            if not c.status:
                p = note(c)["params"]
                size = 1000 * float(p["model.params.dropout"])
                metrics = {"validation": quality(p), "modelParameters": size}
                finish(store, c.name, {"phase": "Succeeded", "metrics": metrics})
    out = CONTROLLER.compute_status(
        s,
        StatusInput(meta=META, old_status={}, deps={}, workloads=[], observed={}, facts=None, children=store),
    )
    front = out.status.model_dump(by_alias=True, exclude_none=True)["paretoFront"]
    trials = {t.number: t for t in trials_from_children(store, s.search)}  # type: ignore[arg-type]
    assert front
    for f in front:  # nothing beats a front member on both objectives
        v = trials[f["number"]].values or (0.0, 0.0)
        for t in trials.values():
            w = t.values or (0.0, 0.0)
            assert not (w[0] >= v[0] and w[1] <= v[1] and w != v)


def test_objective_and_a_target() -> None:
    s = spec(objective={"metric": "validation", "goal": "maximize", "target": 0.9})
    t = [Trial(0, (), COMPLETED, values=(0.95,))]
    assert decide_search(s.search, t, 0).reason == "TargetReached"  # type: ignore[arg-type]
    t = [Trial(0, (), COMPLETED, values=(0.85,))]
    assert decide_search(s.search, t, 0).reason == "Searching"  # type: ignore[arg-type]


def test_plot_draws_the_rebuilt_study_into_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra (make setup installs it)")
    from gyre.controllers.search import Search
    from gyre.operator.plot import plot

    s = spec()
    store = run_to_end(s)
    search = Search("ns/tune", s.search, trials_from_children(store, s.search))  # type: ignore[arg-type]
    written, skipped = plot(search, tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert names == ["history.png", "importances.png", "intermediate-values.png", "parallel-coordinates.png"]
    assert skipped == []
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_hpo_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    from gyre.bench import hpo

    assert hpo.main(["--seeds", "2", "--max-trials", "20"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["trials_to_1pct"]["tpe"]["per_seed"]) == 2
    assert all(1 <= n <= 20 for n in out["trials_to_1pct"]["random"]["per_seed"])
    assert out["tpe_over_random"] == pytest.approx(
        out["trials_to_1pct"]["tpe"]["median"] / out["trials_to_1pct"]["random"]["median"], abs=1e-3
    )
