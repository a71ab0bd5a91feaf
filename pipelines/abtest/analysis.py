"""The analysis of one look at the totals: per-variant figures, the tests, the decision.

Every statistic comes from `gyre.stats`; this module only chooses which one the config asks
for and turns the results into `AbTestStatus`. `Analyst` keeps what must survive between
looks: one `SequentialTest` per treatment (its p-value is a running minimum, so it must see
every look) and the decision, sticky once made.

Decision rules (`decide`), in order:

* a decision already made stays;
* fewer than ``min_samples`` requests on any variant: ``CollectingSamples``. A bandit policy
  (anything but ``fixed``) starves a losing variant by design, so it would never get there:
  there ``min_samples`` counts the requests of all variants together, and the posteriors carry
  each variant's remaining uncertainty. The per-variant rule holds for ``sequential`` as well,
  and the mSPRT is not even looked at before then: its variance is plugged in from the data,
  and on a few dozen requests (say ten non-converting ones, a variance of 0) any lift looks
  infinitely significant, and its running minimum would keep that forever. From
  ``min_samples`` on it may stop at any look, which a t-test may not;
* fixed policy and the requests' split is off the weights (chi-square p < 0.001):
  ``SampleRatioMismatch``, no winner. Bandit policies move the allocation, so the check is
  skipped for them;
* A/A mode: a difference found (below) is ``AAFailed`` (decided, sticky), none ``AAPassed``
  (not decided: the test keeps watching);
* bandit policies: the value-remaining rule (``ValueRemainingBelowThreshold``);
* ``bayesian``: the leader's expected loss below ``loss_threshold``
  (``ExpectedLossBelowThreshold``);
* ``ttest`` / ``sequential``: a treatment significantly better than the control (the best
  such one wins), or the control significantly better than every treatment: ``Significant``.
  With more than one treatment each comparison is held to significance / treatments
  (Bonferroni). Nothing significant once every variant has ``sample_size`` requests:
  ``NoDifference``.

"A difference found" in A/A mode is a significant comparison for ``ttest``/``sequential``,
and, for ``bayesian``, a variant whose P(best) exceeds 1 - significance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from gyre.pipelines.abtest.config import AbTestConfig
from gyre.pipelines.abtest.join import JoinCounts, VariantTotals
from gyre.pipelines.abtest.status import (
    AA_FAILED,
    AA_PASSED,
    COLLECTING_SAMPLES,
    EXPECTED_LOSS_BELOW_THRESHOLD,
    NO_DIFFERENCE,
    REPLAYING,
    SAMPLE_RATIO_MISMATCH,
    SIGNIFICANT,
    VALUE_REMAINING_BELOW_THRESHOLD,
    AbTestStatus,
    CountsStatus,
    DecisionStatus,
    VariantStatus,
)
from gyre.stats.bandits import UCB, ArmStats, EpsilonGreedy, Fixed, Policy, Thompson
from gyre.stats.bayesian import Posterior, expected_loss, prob_best, value_remaining
from gyre.stats.frequentist import (
    TestResult,
    mean_interval,
    rate_interval,
    sample_ratio_mismatch,
    sample_size_means,
    sample_size_proportions,
    two_proportion_ztest,
    welch_ttest,
)
from gyre.stats.sequential import SequentialTest, always_valid_interval

RATE_LEVEL = 0.95
VALUE_REMAINING_DRAWS = 10_000
VALUE_REMAINING_SEED = 0  # the same totals give the same quantile at every look


def build_policy(cfg: AbTestConfig) -> Policy:
    if cfg.policy == "fixed":
        return Fixed(cfg.fixed_weights)
    if cfg.policy == "epsilonGreedy":
        return EpsilonGreedy(cfg.epsilon)
    if cfg.policy == "thompson":
        return Thompson(cfg.reward)
    return UCB()


def arm_stats(t: VariantTotals) -> ArmStats:
    return ArmStats(t.requests, t.reward_sum, t.reward_sq_sum)


def posteriors(cfg: AbTestConfig, arms: Sequence[ArmStats]) -> list[Posterior] | None:
    """Each arm's posterior of its rate; None while a Normal posterior lacks 2 requests."""
    if cfg.reward == "normal" and any(a.trials < 2 for a in arms):
        return None
    return Thompson(cfg.reward).posteriors(arms)


@dataclass(frozen=True)
class Comparison:
    """A treatment versus the control."""

    lift: float
    ci_low: float
    ci_high: float
    p_value: float


