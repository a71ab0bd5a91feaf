"""Experiment reconcile: a hyperparameter search whose trials are child TrainingJobs.

Each pass reads the trials from the API server, rebuilds the Optuna study from them
(`gyre.controllers.search`), stops the trials the pruner or the end of the search stops
(suspended: their workers end), retries a failed trial up to `trialRetries`, and asks for new
trials while fewer than `parallelTrials` run and fewer than `maxTrials` exist. The search's
state — running, ended and why — is a small pure decision (`decide_search`) of the trials and
the clock, made the same way when building and when computing status. The online form
(traffic across InferenceServices, analysed and promoted) is `gyre.controllers.online`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ValidationError

from gyre.api.experiment import BestTrial, ExperimentSpec, ExperimentStatus, SearchSpec, TrialCounts
from gyre.api.trainingjob import TrainingJobSpec
from gyre.builders.experiment import (
    TRAINING_JOB,
    TrialPlan,
    apply_parameters,
    build_trial,
    parameter_value,
    trial_name,
)
from gyre.controllers import online as online_form
from gyre.controllers.base import Controller, ObjectMeta, Ref, Resolved, StatusInput, StatusOutput
from gyre.controllers.search import (
    COMPLETED,
    FAILED,
    PRUNED,
    RETRYING,
    RUNNING,
    STOPPED,
    Search,
    Trial,
    grid_size,
    outcome,
    trial_budget,
    trials_from_children,
)
from gyre.controllers.trainingjob import dataset_refs
from gyre.core import conditions as cnd
from gyre.core.children import ChildKind, ChildObject, ChildState
from gyre.core.durations import seconds_since
from gyre.core.workload import Workload
from gyre.runtimes.base import Runtime

POLL_S = 5.0  # trials' status changes bring the next pass sooner; this is the backstop


@dataclass(frozen=True)
class SearchDecision:
    """Where the search stands (`decide_search`)."""

    phase: str  # Running | Succeeded | Failed
    reason: str
    message: str
    stop_running: bool = False  # running trials are stopped (suspended)
    accepting: bool = False  # new trials (and retries) may start


def decide_search(search: SearchSpec, trials: Sequence[Trial], elapsed_s: float | None) -> SearchDecision:
    """The search's state: pure, first match wins (the order is the precedence)."""
    completed = [t for t in trials if t.state == COMPLETED]
    failed = sum(1 for t in trials if t.state == FAILED)
    running = sum(1 for t in trials if t.state in (RUNNING, RETRYING))
    budget = trial_budget(search)
    if failed > search.max_failed_trials:
        return SearchDecision(
            "Failed", "TooManyFailedTrials",
            f"{failed} trials failed, more than maxFailedTrials={search.max_failed_trials}",
            stop_running=True,
        )  # fmt: skip
    goal = search.goals[0]
    if goal.target is not None and not search.objectives:
        hit = [t for t in completed if t.values and _meets(t.values[0], goal.goal, goal.target)]
        if hit:
            return SearchDecision(
                "Succeeded", "TargetReached",
                f"trial {hit[0].number} reached {goal.metric} {(hit[0].values or (0.0,))[0]:.4g} "
                f"(target {goal.target:g})",
                stop_running=True,
            )  # fmt: skip
    if search.budget_seconds is not None and (elapsed_s or 0.0) > search.budget_seconds:
        return SearchDecision(
            "Succeeded" if completed else "Failed", "BudgetSpent",
            f"budgetSeconds={search.budget_seconds} passed with {len(completed)} trials completed",
            stop_running=True,
        )  # fmt: skip
    if len(trials) >= budget and running == 0:
        if not completed:
            return SearchDecision(
                "Failed", "NoTrialCompleted", f"all {len(trials)} trials ended, none completed"
            )
        return SearchDecision("Succeeded", "MaxTrialsReached", f"{len(trials)} of {budget} trials ran")
    return SearchDecision(
        "Running", "Searching", f"{len(trials)} of {budget} trials started, {running} running", accepting=True
    )


def _pruner_name(search: SearchSpec) -> str:
    return search.early_stopping.algorithm if search.early_stopping else "none"


def _meets(value: float, goal: str, target: float) -> bool:
    return value >= target if goal == "maximize" else value <= target


