"""Drift of the served inputs against the training distribution saved in the artifact.

Both sides are compared as the network sees them (preprocessed): the artifact's reference
sample of training rows, and the rows of the last ``window_s`` seconds of requests (at most
``max_rows``). Per feature:

* numeric: ``psi`` or ``ks`` (`gyre.pipelines._common.drift`). Standardising is monotone, so
  both equal their values on the raw inputs.
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
from gyre.pipelines._common.drift import numeric_score, psi, quantile_edges


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
        self._edges = [quantile_edges(reference[:, j]) for j in range(len(self.numeric))]

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
            out[name] = numeric_score(self.reference[:, j], live[:, j], self.metric, self._edges[j])
        offset = len(self.numeric)
        for name, width in self.categorical:
            ref = self.reference[:, offset : offset + width].sum(axis=0)
            cur = live[:, offset : offset + width].sum(axis=0)
            out[name] = psi(ref, cur)
            offset += width
        return {k: round(v, 4) for k, v in out.items()}
