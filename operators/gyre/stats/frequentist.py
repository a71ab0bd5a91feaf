"""Fixed-horizon A/B analysis: the two-proportion z-test, Welch's t-test, intervals, the sample
size a test needs, and the sample-ratio-mismatch check.

Arm ``a`` is the control, arm ``b`` the treatment; a lift is ``b - a``. ``alternative`` is
``"two-sided"`` or ``"larger"`` (the treatment is better: the one-sided test of a lift).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import stats as sps
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

Alternative = Literal["two-sided", "larger"]
# A sample-ratio mismatch is declared below this chi-square p-value: the usual, strict bar,
# since a real mismatch invalidates the whole experiment.
SRM_P_THRESHOLD = 0.001


@dataclass(frozen=True)
class TestResult:
    """One comparison of a treatment with its control."""

    mean_a: float
    mean_b: float
    lift: float  # mean_b - mean_a
    relative_lift: float  # lift / mean_a (inf when mean_a is 0 and lift > 0)
    statistic: float  # z or t
    p_value: float
    ci_low: float  # confidence interval of the lift at 1 - alpha (one-sided: ci_high is inf)
    ci_high: float
    alternative: Alternative
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha


def _check_counts(successes: float, n: int, arm: str) -> None:
    if n <= 0:
        raise ValueError(f"arm {arm}: the number of trials must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"arm {arm}: successes must lie in [0, {n}], got {successes}")


def _relative(lift: float, base: float) -> float:
    if base == 0:
        return math.inf if lift > 0 else (-math.inf if lift < 0 else 0.0)
    return lift / base


def two_proportion_ztest(
    successes_a: float,
    n_a: int,
    successes_b: float,
    n_b: int,
    *,
    alternative: Alternative = "two-sided",
    alpha: float = 0.05,
) -> TestResult:
    """The pooled two-proportion z-test of conversion rates, with the Wald interval of the lift.

    Successes may be fractional (rate x n) when only the arms' rates are known."""
    _check_counts(successes_a, n_a, "a")
    _check_counts(successes_b, n_b, "b")
    z, p = proportions_ztest([successes_b, successes_a], [n_b, n_a], alternative=alternative)
    rate_a, rate_b = successes_a / n_a, successes_b / n_b
    lift = rate_b - rate_a
    # One-sided: the lower bound of a (1 - 2 alpha) two-sided interval is the one-sided bound.
    ci_alpha = alpha if alternative == "two-sided" else 2 * alpha
    low, high = confint_proportions_2indep(
        successes_b, n_b, successes_a, n_a, method="wald", compare="diff", alpha=ci_alpha
    )
    if alternative == "larger":
        high = math.inf
    return TestResult(
        rate_a, rate_b, lift, _relative(lift, rate_a), float(z), float(p), float(low), float(high),
        alternative, alpha,
    )  # fmt: skip


def welch_ttest(
    mean_a: float,
    var_a: float,
    n_a: int,
    mean_b: float,
    var_b: float,
    n_b: int,
    *,
    alternative: Alternative = "two-sided",
    alpha: float = 0.05,
) -> TestResult:
    """Welch's t-test of two means from their summaries (sample variances, ddof=1)."""
    if n_a < 2 or n_b < 2:
        raise ValueError(f"Welch's t-test needs at least 2 observations per arm, got {n_a} and {n_b}")
    if var_a < 0 or var_b < 0:
        raise ValueError("variances must be non-negative")
    res = sps.ttest_ind_from_stats(
        mean_b, math.sqrt(var_b), n_b, mean_a, math.sqrt(var_a), n_a,
        equal_var=False, alternative="greater" if alternative == "larger" else "two-sided",
    )  # fmt: skip
    se2_a, se2_b = var_a / n_a, var_b / n_b
    se = math.sqrt(se2_a + se2_b)
    df = (se2_a + se2_b) ** 2 / (se2_a**2 / (n_a - 1) + se2_b**2 / (n_b - 1)) if se > 0 else math.inf
    lift = mean_b - mean_a
    if alternative == "two-sided":
        half = float(sps.t.ppf(1 - alpha / 2, df)) * se
        low, high = lift - half, lift + half
    else:
        low, high = lift - float(sps.t.ppf(1 - alpha, df)) * se, math.inf
    return TestResult(
        mean_a, mean_b, lift, _relative(lift, mean_a), float(res.statistic), float(res.pvalue),
        low, high, alternative, alpha,
    )  # fmt: skip