def plan_trials(
    meta: ObjectMeta, search: SearchSpec, trials: Sequence[Trial], engine: Search
) -> list[TrialPlan]:
    """Every trial attempt wanted now: those that exist (stopped where the search stops them),
    retries, and new trials asked of the engine."""
    decision = decide_search(search, trials, seconds_since(meta.created))
    plans: list[TrialPlan] = []
    running = 0
    for t in trials:
        for a in t.attempts[:-1]:
            plans.append(TrialPlan(t.number, a.attempt, t.params, a.raw_note, a.raw_outcome, a.spec))
        a = t.latest
        if t.state == RUNNING and a.outcome is None:
            if decision.stop_running:
                plans.append(
                    TrialPlan(
                        t.number,
                        a.attempt,
                        t.params,
                        a.raw_note,
                        outcome(STOPPED, t, decision.reason),
                        a.spec,
                    )
                )
            elif engine.should_prune(t):
                note = engine.note_of(t)
                reason = f"pruned at epoch {max(t.intermediate)} by {_pruner_name(search)}"
                plans.append(
                    TrialPlan(t.number, a.attempt, t.params, note, outcome(PRUNED, t, reason), a.spec)
                )
            else:
                plans.append(TrialPlan(t.number, a.attempt, t.params, engine.note_of(t), None, a.spec))
                running += 1
            continue
        plans.append(TrialPlan(t.number, a.attempt, t.params, a.raw_note, a.raw_outcome, a.spec))
        if t.state == RETRYING and decision.accepting and running < search.parallel_trials:
            plans.append(TrialPlan(t.number, a.attempt + 1, t.params, engine.note_of(t, a.attempt + 1)))
            running += 1
    while (
        decision.accepting and running < search.parallel_trials and engine.next_number < trial_budget(search)
    ):
        asked = engine.ask()
        plans.append(TrialPlan(asked.number, 0, asked.params, asked.note))
        running += 1
    return plans


