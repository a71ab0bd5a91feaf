"""Bayesian A/B analysis: posteriors per arm, the probability that each arm is best, the expected
loss of choosing it, and the bandit's "value remaining" stopping rule.

Conversions get a Beta posterior (``Beta(prior_a + successes, prior_b + failures)``); continuous
rewards a Normal posterior of the mean (``N(mean, var / n)``). P(best) and expected loss are
one-dimensional integrals over the arms' posterior densities and distribution functions:

    P(i best) = ∫ f_i(x) Π_{j≠i} F_j(x) dx        E[max_j θ_j] = ∫ x d(Π_j F_j)(x)

evaluated on a grid that covers every posterior's mass, so they are deterministic and exact to
the grid (no sampling noise between two reconciles of the same data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special
from scipy import stats as sps

FloatArray = npt.NDArray[np.float64]

# Points per arm: the grid is the union of one evenly spaced grid per arm over that arm's own
# mass (its mean ± SPAN_SD standard deviations, clipped to the support), so a narrow posterior
# far from the others is resolved as finely as a wide one.
GRID_POINTS = 1001
SPAN_SD = 20.0


@dataclass(frozen=True)
class Posterior:
    """One arm's posterior of its mean reward: Beta(a, b) or Normal(mean, sd)."""

    family: str  # "beta" | "normal"
    p1: float  # beta: a; normal: mean
    p2: float  # beta: b; normal: sd

    @classmethod
    def beta(cls, successes: int, trials: int, prior: tuple[float, float] = (1.0, 1.0)) -> Posterior:
        if trials < 0 or not 0 <= successes <= trials:
            raise ValueError(f"successes must lie in [0, trials], got {successes} of {trials}")
        return cls("beta", prior[0] + successes, prior[1] + trials - successes)

    @classmethod
    def normal(cls, mean: float, var: float, n: int) -> Posterior:
        """The mean's posterior under a flat prior with the sample variance plugged in."""
        if n < 2:
            raise ValueError(f"a Normal posterior needs at least 2 observations, got {n}")
        return cls("normal", mean, math.sqrt(max(var, 1e-300) / n))

    @property
    def dist(self) -> sps.rv_continuous:
        if self.family == "beta":
            return sps.beta(self.p1, self.p2)
        return sps.norm(self.p1, self.p2)

    @property
    def sd(self) -> float:
        if self.family == "beta":
            a, b = self.p1, self.p2
            return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        return self.p2

    def span(self) -> tuple[float, float]:
        """Where all but a negligible share of the mass lies."""
        lo, hi = self.mean - SPAN_SD * self.sd, self.mean + SPAN_SD * self.sd
        if self.family == "beta":
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        return lo, hi if hi > lo else lo + 1e-12

    def pdf(self, x: FloatArray) -> FloatArray:
        if self.family == "beta":
            a, b = self.p1, self.p2
            with np.errstate(divide="ignore", invalid="ignore"):
                log_pdf = (a - 1) * np.log(x) + (b - 1) * np.log1p(-x) - special.betaln(a, b)
            return np.asarray(np.where((x > 0) & (x < 1), np.exp(log_pdf), 0.0))
        z = (x - self.p1) / self.p2
        return np.asarray(np.exp(-0.5 * z * z) / (self.p2 * math.sqrt(2 * math.pi)))

    def cdf(self, x: FloatArray) -> FloatArray:
        if self.family == "beta":
            return np.asarray(special.betainc(self.p1, self.p2, np.clip(x, 0.0, 1.0)))
        return np.asarray(special.ndtr((x - self.p1) / self.p2))

    @property
    def mean(self) -> float:
        if self.family == "beta":
            return self.p1 / (self.p1 + self.p2)
        return self.p1

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The central credible interval."""
        lo, hi = self.dist.ppf([(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        if self.family == "beta":
            return rng.beta(self.p1, self.p2, size)
        return rng.normal(self.p1, self.p2, size)


def _grid(arms: Sequence[Posterior]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The grid x, each arm's pdf and cdf on it (arms x points)."""
    if len(arms) < 1:
        raise ValueError("need at least one arm")
    if len({a.family for a in arms}) != 1:
        raise ValueError("all arms must have the same posterior family")
    x = np.unique(np.concatenate([np.linspace(*a.span(), GRID_POINTS) for a in arms]))
    pdf = np.vstack([a.pdf(x) for a in arms])
    cdf = np.vstack([a.cdf(x) for a in arms])
    return x, pdf, cdf


def _trapezoid(y: FloatArray, x: FloatArray) -> FloatArray:
    return np.asarray(np.trapezoid(y, x, axis=-1))


def prob_best(arms: Sequence[Posterior]) -> list[float]:
    """P(arm i has the highest mean), for every arm; they sum to 1."""
    if len(arms) == 1:
        return [1.0]
    x, pdf, cdf = _grid(arms)
    out = []
    for i in range(len(arms)):
        others = np.prod(np.delete(cdf, i, axis=0), axis=0)
        out.append(float(_trapezoid(pdf[i] * others, x)))
    total = sum(out)
    return [p / total for p in out] if total > 0 else [1.0 / len(arms)] * len(arms)


def expected_max(arms: Sequence[Posterior]) -> float:
    """E[max_i θ_i] = lo + ∫ (1 - Π F_i(x)) dx over the grid [lo, hi]."""
    x, _, cdf = _grid(arms)
    return float(x[0] + _trapezoid(1.0 - np.prod(cdf, axis=0), x))


def expected_loss(arms: Sequence[Posterior]) -> list[float]:
    """E[max_j θ_j - θ_i]: what choosing arm i costs, in the metric's units, if it is not best."""
    emax = expected_max(arms)
    return [max(emax - a.mean, 0.0) for a in arms]


@dataclass(frozen=True)
class ValueRemaining:
    leader: int
    quantile: float  # the `level` quantile of (max_j θ_j - θ_leader) / θ_leader
    level: float
    threshold: float

    @property
    def stop(self) -> bool:
        return self.quantile < self.threshold


def value_remaining(
    arms: Sequence[Posterior],
    rng: np.random.Generator,
    *,
    draws: int = 10_000,
    level: float = 0.95,
    threshold: float = 0.01,
) -> ValueRemaining:
    """The bandit's stopping rule: stop when, with probability ``level``, no arm beats the leader
    (the arm most likely best) by more than ``threshold`` of the leader's value."""
    leader = int(np.argmax(prob_best(arms)))
    theta = np.vstack([a.sample(rng, draws) for a in arms])
    base = theta[leader]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (theta.max(axis=0) - base) / np.abs(base)
    rel = np.where(np.isfinite(rel), rel, np.inf)
    return ValueRemaining(leader, float(np.quantile(rel, level)), level, threshold)
