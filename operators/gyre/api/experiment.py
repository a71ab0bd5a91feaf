"""`Experiment`: hyperparameter search over TrainingJobs, or an online A/B or bandit test.

The online form allocates traffic across InferenceServices and promotes the winner.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field

from gyre.api._base import (
    ApiModel,
    BaseStatus,
    DnsName,
    Kind,
    KindInfo,
    age_column,
    cel,
    exactly_one,
    ready_column,
    validations,
)
from gyre.api.trainingjob import TrainingJobSpec


class Objective(ApiModel):
    metric: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$", max_length=128)] = "validation"
    """A metric the trials report, e.g. validation (the task's main validation metric) or validationLoss."""
    goal: Literal["minimize", "maximize"] = "maximize"
    target: float | None = None
    """Stop once a trial reaches this value."""


class Algorithm(ApiModel):
    name: Literal["random", "grid", "tpe", "cmaes"] = "tpe"
    seed: Annotated[int, Field(ge=0)] = 0


class EarlyStopping(ApiModel):
    algorithm: Literal["none", "median", "hyperband"] = "median"
    min_trials: Annotated[int, Field(ge=1, le=1000)] = 3
    """Trials that must finish before any is stopped early."""
    start_step: Annotated[int, Field(ge=0)] = 1


class Parameter(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.type == 'categorical' ? has(self.values)"
                " : (has(self.min) && has(self.max) && self.min < self.max)",
                "numeric parameters need min < max; categorical parameters need values",
            ),
            cel(
                "!has(self.log) || !self.log || (has(self.min) && self.min > 0.0)",
                "a log-scaled parameter needs min > 0",
                ".log",
            ),
        )
    )

    name: Annotated[
        str,
        Field(pattern=r"^(hyperparameters|model\.params)\.[A-Za-z_][A-Za-z0-9_]*$", max_length=160),
    ]
    """The trial field it sets, e.g. hyperparameters.learningRate or model.params.dropout."""
    type: Literal["double", "int", "categorical"]
    min: float | None = None
    max: float | None = None
    log: bool | None = None
    step: Annotated[float, Field(gt=0)] | None = None
    values: (
        Annotated[list[Annotated[str, Field(max_length=256)]], Field(min_length=1, max_length=256)] | None
    ) = None


class SearchSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.parallelTrials <= self.maxTrials",
                "parallelTrials cannot exceed maxTrials",
                ".parallelTrials",
            ),
        )
    )

    objective: Objective = Objective()
    algorithm: Algorithm = Algorithm()
    early_stopping: EarlyStopping | None = None
    parameters: Annotated[list[Parameter], Field(min_length=1, max_length=64)]
    parallel_trials: Annotated[int, Field(ge=1, le=64)] = 2
    max_trials: Annotated[int, Field(ge=1, le=10000)] = 12
    max_failed_trials: Annotated[int, Field(ge=0, le=10000)] = 3
    trial_template: TrainingJobSpec
    """The TrainingJob each trial runs, with the parameters applied."""


class Variant(ApiModel):
    name: DnsName
    inference_service: DnsName
    """A Gyre InferenceService in this namespace."""
    weight: Annotated[int, Field(ge=0, le=100)] | None = None
    """Fixed allocation: traffic share in percent."""


class Allocation(ApiModel):
    policy: Literal["fixed", "epsilonGreedy", "thompson", "ucb"] = "thompson"
    epsilon: Annotated[float, Field(ge=0, le=1)] = 0.1


class Analysis(ApiModel):
    method: Literal["ttest", "bayesian", "sequential"] = "bayesian"
    metric: Annotated[str, Field(max_length=128)] = "conversion"
    """A reward the feedback Stream carries per prediction."""
    min_samples: Annotated[int, Field(ge=1)] = 1000
    significance: Annotated[float, Field(gt=0, lt=1)] = 0.05


class Promotion(ApiModel):
    auto: bool = False
    """Promote the winner to 100% traffic once the analysis decides."""


class OnlineSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.variants.all(v, self.variants.exists_one(w, w.name == v.name))",
                "variant names must be unique",
                ".variants",
            ),
            cel(
                "self.allocation.policy != 'fixed' || self.variants.all(v, has(v.weight))",
                "allocation.policy fixed needs a weight on every variant",
                ".variants",
            ),
        )
    )

    variants: Annotated[list[Variant], Field(min_length=2, max_length=16)]
    allocation: Allocation = Allocation()
    analysis: Analysis = Analysis()
    feedback_stream: DnsName | None = None
    """The Stream that carries outcomes (rewards) back."""
    promotion: Promotion = Promotion()


class ExperimentSpec(Kind):
    """Hyperparameter search (trials are TrainingJobs) or an online test across InferenceServices."""

    model_config = ConfigDict(json_schema_extra=validations(exactly_one("search", "online")))

    INFO: ClassVar[KindInfo] = KindInfo(
        kind="Experiment",
        plural="experiments",
        singular="experiment",
        short_names=["gexp"],
        printer_columns=[
            *ready_column(),
            {"name": "Trials", "type": "integer", "jsonPath": ".status.trials.completed"},
            {"name": "Best", "type": "number", "jsonPath": ".status.best.value"},
            {"name": "Winner", "type": "string", "jsonPath": ".status.winner"},
            age_column(),
        ],
    )

    search: SearchSpec | None = None
    online: OnlineSpec | None = None


class TrialCounts(ApiModel):
    model_config = ConfigDict(frozen=False)

    running: int = 0
    completed: int = 0
    failed: int = 0
    pruned: int = 0


class BestTrial(ApiModel):
    model_config = ConfigDict(frozen=False)

    trial: str | None = None
    value: float | None = None
    parameters: dict[str, str] = {}


class ExperimentStatus(BaseStatus):
    trials: TrialCounts | None = None
    best: BestTrial | None = None
    allocation: dict[str, float] = {}
    winner: str | None = None


ExperimentSpec.STATUS = ExperimentStatus