class ExperimentController(Controller[ExperimentSpec]):
    kind = "Experiment"
    spec_model = ExperimentSpec
    child_kinds: ClassVar[tuple[ChildKind, ...]] = (TRAINING_JOB,)
    reads_children = True

    def references(self, spec: ExperimentSpec) -> list[Ref]:
        refs: list[Ref] = []
        if spec.search:
            refs += dataset_refs(spec.search.trial_template, "spec.search.trialTemplate")
        if spec.online:
            refs += online_form.references(spec.online)
        return refs

    def check(self, meta: ObjectMeta, spec: ExperimentSpec, deps: Mapping[str, Resolved]) -> list[str]:
        search = spec.search
        if search is None:
            return online_form.check(spec.online, deps) if spec.online else []
        problems: list[str] = []
        for i, p in enumerate(search.parameters):
            tried = list(p.values or []) if p.type == "categorical" else [p.min, p.max]
            for value in tried:
                try:
                    TrainingJobSpec.model_validate(apply_parameters(search, {p.name: value}))
                except ValidationError as exc:
                    err = exc.errors()[0]
                    problems.append(
                        f"spec.search.parameters[{i}] ({p.name}) = {parameter_value(p, value)!r} makes an "
                        f"invalid trial: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
                    )
                    break
        if search.algorithm.name == "grid" and grid_size(search) > 100_000:
            problems.append(f"the grid has {grid_size(search)} points, more than 100000: use fewer values")
        return problems

    def build(
        self,
        meta: ObjectMeta,
        spec: ExperimentSpec,
        deps: Mapping[str, Resolved],
        status: Mapping[str, Any],
        prepared: Any,
        *,
        served: frozenset[ChildKind] = frozenset(),
    ) -> list[Workload]:
        return online_form.build(spec.online, meta, deps, status) if spec.online else []

    async def converge(
        self,
        meta: ObjectMeta,
        spec: ExperimentSpec,
        deps: Mapping[str, Resolved],
        runtime: Runtime,
        prepared: Any,
        workloads: Sequence[Workload],
    ) -> Any:
        if spec.online is None:
            return prepared
        return await online_form.converge(spec.online, meta, deps, runtime, workloads)

    def build_children(
        self,
        meta: ObjectMeta,
        spec: ExperimentSpec,
        deps: Mapping[str, Resolved],
        status: Mapping[str, Any],
        prepared: Any,
        *,
        served: frozenset[ChildKind] = frozenset(),
        children: Mapping[tuple[str, str], ChildState] | None = None,
    ) -> list[ChildObject]:
        search = spec.search
        if search is None:
            return []
        trials = trials_from_children(children or {}, search)
        engine = Search(f"{meta.namespace}/{meta.name}", search, trials)
        return [build_trial(meta.name, search, p) for p in plan_trials(meta, search, trials, engine)]

    def compute_status(self, spec: ExperimentSpec, inp: StatusInput) -> StatusOutput:
        search = spec.search
        if search is None:
            assert spec.online is not None  # exactly one of search and online (the CRD's rule)
            return online_form.compute_status(spec.online, inp)
        meta, old = inp.meta, inp.old_status
        trials = trials_from_children(inp.children, search)
        elapsed = seconds_since(meta.created)
        decision = decide_search(search, trials, elapsed)
        out = ExperimentStatus(trials=count_trials(trials, ended=decision.phase != "Running"))
        out.trials_total = len(trials)
        out.start_time = meta.created or None
        best = Search(f"{meta.namespace}/{meta.name}", search, trials).best()
        by_number = {t.number: t for t in trials}
        results = [result(meta.name, by_number[n]) for n in best if n in by_number]
        if search.objectives:
            out.pareto_front = results
        elif results:
            out.best = results[0]
            out.winner = results[0].trial
            out.model = by_number[best[0]].model
        ended = decision.phase != "Running"
        out.completion_time = (old.get("completionTime") or cnd.now_rfc3339()) if ended else None
        summary = _summary(out, search)
        if decision.phase == "Succeeded":
            conds = [
                cnd.Cond(cnd.READY, True, decision.reason, f"{decision.message}; {summary}"),
                cnd.Cond(cnd.PROGRESSING, False, decision.reason, decision.message),
            ]
        elif decision.phase == "Failed":
            conds = [
                cnd.Cond(cnd.READY, False, decision.reason, decision.message),
                cnd.Cond(cnd.PROGRESSING, False, decision.reason, decision.message),
                cnd.Cond(cnd.DEGRADED, True, decision.reason, decision.message),
            ]
        else:
            conds = [
                cnd.Cond(cnd.READY, False, decision.reason, f"{decision.message}; {summary}"),
                cnd.Cond(cnd.PROGRESSING, True, decision.reason, decision.message),
            ]
        requeue = None
        if not ended:
            requeue = POLL_S
            if search.budget_seconds is not None and elapsed is not None:
                requeue = max(0.5, min(POLL_S, search.budget_seconds - elapsed + 0.5))
        return StatusOutput(
            status=out,
            conditions=conds,
            phase=decision.phase,
            remove=("best", "pareto_front", "model", "winner", "completion_time"),
            requeue_after=requeue,
        )


def count_trials(trials: Sequence[Trial], ended: bool) -> TrialCounts:
    """Every count set, zeros included: status is written as a merge patch, so a count left
    out would keep its old value."""
    counts = dict.fromkeys((RUNNING, COMPLETED, PRUNED, STOPPED, FAILED), 0)
    for t in trials:
        state = FAILED if (t.state == RETRYING and ended) else t.state
        counts[RUNNING if state == RETRYING else state] += 1
    return TrialCounts(**counts)


def result(experiment: str, t: Trial) -> BestTrial:
    model = t.model
    return BestTrial(
        trial=trial_name(experiment, t.number, t.latest.attempt),
        number=t.number,
        value=(t.values or (None,))[0],
        values=list(t.values) if t.values and len(t.values) > 1 else None,
        parameters={k: str(v) for k, v in t.params.items()},
        model_uri=model.uri if model else None,
    )


def _summary(out: ExperimentStatus, search: SearchSpec) -> str:
    if out.best is not None and out.best.value is not None:
        return f"best {search.goals[0].metric} {out.best.value:.4g} ({out.best.trial})"
    if out.pareto_front:
        return f"{len(out.pareto_front)} trials on the Pareto front"
    return "no trial completed yet"
