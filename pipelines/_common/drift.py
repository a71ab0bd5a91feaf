"""Drift scores of one feature between a reference sample and a current one, shared by the
model server (live inputs against the training sample) and the feature job (a run's rows
against its baseline).

* numeric: ``psi`` — the population stability index over ten quantile bins of the reference
  (a bin with no rows counts as 0.5 rows, so an empty bin does not divide by zero); or ``ks``
  — the two-sample Kolmogorov-Smirnov statistic (`scipy.stats.ks_2samp`);
* categorical: the PSI over the values either side holds, whichever metric.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

BINS = 10
EMPTY_BIN = 0.5


def psi(expected: npt.NDArray[Any], actual: npt.NDArray[Any]) -> float:
    """PSI of two count vectors over the same bins."""
    e = np.maximum(expected.astype(np.float64), EMPTY_BIN)
    a = np.maximum(actual.astype(np.float64), EMPTY_BIN)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(reference: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The inner edges of ``BINS`` quantile bins of the reference (fewer when values repeat)."""
    edges: npt.NDArray[Any] = np.unique(np.quantile(reference, np.linspace(0, 1, BINS + 1)[1:-1]))
    return edges


def numeric_score(
    reference: npt.NDArray[Any], current: npt.NDArray[Any], metric: str, edges: npt.NDArray[Any] | None = None
) -> float:
    """``metric`` (psi or ks) of a numeric feature; ``edges``: the reference's, when known."""
    if metric == "ks":
        return float(stats.ks_2samp(reference, current).statistic)
    edges = quantile_edges(reference) if edges is None else edges
    return psi(
        np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1),
        np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1),
    )


def categorical_score(reference: Iterable[Any], current: Iterable[Any]) -> float:
    """The PSI of a categorical feature over the values either side holds."""
    ref, cur = Counter(reference), Counter(current)
    values = sorted(set(ref) | set(cur), key=str)
    return psi(np.array([ref[v] for v in values]), np.array([cur[v] for v in values]))
