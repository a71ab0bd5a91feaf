"""The statistics of online experiments against known answers and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gyre.bench.bandit import aa_false_positive_rates, simulate_regret
from gyre.stats.bandits import UCB, ArmStats, EpsilonGreedy, Fixed, Thompson, choice, sticky_choice
from gyre.stats.bayesian import Posterior, expected_loss, prob_best, value_remaining
from gyre.stats.frequentist import (
    mean_interval,
    rate_interval,
    rate_lower_bound,
    sample_ratio_mismatch,
    sample_size_means,
    sample_size_proportions,
    two_proportion_ztest,
    welch_ttest,
)
from gyre.stats.sequential import SequentialTest, always_valid_interval, always_valid_pvalues
from scipy import integrate, special
from scipy import stats as sps

# ------------------------------------------------------------------ frequentist: the worked example
# Control 7% of 1,062 users, treatment 8% of 982; then ten times as many users (the example
# gives rates, so successes are rate x n).
SMALL = (0.07 * 1062, 1062, 0.08 * 982, 982)
LARGE = (0.07 * 10620, 10620, 0.08 * 9820, 9820)
SMALL_COUNTS = (74, 1062, 79, 982)
LARGE_COUNTS = (743, 10620, 786, 9820)


def _pooled_z(sa: float, na: int, sb: float, nb: int) -> float:
    pooled = (sa + sb) / (na + nb)
    return (sb / nb - sa / na) / math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))


def test_the_z_test_reproduces_the_worked_example() -> None:
    small = two_proportion_ztest(*SMALL, alternative="larger")
    assert small.statistic == pytest.approx(0.858, abs=0.02)
    assert small.p_value == pytest.approx(0.1949, abs=0.01)
    assert not small.significant
    large = two_proportion_ztest(*LARGE, alternative="larger")
    assert 0.002 < large.p_value < 0.005  # "p ≈ 0.004"
    assert large.significant
    # against the textbook formula, computed here
    for counts in (SMALL, LARGE, SMALL_COUNTS, LARGE_COUNTS):
        z = _pooled_z(*counts)
        res = two_proportion_ztest(*counts, alternative="larger")
        assert res.statistic == pytest.approx(z, rel=1e-9)
        assert res.p_value == pytest.approx(sps.norm.sf(z), rel=1e-9)
        assert two_proportion_ztest(*counts).p_value == pytest.approx(2 * sps.norm.sf(z), rel=1e-9)


def test_the_lift_interval_and_the_one_sided_lower_bounds() -> None:
    sa, na, sb, nb = SMALL
    res = two_proportion_ztest(sa, na, sb, nb)
    pa, pb = sa / na, sb / nb
    half = 1.959964 * math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    assert (res.ci_low, res.ci_high) == pytest.approx((pb - pa - half, pb - pa + half), abs=1e-6)
    assert res.ci_low < 0 < res.ci_high  # not significant: the interval holds 0
    one_sided = two_proportion_ztest(sa, na, sb, nb, alternative="larger")
    assert one_sided.ci_high == math.inf
    assert one_sided.ci_low == pytest.approx(pb - pa - 1.644854 * half / 1.959964, abs=1e-6)
    # the example's one-sided 95% lower bounds of each arm: 5.72% and 6.59%
    assert rate_lower_bound(sa, na) == pytest.approx(0.0572, abs=0.001)
    assert rate_lower_bound(sb, nb) == pytest.approx(0.0659, abs=0.001)


def test_the_sample_size_for_a_one_point_lift_matches_the_textbook_formula() -> None:
    p1, p2, za, zb = 0.07, 0.08, sps.norm.ppf(0.975), sps.norm.ppf(0.8)
    pbar = (p1 + p2) / 2
    textbook = (
        za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    ) ** 2 / (p2 - p1) ** 2
    n = sample_size_proportions(0.07, 0.01)
    assert n == pytest.approx(textbook, rel=0.01)  # about 10,900 per arm
    # the example's n≈1,000 per arm is far too few; n≈10,000 is about enough
    assert 1062 < n / 10 < 1100
    assert sample_size_proportions(0.07, 0.01, alternative="larger") < n
    assert sample_size_proportions(0.07, 0.02) < n / 3
    with pytest.raises(ValueError, match="must lie in"):
        sample_size_proportions(0.995, 0.01)


def test_welch_from_summaries_equals_welch_on_the_raw_data() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(10.0, 2.0, 400), rng.normal(10.4, 3.5, 250)
    res = welch_ttest(a.mean(), a.var(ddof=1), a.size, b.mean(), b.var(ddof=1), b.size)
    raw = sps.ttest_ind(b, a, equal_var=False)
    assert res.statistic == pytest.approx(raw.statistic, rel=1e-9)
    assert res.p_value == pytest.approx(raw.pvalue, rel=1e-9)
    ci = raw.confidence_interval(0.95)
    assert (res.ci_low, res.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    larger = welch_ttest(
        a.mean(), a.var(ddof=1), a.size, b.mean(), b.var(ddof=1), b.size, alternative="larger"
    )
    assert larger.p_value == pytest.approx(sps.ttest_ind(b, a, equal_var=False, alternative="greater").pvalue)


def test_the_rate_and_mean_intervals_against_their_formulas() -> None:
    # Wilson: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    z, p, n = sps.norm.ppf(0.975), 0.1, 1000
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    wilson = ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n))
    assert rate_interval(100, 1000) == pytest.approx(wilson, rel=1e-9)
    low, high = rate_interval(0, 50)
    assert low == pytest.approx(0, abs=1e-12)  # not the Wald interval's point at 0
    assert high > 0.05
    x = np.random.default_rng(5).normal(3.0, 2.0, 40)
    ci = sps.ttest_1samp(x, 0).confidence_interval(0.95)
    assert mean_interval(x.mean(), x.var(ddof=1), x.size) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_the_sample_size_for_a_mean_matches_the_normal_formula() -> None:
    za, zb = sps.norm.ppf(0.975), sps.norm.ppf(0.8)
    assert sample_size_means(2.0, 0.1) == pytest.approx(2 * (za + zb) ** 2 * 4 / 0.01, rel=0.01)
    with pytest.raises(ValueError, match="sd > 0"):
        sample_size_means(0.0, 0.1)


def test_sample_ratio_mismatch() -> None:
    assert not sample_ratio_mismatch([5000, 5040], [1, 1]).mismatch
    srm = sample_ratio_mismatch([5000, 5400], [1, 1])
    expected = sps.chi2.sf((200**2 + 200**2) / 5200, df=1)
    assert srm.p_value == pytest.approx(expected, rel=1e-9)
    assert srm.mismatch
    assert not sample_ratio_mismatch([8000, 2000], [80, 20]).mismatch
    assert sample_ratio_mismatch([10, 1], [1, 0]).mismatch  # traffic on an arm weighted 0


# ------------------------------------------------------------------ Bayesian
def _p_b_beats_a_closed_form(a: Posterior, b: Posterior) -> float:
    """Evan Miller's closed form of P(θ_B > θ_A) for Beta posteriors with an integer alpha_B."""
    i = np.arange(int(b.p1))
    terms = special.betaln(a.p1 + i, a.p2 + b.p2) - np.log(b.p2 + i) - special.betaln(1 + i, b.p2)
    return float(np.exp(terms - special.betaln(a.p1, a.p2)).sum())


