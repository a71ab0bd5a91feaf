"""Drift of the served inputs against the training distribution saved in the artifact.

Both sides are compared as the network sees them (preprocessed): the artifact's reference
sample of training rows, and the rows of the last ``window_s`` seconds of requests (at most
``max_rows``). Per feature:

* numeric: ``psi`` — the population stability index over ten quantile bins of the reference
  (bins with no rows count as 0.5 rows, so an empty bin does not divide by zero); or ``ks`` —
  the two-sample Kolmogorov-Smirnov statistic (`scipy.stats.ks_2samp`). Standardising is
  monotone, so both equal their values on the raw inputs.
* categorical: the PSI over the training vocabulary plus the unknown slot, whichever metric.

A score is computed once ``min_rows`` live rows are in the window (None before).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
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


class DriftMonitor:
    def __init__(
        self,
        reference: npt.NDArray[Any],
        numeric: Sequence[str],
        categorical: Sequence[tuple[str, int]],
        *,
        metric: str,
        window_s: float,
        max_rows: int = 20_000,
        min_rows: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``categorical``: (name, width) of each one-hot block after the numeric columns."""
        self.reference = reference
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.metric = metric
        self.window_s = window_s
        self.min_rows = min_rows
        self.clock = clock
        self._rows: collections.deque[tuple[float, npt.NDArray[Any]]] = collections.deque(maxlen=max_rows)
        self._edges = [
            np.unique(np.quantile(reference[:, j], np.linspace(0, 1, BINS + 1)[1:-1]))
            for j in range(len(self.numeric))
        ]

    def observe(self, x: npt.NDArray[Any]) -> None:
        now = self.clock()
        for row in x:
            self._rows.append((now, row))

    def window(self) -> npt.NDArray[Any]:
        cutoff = self.clock() - self.window_s
        while self._rows and self._rows[0][0] < cutoff:
            self._rows.popleft()
        return np.stack([r for _, r in self._rows]) if self._rows else np.zeros((0, self.reference.shape[1]))

    def scores(self) -> dict[str, float] | None:
        """Per feature drift score over the window (None: fewer than ``min_rows`` rows)."""
        live = self.window()
        if len(live) < self.min_rows or len(self.reference) == 0:
            return None
        out: dict[str, float] = {}
        for j, name in enumerate(self.numeric):
            ref, cur = self.reference[:, j], live[:, j]
            if self.metric == "ks":
                out[name] = float(stats.ks_2samp(ref, cur).statistic)
            else:
                edges = self._edges[j]
                out[name] = psi(
                    np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1),
                    np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1),
                )
        offset = len(self.numeric)
        for name, width in self.categorical:
            ref = self.reference[:, offset : offset + width].sum(axis=0)
            cur = live[:, offset : offset + width].sum(axis=0)
            out[name] = psi(ref, cur)
            offset += width
        return {k: round(v, 4) for k, v in out.items()}
