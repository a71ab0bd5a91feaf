"""What the A/B analysis serves on ``/status`` (the Experiment controller reads it).

Everything is recomputed from the topics replayed since the process started, so it is the
same after a restart, except a decision's stickiness (see `DecisionStatus`). Figures that
cannot be computed yet (too few samples, no variance) are ``null``, never NaN.
"""

from __future__ import annotations

from gyre.pipelines._common.status import StatusDoc

# Decision reasons (CamelCase, as Kubernetes condition reasons).
COLLECTING_SAMPLES = "CollectingSamples"
SIGNIFICANT = "Significant"
EXPECTED_LOSS_BELOW_THRESHOLD = "ExpectedLossBelowThreshold"
VALUE_REMAINING_BELOW_THRESHOLD = "ValueRemainingBelowThreshold"
NO_DIFFERENCE = "NoDifference"
SAMPLE_RATIO_MISMATCH = "SampleRatioMismatch"
AA_PASSED = "AAPassed"
AA_FAILED = "AAFailed"
REPLAYING = "Replaying"  # the topics are still being read up to where they stood at start


class VariantStatus(StatusDoc):
    name: str
    requests: int = 0  # 2xx assignments
    outcomes: int = 0  # requests with at least one joined outcome
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0
    rate: float = 0.0  # mean reward per request
    rate_ci_low: float | None = None  # 95% interval of the rate (Wilson; t for normal rewards)
    rate_ci_high: float | None = None
    p_best: float | None = None  # posterior probability that this variant is best
    expected_loss: float | None = None  # posterior expected loss of choosing it
    allocation: float = 0.0  # the policy's weight (they sum to 1)
    # Versus the control (null for the control itself): lift = rate - the control's rate.
    lift: float | None = None
    lift_ci_low: float | None = None  # at 1 - significance (always valid for sequential)
    lift_ci_high: float | None = None
    p_value: float | None = None  # ttest/bayesian: z or Welch; sequential: the mSPRT's


class DecisionStatus(StatusDoc):
    """Sticky once ``decided``: later looks do not undo it within a process. A restart
    recomputes it from the replayed topics (the controller keeps the first one it recorded)."""

    decided: bool = False
    winner: str | None = None  # never set in A/A mode, nor for NoDifference or SampleRatioMismatch
    reason: str = COLLECTING_SAMPLES
    message: str = ""


class CountsStatus(StatusDoc):
    assignments_read: int = 0  # assignment records read (duplicates and malformed ones included)
    feedback_read: int = 0  # feedback records read (malformed and ignored ones included)
    duplicates: int = 0  # assignments whose request id was read before
    joined: int = 0  # outcomes attributed to an assignment within the window
    pending: int = 0  # outcomes waiting for their assignment, within the window
    unmatched: int = 0  # outcomes without an assignment after the window
    late: int = 0  # outcomes more than the window after their assignment (ignored)
    malformed: int = 0  # undecodable records, missing or ill-typed fields, unknown variants
    ignored: int = 0  # feedback events without the metric field (other events of the Stream)


class AbTestStatus(StatusDoc):
    experiment: str
    method: str
    policy: str
    reward: str
    metric: str
    aa: bool = False
    ready: bool = False  # both topics read up to where they stood at start
    variants: list[VariantStatus] = []
    control: str = ""
    sample_size: int | None = None  # requests per variant to detect mde at power
    srm_p_value: float | None = None  # fixed policy only (bandits move the allocation)
    srm_mismatch: bool | None = None
    value_remaining: float | None = None  # bandit policies: the value-remaining quantile
    decision: DecisionStatus = DecisionStatus()
    counts: CountsStatus = CountsStatus()
    computed_at: float | None = None  # unix seconds of the analysis
