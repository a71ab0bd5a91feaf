"""Feature preprocessing fitted on the training split and shipped inside the model artifact.

Numeric features are standardised with the training mean and standard deviation (missing
values become 0 after scaling, i.e. the mean). Categorical features are one-hot encoded over
the ``max_categories`` most frequent training values; any other value (unseen, rare, empty)
goes to a shared "unknown" slot. Training and serving call the same `Preprocessor.transform`,
which is what keeps them from drifting apart (training/serving skew).

Fitting is distributed: each data shard yields partial statistics (`shard_stats`), the ranks
exchange them, and `fit` merges them in shard order, so the result does not depend on how
shards are spread over workers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from gyre.pipelines.trainer.data import CATEGORICAL, NUMERIC, RawColumns

UNKNOWN = "<unknown>"


def shard_stats(raw: RawColumns, kinds: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Partial statistics of one shard: count/sum/sum of squares, or value counts."""
    stats: dict[str, Any] = {}
    for name, kind in kinds:
        col = raw.columns[name]
        if kind == NUMERIC:
            ok = col[~np.isnan(col)]
            stats[name] = (int(ok.size), float(ok.sum()), float(np.square(ok).sum()))
        else:
            stats[name] = dict(Counter(v for v in col.tolist() if v != ""))
    return stats


@dataclass(frozen=True)
class Preprocessor:
    numeric: tuple[str, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    categorical: tuple[str, ...]
    vocab: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def features(self) -> list[dict[str, str]]:
        return [{"name": n, "type": NUMERIC} for n in self.numeric] + [
            {"name": n, "type": CATEGORICAL} for n in self.categorical
        ]

    @property
    def input_dim(self) -> int:
        return len(self.numeric) + sum(len(self.vocab[c]) + 1 for c in self.categorical)

    @classmethod
    def fit(
        cls,
        kinds: Sequence[tuple[str, str]],
        stats_by_shard: Sequence[dict[str, Any]],
        max_categories: int,
    ) -> Preprocessor:
        numeric = [n for n, k in kinds if k == NUMERIC]
        categorical = [n for n, k in kinds if k == CATEGORICAL]
        means, stds = [], []
        for name in numeric:
            count, total, squares = 0, 0.0, 0.0
            for st in stats_by_shard:
                c, s, q = st[name]
                count, total, squares = count + c, total + s, squares + q
            mean = total / count if count else 0.0
            var = max(squares / count - mean * mean, 0.0) if count else 0.0
            std = math.sqrt(var)
            means.append(mean)
            stds.append(std if std > 1e-12 else 1.0)  # a constant column scales to 0
        vocab: dict[str, tuple[str, ...]] = {}
        for name in categorical:
            counts: Counter[str] = Counter()
            for st in stats_by_shard:
                counts.update(st[name])
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            vocab[name] = tuple(v for v, _ in ranked[:max_categories])
        return cls(tuple(numeric), tuple(means), tuple(stds), tuple(categorical), vocab)

    def transform(self, columns: Mapping[str, Any]) -> npt.NDArray[Any]:
        """Raw columns (name → sequence of values) → float32 matrix ``[rows, input_dim]``."""
        n = _num_rows(columns, self.numeric + self.categorical)
        out = np.zeros((n, self.input_dim), dtype=np.float32)
        for j, name in enumerate(self.numeric):
            col = _numeric(columns.get(name), n)
            scaled = (col - self.means[j]) / self.stds[j]
            out[:, j] = np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0)
        offset = len(self.numeric)
        for name in self.categorical:
            values = self.vocab[name]
            index = {v: i + 1 for i, v in enumerate(values)}  # slot 0 is "unknown"
            raw = columns.get(name)
            seq = [None] * n if raw is None else list(raw)
            keys = ("" if v is None else str(v) for v in seq)
            hits = np.fromiter((index.get(k, 0) for k in keys), np.int64, n)
            out[np.arange(n), offset + hits] = 1.0
            offset += len(values) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": [
                {"name": n, "mean": m, "std": s}
                for n, m, s in zip(self.numeric, self.means, self.stds, strict=True)
            ],
            "categorical": [
                {"name": n, "vocabulary": list(self.vocab[n]), "unknown": UNKNOWN} for n in self.categorical
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessor:
        num = data.get("numeric", [])
        cat = data.get("categorical", [])
        return cls(
            numeric=tuple(d["name"] for d in num),
            means=tuple(float(d["mean"]) for d in num),
            stds=tuple(float(d["std"]) for d in num),
            categorical=tuple(d["name"] for d in cat),
            vocab={d["name"]: tuple(d["vocabulary"]) for d in cat},
        )


def _num_rows(columns: Mapping[str, Any], names: Sequence[str]) -> int:
    for name in names:
        col = columns.get(name)
        if col is not None:
            return len(col)
    raise ValueError(f"none of the features {list(names)} present in the input")


def _numeric(col: Any, n: int) -> npt.NDArray[Any]:
    if col is None:
        return np.full(n, np.nan)
    if isinstance(col, np.ndarray) and col.dtype.kind == "f":
        return col.astype(np.float64, copy=False)
    return np.array([np.nan if v is None else float(v) for v in col], dtype=np.float64)


def rows_to_columns(rows: Any) -> Mapping[str, Any]:
    """Accept a list of dicts, a dict of columns, a pyarrow Table or a pandas DataFrame."""
    if isinstance(rows, Mapping):
        return rows
    if hasattr(rows, "to_pydict"):  # pyarrow.Table / RecordBatch
        result: Mapping[str, Any] = rows.to_pydict()
        return result
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas.DataFrame
        return {c: rows[c].tolist() for c in rows.columns}
    rows = list(rows)
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    return {k: [r.get(k) for r in rows] for k in names}