def _loss_by_quadrature(a: Posterior, b: Posterior) -> float:
    """E[max(θ_A - θ_B, 0)] = ∫ x f_A(x) F_B(x) dx - ∫ y f_B(y) (1 - F_A(y)) dy: what choosing B
    loses, by adaptive quadrature (a different identity from the one the module integrates)."""
    da, db = a.dist, b.dist
    lo = min(da.ppf(1e-12), db.ppf(1e-12))
    hi = max(da.ppf(1 - 1e-12), db.ppf(1 - 1e-12))
    pts = sorted({a.mean, b.mean})
    gain, _ = integrate.quad(lambda x: x * da.pdf(x) * db.cdf(x), lo, hi, points=pts, limit=400, epsabs=1e-12)
    rest, _ = integrate.quad(lambda y: y * db.pdf(y) * da.sf(y), lo, hi, points=pts, limit=400, epsabs=1e-12)
    return float(gain - rest)


@pytest.mark.parametrize(
    "counts",
    [SMALL_COUNTS, LARGE_COUNTS, (3, 10, 7, 12), (0, 40, 1, 40), (120, 400, 118, 390), (50, 5000, 75, 5000)],
)
def test_p_best_and_expected_loss_against_direct_computation(counts: tuple[int, int, int, int]) -> None:
    sa, na, sb, nb = counts
    a, b = Posterior.beta(sa, na), Posterior.beta(sb, nb)
    p = prob_best([a, b])
    assert sum(p) == pytest.approx(1.0)
    assert p[1] == pytest.approx(_p_b_beats_a_closed_form(a, b), abs=1e-4)
    loss = expected_loss([a, b])
    assert loss[1] == pytest.approx(_loss_by_quadrature(a, b), abs=1e-6, rel=1e-3)
    assert loss[0] == pytest.approx(_loss_by_quadrature(b, a), abs=1e-6, rel=1e-3)


