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
    """What the search optimises."""

    metric: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$", max_length=128)] = "validation"
    """A metric the trials report, e.g. validation (the task's main validation metric) or validationLoss."""
    goal: Literal["minimize", "maximize"] = "maximize"
    """Whether higher (maximize, the default) or lower (minimize) values of the metric win."""
    target: float | None = None
    """Stop once a trial reaches this value."""


class Algorithm(ApiModel):
    """How the next trial's parameters are chosen (Optuna's samplers)."""

    name: Literal["random", "grid", "tpe", "cmaes"] = "tpe"
    """random, grid (every combination, needs step or values), tpe (Tree-structured Parzen
    Estimator, the default) or cmaes (CMA evolution strategy, numeric parameters)."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of the sampler: the same seed proposes the same parameters. Default 0."""


class EarlyStopping(ApiModel):
    """Stops trials that are doing worse than others before they finish."""

    algorithm: Literal["none", "median", "hyperband"] = "median"
    """median (the default): stop a trial whose intermediate metric is worse than the median of
    earlier trials at the same step; hyperband: successive halving; none: never stop early."""
    min_trials: Annotated[int, Field(ge=1, le=1000)] = 3
    """Trials that must finish before any is stopped early."""
    start_step: Annotated[int, Field(ge=0)] = 1
    """Reported step (epoch) before which no trial is stopped; default 1."""


class Parameter(ApiModel):
    """One searched parameter and its range."""

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
    """double (real numbers) and int need min and max; categorical needs values."""
    min: float | None = None
    """Smallest value tried (inclusive; numeric parameters)."""
    max: float | None = None
    """Largest value tried (inclusive; numeric parameters)."""
    log: bool | None = None
    """true samples on a log scale (e.g. learning rates); needs min > 0. Default false."""
    step: Annotated[float, Field(gt=0)] | None = None
    """Spacing of the values tried (numeric parameters); unset: continuous (double) or every
    integer (int)."""
    values: (
        Annotated[list[Annotated[str, Field(max_length=256)]], Field(min_length=1, max_length=256)] | None
    ) = None
    """The choices of a categorical parameter."""


class SearchSpec(ApiModel):
    """Hyperparameter search: trials are TrainingJobs made from trialTemplate."""

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
    """The parameters searched, each a field of the trial's TrainingJob spec."""
    parallel_trials: Annotated[int, Field(ge=1, le=64)] = 2
    """Trials running at once (at most maxTrials); default 2."""
    max_trials: Annotated[int, Field(ge=1, le=10000)] = 12
    """Trials in all, after which the search ends; default 12."""
    max_failed_trials: Annotated[int, Field(ge=0, le=10000)] = 3
    """Failed trials tolerated; one more fails the Experiment. Default 3."""
    trial_template: TrainingJobSpec
    """The TrainingJob each trial runs, with the parameters applied."""


class Variant(ApiModel):
    """One arm of an online experiment."""

    name: DnsName
    """Names the variant in status and analysis (unique within the experiment)."""
    inference_service: DnsName
    """A Gyre InferenceService in this namespace."""
    weight: Annotated[int, Field(ge=0, le=100)] | None = None
    """Fixed allocation: traffic share in percent."""


class Allocation(ApiModel):
    """How traffic is divided among the variants."""

    policy: Literal["fixed", "epsilonGreedy", "thompson", "ucb"] = "thompson"
    """fixed: each variant's weight; epsilonGreedy: the best variant, but a random one with
    probability epsilon; thompson (the default): Thompson sampling; ucb: upper confidence bound."""
    epsilon: Annotated[float, Field(ge=0, le=1)] = 0.1
    """For epsilonGreedy: share of traffic sent to a random variant, between 0 and 1; default 0.1."""


class Analysis(ApiModel):
    """How the winner is decided."""

    method: Literal["ttest", "bayesian", "sequential"] = "bayesian"
    """ttest (Welch's t-test), bayesian (probability to be best, the default) or sequential
    (a sequential test that may stop early)."""
    metric: Annotated[str, Field(max_length=128)] = "conversion"
    """A reward the feedback Stream carries per prediction."""
    min_samples: Annotated[int, Field(ge=1)] = 1000
    """Rewards each variant needs before any decision; default 1000."""
    significance: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """Error rate the decision accepts (p-value, or 1 - probability to be best); default 0.05."""


class Promotion(ApiModel):
    """What happens once a winner is decided."""

    auto: bool = False
    """Promote the winner to 100% traffic once the analysis decides."""


class OnlineSpec(ApiModel):
    """An online A/B or bandit test across InferenceServices, on live traffic."""

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
    """The InferenceServices compared, 2 to 16 (names unique)."""
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
    """Trials of the search, counted by state."""

    model_config = ConfigDict(frozen=False)

    running: int = 0
    """Trials whose TrainingJob is running."""
    completed: int = 0
    """Trials that finished and reported the objective."""
    failed: int = 0
    """Trials whose TrainingJob failed."""
    pruned: int = 0
    """Trials stopped early by earlyStopping."""


class BestTrial(ApiModel):
    """The best trial so far."""

    model_config = ConfigDict(frozen=False)

    trial: str | None = None
    """Name of the trial's TrainingJob."""
    value: float | None = None
    """Its objective metric."""
    parameters: dict[str, str] = {}
    """The parameter values it ran with, by parameter name."""


class ExperimentStatus(BaseStatus):
    """The experiment's conditions, trials or traffic allocation, and the result."""

    trials: TrialCounts | None = None
    best: BestTrial | None = None
    allocation: dict[str, float] = {}
    """Online: the current traffic share per variant, between 0 and 1."""
    winner: str | None = None
    """The winning trial or variant, once decided."""


ExperimentSpec.STATUS = ExperimentStatus