def compare(
    cfg: AbTestConfig, a: ArmStats, b: ArmStats, seq: SequentialTest | None, alpha: float
) -> Comparison | None:
    """The comparison the method calls for; None while it cannot be computed."""
    if seq is not None:
        if a.trials < 1 or b.trials < 1:
            return None
        p = seq.look(a.mean, a.var, a.trials, b.mean, b.var, b.trials)
        lift = b.mean - a.mean
        low, high = always_valid_interval(lift, a.var / a.trials + b.var / b.trials, seq.tau2, alpha)
        return Comparison(lift, low, high, p)
    # No variance on either side yet (every request converted, or none did): no test.
    res: TestResult
    if cfg.reward == "bernoulli":
        pooled = (a.reward_sum + b.reward_sum) / (a.trials + b.trials) if a.trials and b.trials else 0.0
        if not 0 < pooled < 1:
            return None
        res = two_proportion_ztest(a.reward_sum, a.trials, b.reward_sum, b.trials, alpha=alpha)
    else:
        if a.trials < 2 or b.trials < 2 or a.var + b.var == 0:
            return None
        res = welch_ttest(a.mean, a.var, a.trials, b.mean, b.var, b.trials, alpha=alpha)
    if not math.isfinite(res.p_value):
        return None
    return Comparison(res.lift, res.ci_low, res.ci_high, res.p_value)


def rate_ci(cfg: AbTestConfig, a: ArmStats) -> tuple[float | None, float | None]:
    if cfg.reward == "bernoulli":
        return rate_interval(a.reward_sum, a.trials, level=RATE_LEVEL) if a.trials else (None, None)
    return mean_interval(a.mean, a.var, a.trials, level=RATE_LEVEL) if a.trials >= 2 else (None, None)


def sample_size(cfg: AbTestConfig, control: ArmStats) -> int | None:
    """Requests per variant to detect ``mde`` at ``power``, from the control's observed rate."""
    try:
        if cfg.reward == "bernoulli":
            return sample_size_proportions(control.mean, cfg.mde, alpha=cfg.significance, power=cfg.power)
        if control.trials < 2:
            return None
        return sample_size_means(math.sqrt(control.var), cfg.mde, alpha=cfg.significance, power=cfg.power)
    except ValueError:  # a rate of 0 or 1, or no variance yet: nothing to size against
        return None


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


@dataclass(frozen=True)
class Look:
    """What one look computed, before the decision."""

    arms: list[ArmStats]
    comparisons: list[Comparison | None]  # per variant; None for the control
    p_best: list[float] | None
    losses: list[float] | None
    sample_size: int | None
    srm_p_value: float | None
    srm_mismatch: bool | None
    value_remaining: float | None
    vr_stop: bool
    alpha: float  # per comparison (Bonferroni)


