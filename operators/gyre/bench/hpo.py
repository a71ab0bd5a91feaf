"""``gyre bench hpo``: how fast the search finds a known optimum, TPE against random, and what
the operator adds per trial.

Prints one JSON object:

* ``trials_to_1pct``: for ``tpe`` and ``random``, the median (and each seed's) number of
  trials until a trial is within 1% of the optimum of a cheap objective with a known optimum
  (a smooth bump of height 1 over a log-scaled learning rate and a dropout, as a search over
  a model would see; within 1%: a value >= 0.99, about 1.3% of the space). The samplers are built exactly
  as an Experiment builds them (`gyre.controllers.search`), over ``--seeds`` seeds in this
  run; a seed that has not got there after ``--max-trials`` counts as ``--max-trials``;
* ``tpe_over_random``: TPE's median over random's (goal <= 0.5);
* with ``--operator``, through the operator on the local runtime and a local control plane:
  ``first_trial_s``, seconds from creating an Experiment to its first trial TrainingJob
  Running (goal <= 5), and ``overhead_per_trial_s``, the median seconds between a trial
  Succeeded and the next trial created, one trial at a time (goal <= 2);
* ``goals``: ``{name: {value, goal, met}}``; reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from typing import Any

from gyre.api.experiment import SearchSpec
from gyre.controllers.search import _optuna, _sampler

GOAL_TPE_OVER_RANDOM = 0.5
GOAL_FIRST_TRIAL_S = 5.0
GOAL_OVERHEAD_S = 2.0
OPTIMUM = {"lr": 0.003, "dropout": 0.2}


def objective(params: dict[str, Any]) -> float:
    """Height 1 at `OPTIMUM`, falling off smoothly in log10(lr) and dropout."""
    d = ((math.log10(params["lr"]) - math.log10(OPTIMUM["lr"])) / 2.5) ** 2 + (
        (params["dropout"] - OPTIMUM["dropout"]) / 0.4
    ) ** 2
    return math.exp(-d)


def search_spec(algorithm: str, seed: int) -> SearchSpec:
    return SearchSpec.model_validate(
        {
            "algorithm": {"name": algorithm, "seed": seed},
            "parallelTrials": 1,
            "parameters": [
                {
                    "name": "hyperparameters.learningRate",
                    "type": "double",
                    "min": 1e-4,
                    "max": 1.0,
                    "log": True,
                },
                {"name": "model.params.dropout", "type": "double", "min": 0.0, "max": 0.6},
            ],
            "trialTemplate": {
                "dataset": {"path": "file:///bench", "label": "y"},
                "output": {"uri": "file:///b"},
            },
        }
    )


def trials_to_target(algorithm: str, seed: int, max_trials: int, target: float = 0.99) -> int:
    optuna = _optuna()
    spec = search_spec(algorithm, seed)
    study = optuna.create_study(direction="maximize", sampler=_sampler(optuna, spec, seed))
    dists = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
        "dropout": optuna.distributions.FloatDistribution(0.0, 0.6),
    }
    for n in range(1, max_trials + 1):
        trial = study.ask(dists)
        value = objective(trial.params)
        study.tell(trial, value)
        if value >= target:
            return n
    return max_trials


def goal(value: float | None, target: float, lower_is_better: bool = True) -> dict[str, Any]:
    met = None if value is None else (value <= target if lower_is_better else value >= target)
    return {"value": value, "goal": target, "met": met}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gyre bench hpo", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--max-trials", type=int, default=400)
    p.add_argument("--operator", action="store_true", help="also measure through the operator")
    args = p.parse_args(argv)
    out: dict[str, Any] = {"seeds": args.seeds, "max_trials": args.max_trials, "trials_to_1pct": {}}
    for algorithm in ("tpe", "random"):
        counts = [trials_to_target(algorithm, s, args.max_trials) for s in range(args.seeds)]
        print(f"[bench hpo] {algorithm}: {counts}", file=sys.stderr, flush=True)
        out["trials_to_1pct"][algorithm] = {"median": statistics.median(counts), "per_seed": counts}
    ratio = out["trials_to_1pct"]["tpe"]["median"] / out["trials_to_1pct"]["random"]["median"]
    out["tpe_over_random"] = round(ratio, 3)
    goals = {"tpe_over_random": goal(out["tpe_over_random"], GOAL_TPE_OVER_RANDOM)}
    if args.operator:
        from gyre.bench.hpo_operator import measure

        measured = measure()
        out.update(measured)
        goals["first_trial_s"] = goal(measured["first_trial_s"], GOAL_FIRST_TRIAL_S)
        goals["overhead_per_trial_s"] = goal(measured["overhead_per_trial_s"], GOAL_OVERHEAD_S)
    out["goals"] = goals
    print(json.dumps(out))
    return 0