def test_three_arms_and_normal_rewards() -> None:
    arms = [Posterior.beta(70, 1000), Posterior.beta(80, 1000), Posterior.beta(78, 1000)]
    rng = np.random.default_rng(5)
    draws = np.vstack([rng.beta(a.p1, a.p2, 1_000_000) for a in arms])
    mc = np.bincount(draws.argmax(axis=0), minlength=3) / draws.shape[1]
    assert prob_best(arms) == pytest.approx(mc.tolist(), abs=0.003)
    assert expected_loss(arms) == pytest.approx((draws.max(axis=0) - draws).mean(axis=1).tolist(), abs=2e-4)
    a, b = Posterior.normal(10.0, 4.0, 100), Posterior.normal(10.5, 9.0, 80)
    assert prob_best([a, b])[1] == pytest.approx(sps.norm.cdf(0.5 / math.sqrt(0.04 + 9 / 80)), abs=1e-5)


def test_value_remaining_stops_only_once_the_leader_is_clear() -> None:
    rng = np.random.default_rng(0)
    early = value_remaining([Posterior.beta(7, 100), Posterior.beta(9, 100)], rng)
    assert not early.stop
    late = value_remaining([Posterior.beta(5000, 100_000), Posterior.beta(18_000, 100_000)], rng)
    assert late.leader == 1
    assert late.stop
    assert late.quantile < 0.01 < early.quantile


# ------------------------------------------------------------------ sequential
def test_always_valid_p_values_hold_alpha_under_continuous_peeking() -> None:
    rng = np.random.default_rng(11)
    seq, naive = aa_false_positive_rates(
        0.1, runs=1500, requests=10_000, look_every=100, tau2=0.01**2, rng=rng
    )
    # 1,500 runs: 0.05 + 3 standard errors of a 5% rate is 0.067
    assert seq <= 0.067
    assert naive > 0.15  # the naive test read at each of 100 looks is wrong far more than 5% of the time


