"""The search engine of an Experiment: Optuna, driven by ask-and-tell, rebuilt every pass.

Nothing is kept in the operator's memory. Each pass reads the Experiment's trial TrainingJobs
(`trials_from_children`), rebuilds an in-memory Optuna study from them (parameters and the
sampler's notes from their annotation, values and per-epoch metrics from their status), asks
it for the next trials and asks its pruner about the running ones (`Search`). An operator
killed at any moment and started again therefore neither loses, repeats nor double-counts a
trial: what exists on the API server is the search.

A new trial's sampler is seeded from the Experiment's seed and the trial's number, so asking
again for the same trial (a pass repeated after a crash) proposes the same parameters.

Optuna is the ``search`` extra of the package, imported only here, only when a search runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gyre.api.experiment import Objective, Parameter, SearchSpec
from gyre.api.trainingjob import ModelRef
from gyre.builders.experiment import OUTCOME_ANNOTATION, TRAINING_JOB, TRIAL_ANNOTATION
from gyre.core.children import ChildState

if TYPE_CHECKING:
    import optuna

RUNNING = "running"
COMPLETED = "completed"
PRUNED = "pruned"
FAILED = "failed"
STOPPED = "stopped"  # stopped when the search ended (time budget, target, too many failures)
RETRYING = "retrying"  # its latest attempt failed; another attempt is due


class SearchEngineMissing(RuntimeError):
    """Optuna is not installed where the operator runs."""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise SearchEngineMissing(
            "the search engine Optuna is not installed in the operator's environment: "
            "pip install 'gyre[search]'"
        ) from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass(frozen=True)
class Attempt:
    """One trial TrainingJob as the API server holds it."""

    name: str
    attempt: int
    raw_note: str  # the annotations as written, declared again unchanged
    raw_outcome: str | None
    phase: str | None  # the TrainingJob's phase, once it reported this generation's run
    status: Mapping[str, Any]
    spec: Mapping[str, Any]
    note: Mapping[str, Any]  # the TRIAL_ANNOTATION, parsed
    outcome: Mapping[str, Any] | None  # the OUTCOME_ANNOTATION, parsed


@dataclass(frozen=True)
class Trial:
    """One trial of the search: its attempts (a retry is another) and what they show."""

    number: int
    attempts: tuple[Attempt, ...]  # oldest first
    state: str
    values: tuple[float, ...] | None = None  # completed: the objectives' values, in spec order
    intermediate: Mapping[int, float] = field(default_factory=dict)  # epoch → first objective
    message: str = ""

    @property
    def latest(self) -> Attempt:
        return self.attempts[-1]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.latest.note.get("params") or {})

    @property
    def model(self) -> ModelRef | None:
        model = self.latest.status.get("model")
        return ModelRef.model_validate(model) if isinstance(model, Mapping) and model.get("uri") else None


def _json(text: str | None) -> Mapping[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, Mapping) else None


def _attempt(child: ChildState) -> Attempt | None:
    note = _json(child.annotations.get(TRIAL_ANNOTATION))
    if note is None or not isinstance(note.get("number"), int):
        return None
    observed = child.status.get("observedGeneration") == child.generation
    return Attempt(
        name=child.name,
        attempt=int(note.get("attempt") or 0),
        raw_note=child.annotations.get(TRIAL_ANNOTATION, ""),
        raw_outcome=child.annotations.get(OUTCOME_ANNOTATION),
        phase=str(child.status.get("phase")) if observed and child.status.get("phase") else None,
        status=child.status if observed else {},
        spec=child.spec,
        note=note,
        outcome=_json(child.annotations.get(OUTCOME_ANNOTATION)),
    )


def epoch_values(status: Mapping[str, Any], metric: str) -> dict[int, float]:
    """A TrainingJob's per-epoch values of ``metric`` (status.history)."""
    out: dict[int, float] = {}
    for entry in status.get("history") or []:
        value = (entry.get("metrics") or {}).get(metric)
        if isinstance(value, int | float) and math.isfinite(value):
            out[int(entry.get("epoch") or 0)] = float(value)
    return out


def _judge(number: int, attempts: tuple[Attempt, ...], search: SearchSpec) -> Trial:
    latest = attempts[-1]
    goals = search.goals
    if latest.outcome is not None:
        inter = {int(k): float(v) for k, v in (latest.outcome.get("intermediate") or {}).items()}
        state = PRUNED if latest.outcome.get("state") == PRUNED else STOPPED
        return Trial(
            number, attempts, state, intermediate=inter, message=str(latest.outcome.get("reason", ""))
        )
    inter = epoch_values(latest.status, goals[0].metric)
    if latest.phase == "Succeeded":
        metrics = latest.status.get("metrics") or {}
        missing = [g.metric for g in goals if not isinstance(metrics.get(g.metric), int | float)]
        if missing:
            return Trial(
                number, attempts, FAILED, intermediate=inter,
                message=f"{latest.name} reported no {', '.join(missing)} in status.metrics",
            )  # fmt: skip
        values = tuple(float(metrics[g.metric]) for g in goals)
        return Trial(number, attempts, COMPLETED, values=values, intermediate=inter)
    if latest.phase == "Failed":
        failed = sum(1 for a in attempts if a.phase == "Failed" and a.outcome is None)
        message = str(latest.status.get("failureMessage") or "training failed")
        state = RETRYING if failed <= search.trial_retries else FAILED
        return Trial(number, attempts, state, intermediate=inter, message=message)
    return Trial(number, attempts, RUNNING, intermediate=inter)


