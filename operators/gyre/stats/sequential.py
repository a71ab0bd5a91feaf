"""Always-valid inference: the mixture sequential probability ratio test (mSPRT).

A fixed-horizon test read every hour inflates its false-positive rate far above alpha. The
mSPRT's p-value stays valid however often it is read: under the null, the probability that it
*ever* drops below alpha is at most alpha (Johari, Koomen, Pekelis and Walsh, "Always Valid
Inference: Continuous Monitoring of A/B Tests", Operations Research 2022).

With the estimated lift ``d`` (mean_b - mean_a), its variance ``s2`` (var_a/n_a + var_b/n_b)
and a Normal mixing distribution N(0, tau2) over the true lift, the mixture likelihood ratio
against "no lift" is

    L = sqrt(s2 / (s2 + tau2)) * exp(tau2 * d**2 / (2 * s2 * (s2 + tau2)))

and the always-valid p-value after each look is ``p_n = min(p_{n-1}, 1 / L_n)``. ``tau2`` sets
the effect sizes the test is most sensitive to; the minimum detectable effect squared is the
usual choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def mixture_likelihood_ratio(lift: FloatArray | float, s2: FloatArray | float, tau2: float) -> FloatArray:
    """L for each (lift, s2); where s2 is 0 (no variance observed yet) L is 1: no evidence."""
    if tau2 <= 0:
        raise ValueError(f"tau2 must be positive, got {tau2}")
    d = np.asarray(lift, dtype=float)
    v = np.asarray(s2, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_l = 0.5 * np.log(v / (v + tau2)) + tau2 * d**2 / (2 * v * (v + tau2))
    return np.asarray(np.where(v > 0, np.exp(np.minimum(log_l, 700.0)), 1.0))


def always_valid_pvalues(lift: FloatArray, s2: FloatArray, tau2: float) -> FloatArray:
    """p-values along the last axis of a sequence of looks (running minimum of 1 / L)."""
    inv = np.minimum(1.0, 1.0 / mixture_likelihood_ratio(lift, s2, tau2))
    return np.asarray(np.minimum.accumulate(inv, axis=-1))


def always_valid_interval(lift: float, s2: float, tau2: float, alpha: float) -> tuple[float, float]:
    """The (1 - alpha) confidence sequence of the lift at this look: valid at every look at once."""
    if s2 <= 0:
        return -math.inf, math.inf
    half = math.sqrt(s2 * (s2 + tau2) / tau2 * (math.log((s2 + tau2) / s2) - 2 * math.log(alpha)))
    return lift - half, lift + half


@dataclass
class SequentialTest:
    """The mSPRT read at successive looks; ``p_value`` only ever decreases."""

    tau2: float
    alpha: float = 0.05
    p_value: float = 1.0
    looks: int = 0

    def look(self, mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int) -> float:
        if n_a <= 0 or n_b <= 0:
            return self.p_value
        s2 = var_a / n_a + var_b / n_b
        lr = float(mixture_likelihood_ratio(mean_b - mean_a, s2, self.tau2))
        self.p_value = min(self.p_value, 1.0 / lr)
        self.looks += 1
        return self.p_value

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha
