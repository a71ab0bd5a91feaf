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
from gyre.api.trainingjob import ModelRef, TrainingJobSpec


class Objective(ApiModel):
    """What the search optimises: a metric of the trials' TrainingJob status."""

    metric: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)] = "validation"
    """A key of the trial TrainingJob's status.metrics: validation (the task's main validation
    metric, the default), valAuc, valLoss, valRmse, modelParameters (the model's size)..."""
    goal: Literal["minimize", "maximize"] = "maximize"
    """Whether higher (maximize, the default) or lower (minimize) values of the metric win."""
    target: float | None = None
    """One objective only: no new trial starts once a trial reached this value (at least it
    when maximizing, at most it when minimizing)."""


class Algorithm(ApiModel):
    """How the next trial's parameters are chosen (Optuna's samplers)."""

    name: Literal["random", "grid", "tpe", "cmaes", "gp", "nsga2"] = "tpe"
    """random; grid (every combination, in random order: double parameters need a step);
    tpe (Tree-structured Parzen Estimator, the default); cmaes (CMA evolution strategy, one
    objective); gp (Gaussian-process Bayesian optimisation); nsga2 (genetic, for several
    objectives)."""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    """Seed of the sampler: the same seed and results propose the same parameters. Default 0."""
    startup_trials: Annotated[int, Field(ge=0, le=1000)] | None = None
    """tpe, gp and cmaes: random trials before the model of the results is used; unset:
    Optuna's default (10 for tpe and gp, 1 for cmaes)."""
    population_size: Annotated[int, Field(ge=2, le=1000)] | None = None
    """nsga2: individuals per generation; unset: Optuna's default (50)."""


class EarlyStopping(ApiModel):
    """Stops (prunes) trials that do worse than others at the same epoch, while they run."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.algorithm != 'hyperband' || !has(self.maxResource)"
                " || self.maxResource > self.minResource",
                "hyperband needs maxResource > minResource",
                ".maxResource",
            ),
        )
    )

    algorithm: Literal["none", "median", "successiveHalving", "hyperband"] = "median"
    """median (the default): stop a trial whose metric at an epoch is worse than the median of
    earlier trials at that epoch; successiveHalving: asynchronous successive halving (ASHA),
    only the best 1/reductionFactor of trials go on at each rung; hyperband: several
    successive-halving brackets; none: never stop early."""
    min_trials: Annotated[int, Field(ge=0, le=1000)] = 3
    """median: trials that must have finished before any is stopped early; default 3."""
    start_step: Annotated[int, Field(ge=0)] = 1
    """median: the first epoch (counted from 1) at which a trial may be stopped; default 1."""
    min_resource: Annotated[int, Field(ge=1, le=100000)] = 1
    """successiveHalving and hyperband: epochs of the first rung; default 1."""
    max_resource: Annotated[int, Field(ge=2, le=100000)] | None = None
    """hyperband: the most epochs a trial runs; unset: the template's hyperparameters.epochs."""
    reduction_factor: Annotated[int, Field(ge=2, le=100)] = 3
    """successiveHalving and hyperband: 1 in reductionFactor trials goes on at each rung;
    default 3."""


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
            cel(
                "!has(self.log) || !self.log || !has(self.step)",
                "a parameter is either log-scaled or stepped, not both",
                ".step",
            ),
            cel(
                "self.type != 'int' || ((!has(self.min) || self.min == double(int(self.min)))"
                " && (!has(self.max) || self.max == double(int(self.max))))",
                "an int parameter needs whole-number min and max",
                ".min",
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
    """The choices of a categorical parameter. A choice that reads as JSON (a number, a list
    such as [64, 32]) is set as that value, any other as text."""


class SearchSpec(ApiModel):
    """Hyperparameter search: trials are TrainingJobs made from trialTemplate."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.parallelTrials <= self.maxTrials",
                "parallelTrials cannot exceed maxTrials",
                ".parallelTrials",
            ),
            cel(
                "!(has(self.objective) && has(self.objectives))",
                "set objective (one) or objectives (several), not both",
                ".objectives",
            ),
            cel(
                "!has(self.objectives) || self.algorithm.name != 'cmaes'",
                "algorithm cmaes optimises one objective: use nsga2, tpe, gp or random for objectives",
                ".algorithm.name",
            ),
            cel(
                "!has(self.objectives) || !has(self.earlyStopping) || self.earlyStopping.algorithm == 'none'",
                "earlyStopping needs one objective (set earlyStopping.algorithm none for objectives)",
                ".earlyStopping",
            ),
            cel(
                "self.algorithm.name != 'grid' || self.parameters.all(p, p.type != 'double' || has(p.step))",
                "algorithm grid needs a step on every double parameter",
                ".parameters",
            ),
            cel(
                "self.parameters.all(p, self.parameters.exists_one(q, q.name == p.name))",
                "parameter names must be unique",
                ".parameters",
            ),
        )
    )

    objective: Objective | None = None
    """The one metric optimised; default: maximize validation."""
    objectives: Annotated[list[Objective], Field(min_length=2, max_length=8)] | None = None
    """Several metrics optimised at once (e.g. maximize validation, minimize modelParameters):
    status then holds the Pareto front."""
    algorithm: Algorithm = Algorithm()
    early_stopping: EarlyStopping | None = None
    parameters: Annotated[list[Parameter], Field(min_length=1, max_length=64)]
    """The parameters searched, each a field of the trial's TrainingJob spec."""
    parallel_trials: Annotated[int, Field(ge=1, le=64)] = 2
    """Trials running at once (at most maxTrials); default 2. May be changed while it runs."""
    max_trials: Annotated[int, Field(ge=1, le=10000)] = 12
    """Trials in all, after which the search ends; default 12. May be changed while it runs."""
    max_failed_trials: Annotated[int, Field(ge=0, le=10000)] = 3
    """Failed trials tolerated; one more fails the Experiment. Default 3."""
    trial_retries: Annotated[int, Field(ge=0, le=10)] = 1
    """Times a failed trial runs again with the same parameters before it counts as failed;
    default 1."""
    budget_seconds: Annotated[int, Field(ge=1)] | None = None
    """Seconds the search may run, from its start: past it no trial starts and running ones
    are stopped. Unset: no limit. May be changed while it runs."""
    trial_template: TrainingJobSpec
    """The TrainingJob each trial runs, with the parameters applied."""

    @property
    def goals(self) -> list[Objective]:
        """The objectives, in order (one when `objective` or nothing is set)."""
        return list(self.objectives or [self.objective or Objective()])


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
    interval_seconds: Annotated[float, Field(ge=1, le=3600)] = 10.0
    """How often the allocation is recomputed from the outcomes and written into the router,
    in seconds (1 to 3600); default 10."""
    sticky_header: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$", max_length=64)] = "X-Gyre-Key"
    """The request header that names the user: a user keeps their variant (a hash of the
    experiment and the key) while the allocation holds; default X-Gyre-Key."""


class Analysis(ApiModel):
    """How the winner is decided."""

    method: Literal["ttest", "bayesian", "sequential"] = "bayesian"
    """ttest (two-proportion z-test for conversions, Welch's t-test for continuous rewards),
    bayesian (posterior probability to be best and expected loss, the default) or sequential
    (always-valid p-values, mSPRT: looking continuously does not inflate false positives)."""
    metric: Annotated[str, Field(max_length=128)] = "conversion"
    """The field of the feedback Stream's events that carries the reward; default conversion."""
    reward: Literal["conversion", "continuous"] = "conversion"
    """conversion: a request converts (reward 1) when any of its outcomes has the metric above
    0 (Beta-Bernoulli); continuous: the reward is the sum of its outcomes' metric (Normal)."""
    min_samples: Annotated[int, Field(ge=1)] = 1000
    """Requests each variant needs before any decision (fixed allocation); with a bandit
    policy, which starves losing variants by design, the requests of all variants together;
    default 1000."""
    significance: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """Error rate the decision accepts (the p-value's threshold); default 0.05."""
    minimum_detectable_effect: Annotated[float, Field(gt=0)] = 0.01
    """The smallest absolute lift worth detecting, in the metric's units: what the sample size
    is computed for, and the sequential test's mixing scale; default 0.01."""
    power: Annotated[float, Field(gt=0, lt=1)] = 0.8
    """Probability of detecting a lift of minimumDetectableEffect (for the sample size); 0.8."""
    loss_threshold: Annotated[float, Field(gt=0)] = 0.001
    """bayesian: stop when the leader's expected loss is below this, in the metric's units."""


class Promotion(ApiModel):
    """What happens once a winner is decided."""

    auto: bool = False
    """Promote the winner to 100% traffic once the analysis decides."""
    max_latency_p99_ms: Annotated[float, Field(gt=0)] | None = None
    """Guard: the winner is not promoted while its p99 prediction latency is above this."""
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    """Guard: the winner is not promoted while the share of its requests that failed or were
    answered by the fallback is above this (0 to 1); default 0.05."""
    prometheus_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=512)] | None = None
    """Where the guards' figures are read: a Prometheus that scrapes the variants' model servers
    (their namespace and gyre_dev_owner_name labels), over guardWindow. Without it they are
    read from the winner's InferenceService status."""
    guard_window: Annotated[str, Field(pattern=r"^[0-9]+[smh]$", max_length=16)] = "5m"
    """The range of the guards' Prometheus queries (e.g. 5m); default 5m."""


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
            cel(
                "self.allocation.policy != 'fixed' || self.variants.exists(v, v.weight > 0)",
                "allocation.policy fixed needs a weight above 0 on at least one variant",
                ".variants",
            ),
        )
    )

    variants: Annotated[list[Variant], Field(min_length=2, max_length=16)]
    """The InferenceServices compared, 2 to 16 (names unique); the first is the control."""
    allocation: Allocation = Allocation()
    analysis: Analysis = Analysis()
    feedback_stream: DnsName
    """The Stream that carries outcomes back: events with the metric and the request's id
    (the X-Request-Id the experiment's URL answered with) or the user's key."""
    request_id_field: Annotated[str, Field(max_length=128)] = "request_id"
    """The feedback events' field holding the request id; default request_id."""
    key_field: Annotated[str, Field(max_length=128)] = "key"
    """The feedback events' field holding the user key (used when no request id is given)."""
    attribution_window_seconds: Annotated[float, Field(gt=0)] = 600.0
    """Outcomes up to this long after their request count for it; default 600."""
    aa: bool = False
    """A/A mode: the variants serve the same model; the whole path is checked for a difference
    it must not find, and no winner is declared."""
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
            {"name": "Trials", "type": "integer", "jsonPath": ".status.trialsTotal"},
            {"name": "Done", "type": "integer", "jsonPath": ".status.trials.completed"},
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
    """Trials whose TrainingJob is running (a retry included)."""
    completed: int = 0
    """Trials that finished and reported the objective."""
    failed: int = 0
    """Trials whose TrainingJob failed, retries spent."""
    pruned: int = 0
    """Trials stopped early by earlyStopping."""
    stopped: int = 0
    """Trials stopped when the search ended (time budget)."""


class BestTrial(ApiModel):
    """A trial's result: the best one, or one of the Pareto front."""

    model_config = ConfigDict(frozen=False)

    trial: str | None = None
    """Name of the trial's TrainingJob."""
    number: int | None = None
    """The trial's number in the search, from 0."""
    value: float | None = None
    """Its objective metric (the first objective's, when there are several)."""
    values: list[float] | None = None
    """Several objectives: its value of each, in spec order."""
    parameters: dict[str, str] = {}
    """The parameter values it ran with, by parameter name."""
    model_uri: str | None = None
    """Where its model artifact is."""


HISTORY_POINTS = 240


class OnlineVariantStatus(ApiModel):
    """One variant's figures in an online experiment."""

    model_config = ConfigDict(frozen=False)

    name: str
    """The variant's name (spec.online.variants)."""
    inference_service: str | None = None
    """The InferenceService that serves it."""
    requests: int = 0
    """Requests it answered (assignments logged)."""
    outcomes: int = 0
    """Requests with at least one outcome joined."""
    rate: float | None = None
    """Mean reward per request (the conversion rate)."""
    interval: list[float] | None = None
    """95% interval of the rate, [low, high]."""
    p_best: float | None = None
    """Probability that it is the best variant."""
    expected_loss: float | None = None
    """What choosing it costs if it is not best, in the metric's units."""
    lift: float | None = None
    """Its rate minus the control's."""
    lift_interval: list[float] | None = None
    """The interval of the lift, [low, high]."""
    p_value: float | None = None
    """Versus the control (ttest or sequential)."""
    allocation: float | None = None
    """Its current traffic share, between 0 and 1."""


class OnlineDecision(ApiModel):
    """The online analysis' state and the promotion."""

    model_config = ConfigDict(frozen=False)

    decided: bool = False
    """True once the analysis decided (a winner, or no difference)."""
    reason: str | None = None
    """Why (CamelCase): CollectingSamples, Significant, ExpectedLossBelowThreshold,
    ValueRemainingBelowThreshold, AAPassed, AAFailed, ..."""
    message: str | None = None
    """The evidence, with its figures."""
    sample_size: int | None = None
    """Requests per variant needed to detect minimumDetectableEffect at the declared power."""
    sample_ratio_mismatch: bool | None = None
    """True when the observed split differs from the configured one (fixed weights)."""
    promoted: str | None = None
    """The variant promoted to 100% of the traffic."""
    promotion_blocked: str | None = None
    """Why the decided winner is not promoted yet (a guard, or promotion.auto unset)."""
    time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """When the decision (or the promotion) was made."""


class AllocationPoint(ApiModel):
    """The allocation at one time."""

    time: float
    """When the allocation was computed, in seconds since the Unix epoch."""
    allocation: dict[str, float] = {}
    """The traffic share per variant then, between 0 and 1."""


class ExperimentStatus(BaseStatus):
    """The experiment's conditions, trials or traffic allocation, and the result."""

    trials: TrialCounts | None = None
    trials_total: int | None = None
    """Trials started so far (their retries not counted again)."""
    best: BestTrial | None = None
    """One objective: the best completed trial so far."""
    pareto_front: Annotated[list[BestTrial], Field(max_length=1000)] | None = None
    """Several objectives: the completed trials no other trial beats on every objective."""
    model: ModelRef | None = None
    """The best trial's model (one objective): what an InferenceService serving this
    Experiment's result serves."""
    start_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """When the search started."""
    completion_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """When the search ended."""
    allocation: dict[str, float] = {}
    """Online: the current traffic share per variant, between 0 and 1."""
    winner: str | None = None
    """The winning trial or variant, once decided."""
    url: str | None = None
    """Online: where clients send prediction requests (the experiment's router; add the model
    path, e.g. /v1/models/<name>:predict); answers carry X-Request-Id and X-Gyre-Backend."""
    variants: Annotated[list[OnlineVariantStatus], Field(max_length=16)] = []
    """Online: figures per variant."""
    decision: OnlineDecision | None = None
    """Online: where the analysis stands, and the promotion once made."""
    history: Annotated[list[AllocationPoint], Field(max_length=HISTORY_POINTS)] = []
    """Online: the allocation over time (the latest points)."""


ExperimentSpec.STATUS = ExperimentStatus