def rate_lower_bound(successes: float, n: int, *, alpha: float = 0.05) -> float:
    """The one-sided (1 - alpha) lower confidence bound of one arm's rate (normal approximation)."""
    _check_counts(successes, n, "rate")
    low, _ = proportion_confint(successes, n, alpha=2 * alpha, method="normal")
    return float(low)


def rate_interval(successes: float, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """The two-sided Wilson interval of one arm's conversion rate (sound near 0 and 1, unlike
    the Wald interval, which collapses to a point at a rate of 0)."""
    _check_counts(successes, n, "rate")
    low, high = proportion_confint(successes, n, alpha=1 - level, method="wilson")
    return float(low), float(high)


def mean_interval(mean: float, var: float, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """The two-sided t interval of one arm's mean reward from its summary (ddof=1 variance)."""
    if n < 2:
        raise ValueError(f"a mean's interval needs at least 2 observations, got {n}")
    half = float(sps.t.ppf((1 + level) / 2, n - 1)) * math.sqrt(max(var, 0.0) / n)
    return mean - half, mean + half


def sample_size_proportions(
    baseline: float,
    minimum_detectable_effect: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: Alternative = "two-sided",
) -> int:
    """Observations per arm to detect an absolute lift of ``minimum_detectable_effect`` over
    ``baseline`` with the given power (equal arms; Cohen's h, the arcsine-transformed effect)."""
    target = baseline + minimum_detectable_effect
    if not (0 < baseline < 1 and 0 < target < 1):
        raise ValueError(
            f"baseline ({baseline}) and baseline + minimumDetectableEffect ({target}) must lie in (0, 1)"
        )
    if minimum_detectable_effect == 0:
        raise ValueError("minimumDetectableEffect must not be 0")
    return _per_arm(abs(proportion_effectsize(target, baseline)), alpha, power, alternative)


def sample_size_means(
    sd: float,
    minimum_detectable_effect: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: Alternative = "two-sided",
) -> int:
    """Observations per arm to detect an absolute lift of ``minimum_detectable_effect`` in a mean
    whose per-observation standard deviation is ``sd`` (equal arms; Cohen's d)."""
    if sd <= 0 or minimum_detectable_effect == 0:
        raise ValueError(
            f"need sd > 0 and a non-zero effect, got sd={sd}, effect={minimum_detectable_effect}"
        )
    return _per_arm(abs(minimum_detectable_effect) / sd, alpha, power, alternative)


def _per_arm(effect_size: float, alpha: float, power: float, alternative: Alternative) -> int:
    """Observations per arm (equal arms) for a standardised effect, by the normal power analysis."""
    n = NormalIndPower().solve_power(
        effect_size=effect_size, alpha=alpha, power=power, ratio=1.0,
        alternative="two-sided" if alternative == "two-sided" else "larger",
    )  # fmt: skip
    return math.ceil(float(n))


@dataclass(frozen=True)
class SampleRatio:
    observed: tuple[int, ...]
    expected_share: tuple[float, ...]
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_P_THRESHOLD


def sample_ratio_mismatch(observed: Sequence[int], weights: Sequence[float]) -> SampleRatio:
    """Pearson's chi-square test of the arms' observed counts against the configured weights."""
    if len(observed) != len(weights) or len(observed) < 2:
        raise ValueError("need one count and one weight per arm, for at least 2 arms")
    total_w = float(sum(weights))
    if total_w <= 0 or any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative and not all 0")
    share = tuple(w / total_w for w in weights)
    total = sum(observed)
    if total == 0:
        return SampleRatio(tuple(observed), share, 1.0)
    pairs = [(o, s * total) for o, s in zip(observed, share, strict=True) if s > 0]
    if any(o > 0 for o, s in zip(observed, share, strict=True) if s == 0):
        return SampleRatio(tuple(observed), share, 0.0)  # traffic reached an arm weighted 0
    res = sps.chisquare([o for o, _ in pairs], [e for _, e in pairs])
    return SampleRatio(tuple(observed), share, float(res.pvalue))