def test_the_sequential_test_finds_a_real_lift_and_its_p_value_never_rises() -> None:
    rng = np.random.default_rng(12)
    n = 200 * np.arange(1, 101)
    wa = rng.binomial(200, 0.07, 100).cumsum()
    wb = rng.binomial(200, 0.09, 100).cumsum()
    ma, mb = wa / n, wb / n
    p = always_valid_pvalues(mb - ma, (ma * (1 - ma) + mb * (1 - mb)) / n, 0.01**2)
    assert np.all(np.diff(p) <= 0)
    assert p[-1] < 0.05
    test = SequentialTest(tau2=0.01**2)
    for k in range(100):
        test.look(ma[k], ma[k] * (1 - ma[k]), int(n[k]), mb[k], mb[k] * (1 - mb[k]), int(n[k]))
    assert test.p_value == pytest.approx(p[-1])
    assert test.significant
    lo, hi = always_valid_interval(
        float(mb[-1] - ma[-1]), float((ma[-1] * (1 - ma[-1]) + mb[-1] * (1 - mb[-1])) / n[-1]), 1e-4, 0.05
    )
    assert 0 < lo < 0.02 < hi


# ------------------------------------------------------------------ allocation policies
def test_policies_allocate_as_documented() -> None:
    arms = [ArmStats().add([1] * 7 + [0] * 93), ArmStats().add([1] * 9 + [0] * 91)]
    assert Fixed((1.0, 3.0)).allocate(arms) == [0.25, 0.75]
    assert EpsilonGreedy(0.1).allocate(arms) == pytest.approx([0.05, 0.95])
    assert EpsilonGreedy(0.1).allocate([ArmStats(), *arms[1:]]) == [0.5, 0.5]
    assert Thompson().allocate(arms) == pytest.approx(prob_best(Thompson().posteriors(arms)))
    assert UCB().allocate([arms[0], ArmStats()]) == [0.0, 1.0]  # an untried arm first
    assert sum(UCB().allocate(arms)) == 1.0
    assert arms[1].mean == 0.09
    assert arms[1].var == pytest.approx(np.var([1] * 9 + [0] * 91, ddof=1))


def test_sticky_choice_keeps_users_and_follows_the_weights() -> None:
    weights = [0.8, 0.2]
    chosen = [sticky_choice("exp-a", f"user-{i}", weights) for i in range(20_000)]
    assert chosen == [sticky_choice("exp-a", f"user-{i}", weights) for i in range(20_000)]
    assert sum(chosen) / len(chosen) == pytest.approx(0.2, abs=0.01)
    other = [sticky_choice("exp-b", f"user-{i}", weights) for i in range(20_000)]
    both = sum(1 for x, y in zip(chosen, other, strict=True) if x and y) / len(chosen)
    assert both == pytest.approx(0.04, abs=0.006)  # independent across experiments
    assert choice([0.0, 1.0], 0.0) == 1
    assert choice([1.0, 0.0], 0.999) == 0


def test_thompson_regret_grows_slower_than_uniform_and_epsilon_greedy() -> None:
    rates = (0.05, 0.15)
    regret = {
        p.name: np.mean(
            [simulate_regret(p, rates, 20_000, 500, np.random.default_rng(s))[-1] for s in range(4)]
        )
        for p in (Thompson(), EpsilonGreedy(0.1), Fixed((1.0, 1.0), name="uniform"))
    }
    assert regret["uniform"] == pytest.approx(1000, rel=0.05)  # 20,000 x 0.1 / 2
    assert regret["thompson"] < 0.5 * regret["epsilonGreedy"] < regret["uniform"]


def test_bench_bandit_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from gyre.bench.bandit import main

    args = [
        "--requests",
        "5000",
        "--seeds",
        "2",
        "--aa-runs",
        "200",
        "--aa-requests",
        "2000",
        "--look-every",
        "100",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for name in ("ab", "four_arms"):
        sc = out["scenarios"][name]
        assert set(sc["regret"]) == {"thompson", "epsilonGreedy", "ucb", "uniform"}
        assert sc["thompson_over_egreedy"] == pytest.approx(
            sc["regret"]["thompson"] / sc["regret"]["epsilonGreedy"], rel=1e-3
        )
    assert 0 <= out["sequential_aa_fpr"] <= out["naive_aa_fpr"] <= 1
    assert set(out["goals"]) == {
        "thompson_over_egreedy.ab",
        "thompson_over_egreedy.four_arms",
        "sequential_aa_fpr",
    }