def trials_from_children(children: Mapping[tuple[str, str], ChildState], search: SearchSpec) -> list[Trial]:
    """The search's trials, by number, from its TrainingJobs."""
    by_number: dict[int, list[Attempt]] = {}
    for child in children.values():
        if child.type.kind != TRAINING_JOB.kind:
            continue
        attempt = _attempt(child)
        if attempt is not None:
            by_number.setdefault(int(attempt.note["number"]), []).append(attempt)
    return [
        _judge(n, tuple(sorted(attempts, key=lambda a: a.attempt)), search)
        for n, attempts in sorted(by_number.items())
    ]


def grid_values(param: Parameter) -> list[Any]:
    """The values a grid search tries for ``param``."""
    if param.type == "categorical":
        return list(param.values or [])
    lo, hi = float(param.min or 0.0), float(param.max or 0.0)
    if param.type == "int":
        return list(range(int(lo), int(hi) + 1, max(int(param.step or 1), 1)))
    step = float(param.step or (hi - lo))
    n = math.floor((hi - lo) / step + 1e-9) + 1
    return [round(lo + i * step, 12) for i in range(n)]


def grid_size(search: SearchSpec) -> int:
    return math.prod(len(grid_values(p)) for p in search.parameters)


def trial_budget(search: SearchSpec) -> int:
    """How many trials the search runs: maxTrials, or fewer when a grid has fewer points."""
    if search.algorithm.name == "grid":
        return min(search.max_trials, grid_size(search))
    return search.max_trials


def _distribution(optuna: Any, p: Parameter) -> Any:
    d = optuna.distributions
    if p.type == "categorical":
        return d.CategoricalDistribution(list(p.values or []))
    if p.type == "int":
        return d.IntDistribution(int(p.min or 0), int(p.max or 0), log=bool(p.log), step=int(p.step or 1))
    return d.FloatDistribution(float(p.min or 0.0), float(p.max or 0.0), log=bool(p.log), step=p.step)


def _sampler(optuna: Any, search: SearchSpec, seed: int) -> Any:
    a, s = search.algorithm, optuna.samplers
    startup = {} if a.startup_trials is None else {"n_startup_trials": a.startup_trials}
    if a.name == "random":
        return s.RandomSampler(seed=seed)
    if a.name == "grid":
        return s.GridSampler({p.name: grid_values(p) for p in search.parameters}, seed=seed)
    if a.name == "tpe":
        # constant_liar: running trials count as bad ones, so parallel trials spread out
        return s.TPESampler(seed=seed, constant_liar=search.parallel_trials > 1, multivariate=True, **startup)
    if a.name == "cmaes":
        return s.CmaEsSampler(seed=seed, **startup)
    if a.name == "gp":
        try:
            return s.GPSampler(seed=seed, **startup)
        except ImportError as exc:  # GP fits its model with torch and scipy
            raise SearchEngineMissing(
                f"algorithm gp needs {exc.name or 'torch'} in the operator's environment "
                "(pip install 'gyre[search,train]'), or choose another algorithm"
            ) from exc
    population = {} if a.population_size is None else {"population_size": a.population_size}
    return s.NSGAIISampler(seed=seed, **population)


def _pruner(optuna: Any, search: SearchSpec) -> Any:
    es, p = search.early_stopping, optuna.pruners
    if es is None or es.algorithm == "none" or search.objectives:
        return p.NopPruner()
    if es.algorithm == "median":
        return p.MedianPruner(n_startup_trials=es.min_trials, n_warmup_steps=es.start_step)
    if es.algorithm == "successiveHalving":
        return p.SuccessiveHalvingPruner(min_resource=es.min_resource, reduction_factor=es.reduction_factor)
    max_resource = es.max_resource or search.trial_template.hyperparameters.epochs
    return p.HyperbandPruner(
        min_resource=es.min_resource,
        max_resource=max(max_resource, es.min_resource + 1),
        reduction_factor=es.reduction_factor,
    )


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number``: distinct per trial, the same on every pass."""
    return (seed * 1_000_003 + number * 7_919 + 17) % 2**31


def _direction(goal: Objective) -> str:
    return "maximize" if goal.goal == "maximize" else "minimize"


@dataclass(frozen=True)
class Asked:
    """A new trial's parameters and the note that lets a later pass rebuild it."""

    number: int
    params: Mapping[str, Any]
    note: str


