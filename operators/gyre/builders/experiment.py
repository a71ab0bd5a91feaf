"""An Experiment's trials: TrainingJobs built from its trialTemplate with parameters applied.

Pure. A trial is named by the Experiment and its number (a retry adds its attempt), so a
pass repeated after a crash declares the very same objects. What the search needs to rebuild
itself from the API server rides on the trial: its number, attempt, parameters and the
sampler's notes in one annotation (`TRIAL_ANNOTATION`), and, once the search stopped it, how
and where it stood in another (`OUTCOME_ANNOTATION`); a stopped trial is suspended, which
ends its workers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gyre.api import API_VERSION
from gyre.api.experiment import Parameter, SearchSpec
from gyre.core.children import ChildKind, ChildObject

TRAINING_JOB = ChildKind(API_VERSION, "TrainingJob", "trainingjobs")
TRIAL_ANNOTATION = "gyre.dev/trial"
OUTCOME_ANNOTATION = "gyre.dev/trial-outcome"
LABEL_EXPERIMENT = "gyre.dev/experiment"
LABEL_TRIAL = "gyre.dev/trial-number"


def trial_name(experiment: str, number: int, attempt: int = 0) -> str:
    """``<experiment>-<number>``, ``-r<attempt>`` added for a retry."""
    base = f"{experiment}-{number}"
    return base if attempt == 0 else f"{base}-r{attempt}"


def parameter_value(param: Parameter, raw: Any) -> Any:
    """What a suggested value sets in the trial's spec: an int for int parameters; a
    categorical choice that reads as JSON as that value (``"[64, 32]"``, ``"0.5"``)."""
    if param.type == "int":
        return int(raw)
    if param.type == "double":
        return float(raw)
    try:
        return json.loads(str(raw))
    except ValueError:
        return str(raw)


def apply_parameters(spec: SearchSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's TrainingJob spec: the template as written, each parameter set at its path;
    a trial is never deleted by a TTL (the search's record of it would go)."""
    body: dict[str, Any] = copy.deepcopy(
        spec.trial_template.model_dump(mode="json", by_alias=True, exclude_none=True)
    )
    by_name = {p.name: p for p in spec.parameters}
    for name, raw in params.items():
        param = by_name.get(name)
        if param is None:
            continue  # a parameter since removed from the spec: the trial keeps what it ran
        *parents, leaf = name.split(".")
        node = body
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = parameter_value(param, raw)
    body.setdefault("runPolicy", {}).pop("ttlSecondsAfterFinished", None)
    return body


@dataclass(frozen=True)
class TrialPlan:
    """One trial attempt as the search wants it."""

    number: int
    attempt: int
    params: Mapping[str, Any]  # by parameter name, as the sampler suggested them
    note: str  # the TRIAL_ANNOTATION (JSON: number, attempt, params, distributions, sampler's notes)
    outcome: str | None = None  # the OUTCOME_ANNOTATION once stopped (pruned or out of budget)
    spec: Mapping[str, Any] | None = None  # the spec it was created with (kept as it is)


def build_trial(experiment: str, search: SearchSpec, plan: TrialPlan) -> ChildObject:
    """The trial's TrainingJob: the spec it was first created with (a later template edit
    does not restart a running trial), suspended once the search stopped it."""
    spec = copy.deepcopy(dict(plan.spec)) if plan.spec else apply_parameters(search, plan.params)
    if plan.outcome is not None:
        spec.setdefault("runPolicy", {})["suspend"] = True
    annotations = {TRIAL_ANNOTATION: plan.note}
    if plan.outcome is not None:
        annotations[OUTCOME_ANNOTATION] = plan.outcome
    return ChildObject(
        TRAINING_JOB,
        trial_name(experiment, plan.number, plan.attempt),
        {"metadata": {"annotations": annotations}, "spec": spec},
        labels={LABEL_EXPERIMENT: experiment, LABEL_TRIAL: str(plan.number)},
    )