class Analyst:
    """Looks at the totals every interval; keeps the sequential tests and the decision."""

    def __init__(self, cfg: AbTestConfig) -> None:
        self.cfg = cfg
        self.policy = build_policy(cfg)
        self.alpha = cfg.significance / (len(cfg.variants) - 1)
        self.sequential = (
            {v: SequentialTest(tau2=cfg.mde**2, alpha=self.alpha) for v in cfg.variants[1:]}
            if cfg.method == "sequential"
            else {}
        )
        self.decision: DecisionStatus | None = None  # once decided

    def look(self, totals: Mapping[str, VariantTotals]) -> Look:
        cfg = self.cfg
        arms = [arm_stats(totals[v]) for v in cfg.variants]
        enough = all(a.trials >= cfg.min_samples for a in arms)
        comparisons: list[Comparison | None] = [None]
        for v, b in zip(cfg.variants[1:], arms[1:], strict=True):
            seq = self.sequential.get(v)
            if seq is not None and not enough:  # see the module: no look before min_samples
                comparisons.append(None)
                continue
            comparisons.append(compare(cfg, arms[0], b, seq, self.alpha))
        post = posteriors(cfg, arms)
        p_best = prob_best(post) if post is not None else None
        losses = expected_loss(post) if post is not None else None
        srm_p = srm = None
        if cfg.policy == "fixed":
            ratio = sample_ratio_mismatch([a.trials for a in arms], cfg.fixed_weights)
            srm_p, srm = ratio.p_value, ratio.mismatch
        vr_q, vr_stop = None, False
        if cfg.policy != "fixed" and post is not None and all(a.trials for a in arms):
            vr = value_remaining(
                post,
                np.random.default_rng(VALUE_REMAINING_SEED),
                draws=VALUE_REMAINING_DRAWS,
                level=cfg.value_remaining_level,
                threshold=cfg.value_remaining_threshold,
            )
            vr_q, vr_stop = vr.quantile, vr.stop
        return Look(
            arms,
            comparisons,
            p_best,
            losses,
            sample_size(cfg, arms[0]),
            srm_p,
            srm,
            vr_q,
            vr_stop,
            self.alpha,
        )

    def status(
        self,
        totals: Mapping[str, VariantTotals],
        join: JoinCounts,
        counts: CountsStatus,
        *,
        ready: bool = True,
        now: float | None = None,
    ) -> AbTestStatus:
        """One look (when ``ready``) as the status document; the decision sticks once made."""
        cfg = self.cfg
        if not ready:
            return self._document(totals, None, counts, join, ready=False, now=now)
        lk = self.look(totals)
        decision = self.decision or decide(cfg, lk)
        if decision.decided:
            self.decision = decision
        return self._document(totals, lk, counts, join, ready=True, now=now, decision=decision)

    def _document(
        self,
        totals: Mapping[str, VariantTotals],
        lk: Look | None,
        counts: CountsStatus,
        join: JoinCounts,
        *,
        ready: bool,
        now: float | None,
        decision: DecisionStatus | None = None,
    ) -> AbTestStatus:
        cfg = self.cfg
        arms = [arm_stats(totals[v]) for v in cfg.variants]
        allocation = self.policy.allocate(arms)
        variants = []
        for i, (v, a) in enumerate(zip(cfg.variants, arms, strict=True)):
            t = totals[v]
            low, high = rate_ci(cfg, a)
            c = lk.comparisons[i] if lk is not None else None
            variants.append(
                VariantStatus(
                    name=v,
                    requests=t.requests,
                    outcomes=t.outcomes,
                    reward_sum=t.reward_sum,
                    reward_sq_sum=t.reward_sq_sum,
                    rate=a.mean,
                    rate_ci_low=finite(low),
                    rate_ci_high=finite(high),
                    p_best=lk.p_best[i] if lk is not None and lk.p_best is not None else None,
                    expected_loss=lk.losses[i] if lk is not None and lk.losses is not None else None,
                    allocation=allocation[i],
                    lift=finite(c.lift) if c else None,
                    lift_ci_low=finite(c.ci_low) if c else None,
                    lift_ci_high=finite(c.ci_high) if c else None,
                    p_value=finite(c.p_value) if c else None,
                )
            )
        full_counts = counts.model_copy(
            update={
                "joined": join.joined,
                "pending": join.pending,
                "unmatched": join.unmatched,
                "late": join.late,
            }
        )
        return AbTestStatus(
            experiment=cfg.experiment,
            method=cfg.method,
            policy=cfg.policy,
            reward=cfg.reward,
            metric=cfg.metric,
            aa=cfg.aa,
            ready=ready,
            variants=variants,
            control=cfg.control,
            sample_size=lk.sample_size if lk else None,
            srm_p_value=lk.srm_p_value if lk else None,
            srm_mismatch=lk.srm_mismatch if lk else None,
            value_remaining=finite(lk.value_remaining) if lk else None,
            decision=decision
            or DecisionStatus(reason=REPLAYING, message="Reading the topics from the start"),
            counts=full_counts,
            computed_at=time.time() if now is None else now,
        )


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def decide(cfg: AbTestConfig, lk: Look) -> DecisionStatus:
    """The decision at one look (see the module for the rules and their order)."""
    names = cfg.variants
    requests = ", ".join(f"{v} {a.trials}" for v, a in zip(names, lk.arms, strict=True))
    rates = ", ".join(f"{v} {a.mean:.4g}" for v, a in zip(names, lk.arms, strict=True))
    if cfg.policy != "fixed" and sum(a.trials for a in lk.arms) < cfg.min_samples:
        return DecisionStatus(
            reason=COLLECTING_SAMPLES,
            message=f"Requests of all variants ({requests}) below min_samples {cfg.min_samples}",
        )
    if cfg.policy == "fixed" and any(a.trials < cfg.min_samples for a in lk.arms):
        return DecisionStatus(
            reason=COLLECTING_SAMPLES,
            message=f"Requests per variant ({requests}) below min_samples {cfg.min_samples}",
        )
    if lk.srm_mismatch:
        return DecisionStatus(
            decided=True,
            reason=SAMPLE_RATIO_MISMATCH,
            message=(
                f"Requests ({requests}) do not match the weights {list(cfg.fixed_weights)}: "
                f"chi-square p = {_fmt(lk.srm_p_value)}; the experiment's split is broken"
            ),
        )
    better: list[tuple[str, Comparison]] = []
    worse: list[tuple[str, Comparison]] = []
    for v, c in zip(names[1:], lk.comparisons[1:], strict=True):
        if c is not None and c.p_value < lk.alpha:
            (better if c.lift > 0 else worse).append((v, c))
    p_best = lk.p_best or []
    if cfg.aa:
        if cfg.method == "bayesian":
            found = [
                f"{v} P(best) {p:.4g}" for v, p in zip(names, p_best, strict=True) if p > 1 - cfg.significance
            ]
        else:
            found = [f"{v} lift {c.lift:.4g} p = {c.p_value:.4g}" for v, c in better + worse]
        if found:
            return DecisionStatus(
                decided=True,
                reason=AA_FAILED,
                message=f"A/A test found a difference where there is none: {'; '.join(found)} "
                f"(rates {rates})",
            )
        return DecisionStatus(
            reason=AA_PASSED,
            message=f"A/A test: no difference found so far (rates {rates}; requests {requests})",
        )
    if cfg.policy != "fixed" and lk.vr_stop:
        leader = names[max(range(len(names)), key=lambda i: p_best[i])]
        return DecisionStatus(
            decided=True,
            winner=leader,
            reason=VALUE_REMAINING_BELOW_THRESHOLD,
            message=(
                f"{leader} leads; with probability {cfg.value_remaining_level:g} no variant beats it by "
                f"more than {_fmt(lk.value_remaining)} of its rate "
                f"(threshold {cfg.value_remaining_threshold:g}); rates {rates}"
            ),
        )
    if cfg.method == "bayesian":
        if lk.losses is None:
            return DecisionStatus(reason=COLLECTING_SAMPLES, message="Too few requests for a posterior")
        i = max(range(len(names)), key=lambda j: p_best[j])
        if lk.losses[i] < cfg.loss_threshold:
            return DecisionStatus(
                decided=True,
                winner=names[i],
                reason=EXPECTED_LOSS_BELOW_THRESHOLD,
                message=(
                    f"{names[i]} is best with probability {p_best[i]:.4g}; its expected loss "
                    f"{lk.losses[i]:.3g} is below {cfg.loss_threshold:g} (rates {rates})"
                ),
            )
        return DecisionStatus(
            reason=COLLECTING_SAMPLES,
            message=(
                f"Leader {names[i]} (P(best) {p_best[i]:.4g}) has expected loss {lk.losses[i]:.3g}, "
                f"not below {cfg.loss_threshold:g} (rates {rates})"
            ),
        )
    test = (
        "mSPRT" if cfg.method == "sequential" else ("z-test" if cfg.reward == "bernoulli" else "Welch t-test")
    )
    if better:
        v, c = max(better, key=lambda vc: vc[1].lift)
        return DecisionStatus(
            decided=True,
            winner=v,
            reason=SIGNIFICANT,
            message=(
                f"{v} beats {cfg.control} by {c.lift:.4g} ({_fmt(c.ci_low)} to {_fmt(c.ci_high)}), "
                f"{test} p = {c.p_value:.3g} < {lk.alpha:.3g} (rates {rates})"
            ),
        )
    if len(worse) == len(names) - 1:
        return DecisionStatus(
            decided=True,
            winner=cfg.control,
            reason=SIGNIFICANT,
            message=(
                f"{cfg.control} beats every treatment: "
                + "; ".join(f"{v} lift {c.lift:.4g} p = {c.p_value:.3g}" for v, c in worse)
                + f" ({test}, alpha {lk.alpha:.3g}; rates {rates})"
            ),
        )
    if lk.sample_size is not None and all(a.trials >= lk.sample_size for a in lk.arms):
        return DecisionStatus(
            decided=True,
            reason=NO_DIFFERENCE,
            message=(
                f"No significant difference ({test}, alpha {lk.alpha:.3g}) after {requests} requests, "
                f"the {lk.sample_size} per variant needed to detect {cfg.mde:g} at power {cfg.power:g} "
                f"(rates {rates})"
            ),
        )
    needed = f"; {lk.sample_size} per variant needed for mde {cfg.mde:g}" if lk.sample_size else ""
    return DecisionStatus(
        reason=COLLECTING_SAMPLES,
        message=f"No significant difference yet ({test}; requests {requests}{needed}; rates {rates})",
    )
