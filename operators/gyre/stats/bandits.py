"""Allocation policies: how a router's traffic is split across an experiment's variants.

A policy turns each arm's running statistics into weights (they sum to 1). The router draws a
variant per request from the weights, or, for a request that names a user, from a hash of the
experiment and that key (`sticky_choice`), so a user keeps their variant while the weights hold.
Weights are recomputed from the outcomes on a short period, so a policy is a pure function of
the counts — the same code runs in the controller, the router and the simulations.

* `Fixed`: the configured weights (a classic A/B test).
* `EpsilonGreedy`: 1 - epsilon to the arm with the best mean, epsilon spread evenly.
* `Thompson`: probability matching — each arm's weight is the posterior probability that it is
  best (Beta-Bernoulli for conversions, Normal for continuous rewards).
* `UCB`: all traffic to the arm with the highest upper confidence bound (UCB1).
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np
import numpy.typing as npt

from gyre.stats.bayesian import Posterior, prob_best

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ArmStats:
    """One arm's outcomes so far: ``trials`` rewarded requests, the sum and sum of squares of rewards."""

    trials: int = 0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0

    @property
    def mean(self) -> float:
        return self.reward_sum / self.trials if self.trials else 0.0

    @property
    def var(self) -> float:
        """The sample variance (ddof=1); 0 below two trials."""
        if self.trials < 2:
            return 0.0
        return max((self.reward_sq_sum - self.trials * self.mean**2) / (self.trials - 1), 0.0)

    def add(self, rewards: Sequence[float] | FloatArray) -> ArmStats:
        r = np.asarray(rewards, dtype=float)
        return ArmStats(
            self.trials + int(r.size),
            self.reward_sum + float(r.sum()),
            self.reward_sq_sum + float((r * r).sum()),
        )


def _uniform(k: int) -> list[float]:
    return [1.0 / k] * k


def _argmax_split(values: Sequence[float]) -> list[float]:
    """Weight 1 on the best value, split evenly between ties."""
    top = max(values)
    winners = [i for i, v in enumerate(values) if v == top]
    return [1.0 / len(winners) if i in winners else 0.0 for i in range(len(values))]


class Policy(ABC):
    name: str

    @abstractmethod
    def allocate(self, arms: Sequence[ArmStats]) -> list[float]:
        """Weights per arm, summing to 1."""


@dataclass(frozen=True)
class Fixed(Policy):
    weights: tuple[float, ...]
    name: str = "fixed"

    def allocate(self, arms: Sequence[ArmStats]) -> list[float]:
        if len(arms) != len(self.weights):
            raise ValueError(f"{len(self.weights)} weights for {len(arms)} arms")
        total = sum(self.weights)
        return [w / total for w in self.weights]


@dataclass(frozen=True)
class EpsilonGreedy(Policy):
    epsilon: float = 0.1
    name: str = "epsilonGreedy"

    def allocate(self, arms: Sequence[ArmStats]) -> list[float]:
        k = len(arms)
        if any(a.trials == 0 for a in arms):
            return _uniform(k)
        greedy = _argmax_split([a.mean for a in arms])
        return [self.epsilon / k + (1 - self.epsilon) * g for g in greedy]


@dataclass(frozen=True)
class Thompson(Policy):
    reward: str = "bernoulli"  # "bernoulli" (rewards 0/1) | "normal"
    name: str = "thompson"

    def posteriors(self, arms: Sequence[ArmStats]) -> list[Posterior]:
        if self.reward == "bernoulli":
            return [Posterior.beta(round(a.reward_sum), a.trials) for a in arms]
        return [Posterior.normal(a.mean, a.var, a.trials) for a in arms]

    def allocate(self, arms: Sequence[ArmStats]) -> list[float]:
        if self.reward == "normal" and any(a.trials < 2 for a in arms):
            return _uniform(len(arms))
        return prob_best(self.posteriors(arms))


@dataclass(frozen=True)
class UCB(Policy):
    """UCB1 for rewards in [0, 1]: mean + c * sqrt(ln N / n)."""

    c: float = math.sqrt(2.0)
    name: str = "ucb"

    def allocate(self, arms: Sequence[ArmStats]) -> list[float]:
        untried = [1.0 if a.trials == 0 else 0.0 for a in arms]
        if any(untried):
            return [u / sum(untried) for u in untried]
        total = sum(a.trials for a in arms)
        return _argmax_split([a.mean + self.c * math.sqrt(math.log(total) / a.trials) for a in arms])


def choice(weights: Sequence[float], u: float) -> int:
    """The arm that a uniform draw ``u`` in [0, 1) falls on."""
    cum = list(accumulate(weights))
    return min(bisect_right(cum, u * cum[-1]), len(weights) - 1)


def sticky_choice(experiment: str, key: str, weights: Sequence[float]) -> int:
    """The arm of a user: a hash of experiment and key, so the same user gets the same arm and
    different experiments split users independently."""
    digest = hashlib.sha256(f"{experiment}\x00{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return choice(weights, u)