class Search:
    """An in-memory Optuna study rebuilt from ``trials``."""

    def __init__(self, name: str, search: SearchSpec, trials: Sequence[Trial]) -> None:
        self.optuna = _optuna()
        self.spec = search
        self.distributions = {p.name: _distribution(self.optuna, p) for p in search.parameters}
        self.study: optuna.Study = self.optuna.create_study(
            study_name=name,
            directions=[_direction(g) for g in search.goals],
            sampler=_sampler(self.optuna, search, search.algorithm.seed),
            pruner=_pruner(self.optuna, search),
        )
        self.trials = {t.number: t for t in trials}
        self._add_all()

    def _frozen(self, t: Trial | None) -> Any:
        states = self.optuna.trial.TrialState
        create = self.optuna.trial.create_trial
        if t is None:  # a number whose TrainingJobs are gone (deleted by hand): nothing known
            return create(state=states.FAIL)
        note = t.latest.note
        dists = {
            k: self.optuna.distributions.json_to_distribution(v)
            for k, v in (note.get("distributions") or {}).items()
        }
        params = {k: v for k, v in (note.get("params") or {}).items() if k in dists}
        system_attrs = dict(note.get("systemAttrs") or {})
        inter = dict(t.intermediate)
        if t.state == COMPLETED:
            values = list(t.values or ())
            if len(values) != len(self.spec.goals):
                return create(state=states.FAIL, params=params, distributions=dists)
            return create(
                state=states.COMPLETE, params=params, distributions=dists, values=values,
                intermediate_values=inter, system_attrs=system_attrs,
            )  # fmt: skip
        state = {
            PRUNED: states.PRUNED,
            RUNNING: states.RUNNING,
            RETRYING: states.RUNNING,
        }.get(t.state, states.FAIL)
        return create(
            state=state, params=params, distributions=dists, intermediate_values=inter,
            system_attrs=system_attrs,
        )  # fmt: skip

    def _add_all(self) -> None:
        top = max(self.trials, default=-1)
        for number in range(top + 1):
            try:
                self.study.add_trial(self._frozen(self.trials.get(number)))
            except ValueError:  # parameters outside today's ranges (the spec was edited)
                self.study.add_trial(self.optuna.trial.create_trial(state=self.optuna.trial.TrialState.FAIL))

    @property
    def next_number(self) -> int:
        return len(self.study.get_trials(deepcopy=False))

    def ask(self) -> Asked:
        number = self.next_number
        if self.spec.algorithm.name != "grid":  # the grid's order is its seed's; the rest reseed per trial
            self.study.sampler = _sampler(
                self.optuna, self.spec, trial_seed(self.spec.algorithm.seed, number)
            )
        trial = self.study.ask(dict(self.distributions))
        frozen = self.study.get_trials(deepcopy=False)[trial.number]
        note = self._note(number, 0, dict(trial.params), dict(frozen.system_attrs))
        return Asked(number, dict(trial.params), note)

    def _note(
        self, number: int, attempt: int, params: Mapping[str, Any], system_attrs: Mapping[str, Any]
    ) -> str:
        dists = {
            k: self.optuna.distributions.distribution_to_json(d)
            for k, d in self.distributions.items()
            if k in params
        }
        return json.dumps(
            {"number": number, "attempt": attempt, "params": dict(params), "distributions": dists,
             "systemAttrs": dict(system_attrs)},
            sort_keys=True, separators=(",", ":"),
        )  # fmt: skip

    def note_of(self, t: Trial, attempt: int | None = None) -> str:
        """``t``'s note as the study holds it now (the pruner's notes on it included)."""
        frozen = self.study.get_trials(deepcopy=False)[t.number]
        attrs = {**(t.latest.note.get("systemAttrs") or {}), **frozen.system_attrs}
        note = dict(t.latest.note)
        return json.dumps(
            {**note, "attempt": t.latest.attempt if attempt is None else attempt, "systemAttrs": attrs},
            sort_keys=True, separators=(",", ":"),
        )  # fmt: skip

    def should_prune(self, t: Trial) -> bool:
        """The pruner's verdict on running trial ``t`` at its latest reported epoch."""
        if t.state != RUNNING or not t.intermediate:
            return False
        frozen = self.study.get_trials(deepcopy=False)[t.number]
        return bool(self.study.pruner.prune(self.study, frozen))

    def best(self) -> list[int]:
        """Numbers of the best completed trial (one objective) or of the Pareto front."""
        try:
            return sorted(t.number for t in self.study.best_trials)
        except ValueError:
            return []


def outcome(state: str, t: Trial, reason: str) -> str:
    """The OUTCOME_ANNOTATION of a trial the search stops: how, why, and where it stood."""
    step = max(t.intermediate, default=0)
    return json.dumps(
        {"state": state, "reason": reason, "step": step,
         "intermediate": {str(k): v for k, v in t.intermediate.items()}},
        sort_keys=True, separators=(",", ":"),
    )  # fmt: skip
