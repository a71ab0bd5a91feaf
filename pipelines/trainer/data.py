"""Training data: a Parquet dataset, its train/validation split, and each rank's shard.

The dataset is a Parquet file or a directory of them (hive partitions such as ``date=.../``
become columns). Rows get global ids in a fixed order (files by path, then row groups), so
every process agrees on the split and the shards from metadata alone:

* split: ``random`` marks a seeded fraction of row ids as validation; ``time`` reads only the
  timestamp column and makes the newest ``validation_fraction`` of rows the validation set.
* shards: training rows (in id order) are cut into ``data_shards`` contiguous blocks; a rank
  owns the blocks ``s`` with ``s % size == rank`` and reads only the row groups that hold them.
* batches: every epoch each shard is shuffled with a seed of (seed, epoch, shard); global step
  ``t`` consumes batch ``t`` of every shard. The global batch sequence therefore depends on
  the number of shards, not on the number of workers: 2 workers with batch ``b`` and 1 worker
  with batch ``2b`` see the same rows at every step.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from gyre.pipelines.trainer.config import ConfigError, DatasetConfig, SplitConfig, uri_to_path

NUMERIC = "numeric"
CATEGORICAL = "categorical"


@dataclass(frozen=True)
class RowGroup:
    fragment: ds.ParquetFileFragment
    path: str
    index: int
    start: int  # global id of its first row
    num_rows: int


class ParquetSource:
    """A Parquet dataset addressed by global row ids; reads only what a caller asks for."""

    def __init__(self, uri: str) -> None:
        path = uri_to_path(uri)
        if not path.exists():
            raise ConfigError(f"dataset {uri} does not exist")
        self.uri = uri
        self.root = path
        partitioning = "hive" if path.is_dir() else None
        self.dataset = ds.dataset(str(path), format="parquet", partitioning=partitioning)
        self.schema: pa.Schema = self.dataset.schema
        # the keys of "key=value" directories (a discovered partitioning's schema is not
        # reliable for a directory without partitions)
        keys: dict[str, None] = {}
        for f in self.dataset.files if partitioning else []:
            for seg in Path(os.path.relpath(f, path)).parts[:-1]:
                if "=" in seg:
                    keys[seg.split("=", 1)[0]] = None
        self.partition_columns: tuple[str, ...] = tuple(k for k in keys if k in self.schema.names)
        groups: list[RowGroup] = []
        start = 0
        for frag in sorted(self.dataset.get_fragments(), key=lambda f: f.path):
            for rg in frag.split_by_row_group():
                info = rg.row_groups[0]
                groups.append(RowGroup(rg, frag.path, info.id, start, info.num_rows))
                start += info.num_rows
        self.row_groups = groups
        self.num_rows = start
        if self.num_rows == 0:
            raise ConfigError(f"dataset {uri} has no rows")

    def version(self) -> str:
        """A content version: a hash of the files' names, sizes and modification times."""
        h = hashlib.sha256()
        for f in sorted(self.dataset.files):
            st = os.stat(f)
            h.update(f"{os.path.relpath(f, self.root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    def read_column(self, name: str) -> pa.ChunkedArray:
        """One column of every row, in id order (for the time split)."""
        tables = [g.fragment.to_table(columns=[name], schema=self.schema) for g in self.row_groups]
        return pa.concat_tables(tables).column(name)

    def read_rows(self, ids: npt.NDArray[Any], columns: Sequence[str]) -> pa.Table:
        """The rows with the given global ids (sorted ascending), reading only their row groups."""
        parts = []
        for g in self.row_groups:
            lo = np.searchsorted(ids, g.start)
            hi = np.searchsorted(ids, g.start + g.num_rows)
            if hi <= lo:
                continue
            table = g.fragment.to_table(columns=list(columns), schema=self.schema)
            parts.append(table.take(pa.array(ids[lo:hi] - g.start)))
        if not parts:
            return self.schema.empty_table().select(list(columns))
        return pa.concat_tables(parts)


def feature_kinds(source: ParquetSource, cfg: DatasetConfig) -> list[tuple[str, str]]:
    """(column, numeric|categorical) for every feature, in a fixed order."""
    schema = source.schema
    if cfg.label not in schema.names:
        raise ConfigError(f"label column {cfg.label!r} not in dataset ({schema.names})")
    if cfg.features is not None:
        names = list(cfg.features)
        missing = [n for n in names if n not in schema.names]
        if missing:
            raise ConfigError(f"feature column(s) {missing} not in dataset ({schema.names})")
    else:
        skip = {cfg.label, cfg.timestamp_column, *cfg.exclude, *source.partition_columns}
        names = [n for n in schema.names if n not in skip]
    kinds = []
    for n in names:
        t = schema.field(n).type
        if (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_boolean(t)
            or pa.types.is_decimal(t)
        ):
            kinds.append((n, NUMERIC))
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            kinds.append((n, CATEGORICAL))
        elif cfg.features is not None:
            raise ConfigError(f"feature {n!r} has unsupported type {t}")
    if not kinds:
        raise ConfigError("no usable feature columns")
    return kinds


@dataclass(frozen=True)
class Split:
    validation: npt.NDArray[Any]  # bool per global row id
    description: str
    unlabeled: npt.NDArray[Any] | None = None  # bool per global row id: left out of both sets

    def _kept(self) -> npt.NDArray[Any]:
        return ~self.unlabeled if self.unlabeled is not None else np.ones(len(self.validation), bool)

    @property
    def train_ids(self) -> npt.NDArray[Any]:
        return np.flatnonzero(~self.validation & self._kept())

    @property
    def validation_ids(self) -> npt.NDArray[Any]:
        return np.flatnonzero(self.validation & self._kept())

    @property
    def unlabeled_rows(self) -> int:
        return int(self.unlabeled.sum()) if self.unlabeled is not None else 0


def compute_split(
    source: ParquetSource, cfg: SplitConfig, timestamp_column: str | None, label: str | None = None
) -> Split:
    """Training and validation rows; with ``label``, rows whose label is null (a FeatureJob's
    observation with no event in the label's horizon) are in neither, and a time split's
    cutoff is taken over the labeled rows."""
    n = source.num_rows
    unlabeled = None
    if label is not None:
        unlabeled = np.asarray(source.read_column(label).is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if unlabeled.all():
            raise ConfigError(f"every row's label {label!r} is null: nothing to learn from")
    kept = ~unlabeled if unlabeled is not None else np.ones(n, bool)
    if cfg.kind == "random":
        rng = np.random.default_rng(cfg.seed)
        mask = rng.random(n) < cfg.validation_fraction
        desc = f"random {cfg.validation_fraction:g} seed {cfg.seed}"
    else:
        assert timestamp_column is not None
        col = source.read_column(timestamp_column)
        if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
            col = (
                pc.cast(col, pa.int64())
                if pa.types.is_timestamp(col.type)
                else pc.cast(pc.cast(col, pa.date32()), pa.int32())
            )
        ts = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        cutoff = float(np.quantile(ts[kept], 1.0 - cfg.validation_fraction, method="lower"))
        mask = ts > cutoff
        desc = f"time on {timestamp_column}: validation after {cutoff:g}"
    if unlabeled is not None and unlabeled.any():
        desc += f"; {int(unlabeled.sum())} rows without a label left out"
    if (mask & kept).all() or not (mask & kept).any() or not (~mask & kept).any():
        raise ConfigError(f"split ({desc}) leaves an empty training or validation set")
    return Split(mask, desc, unlabeled)


def shard_ids(train_ids: npt.NDArray[Any], shards: int) -> list[npt.NDArray[Any]]:
    """Contiguous, equal-sized blocks of training ids (a remainder of < shards rows is dropped)."""
    n = len(train_ids) // shards
    if n == 0:
        raise ConfigError(f"{len(train_ids)} training rows cannot fill {shards} shards")
    return [train_ids[s * n : (s + 1) * n] for s in range(shards)]


def owned_shards(shards: int, rank: int, size: int) -> list[int]:
    return [s for s in range(shards) if s % size == rank]


@dataclass
class RawColumns:
    """Feature columns as numpy: float64 for numeric (NaN for null), str objects otherwise."""

    columns: dict[str, npt.NDArray[Any]]
    label: npt.NDArray[Any]  # float32

    def __len__(self) -> int:
        return len(self.label)


def to_raw(table: pa.Table, kinds: Sequence[tuple[str, str]], label: str | None) -> RawColumns:
    cols: dict[str, npt.NDArray[Any]] = {}
    for name, kind in kinds:
        col = table.column(name)
        if kind == NUMERIC:
            cols[name] = np.asarray(
                pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
            )
        else:
            values = pc.cast(col, pa.string()) if not pa.types.is_dictionary(col.type) else col
            cols[name] = np.array(["" if v is None else str(v) for v in values.to_pylist()], dtype=object)
    y = (
        np.asarray(pc.cast(table.column(label), pa.float32()).to_numpy(zero_copy_only=False))
        if label
        else np.zeros(table.num_rows, dtype=np.float32)
    )
    return RawColumns(cols, y.astype(np.float32))


def iter_batches(
    orders: Sequence[npt.NDArray[Any]], per_shard_batch: int, start_step: int = 0
) -> Iterator[tuple[int, list[npt.NDArray[Any]]]]:
    """(step in epoch, positions per shard) from ``start_step``; the last batch may be short."""
    n = len(orders[0])
    steps = (n + per_shard_batch - 1) // per_shard_batch
    for t in range(start_step, steps):
        yield t, [o[t * per_shard_batch : (t + 1) * per_shard_batch] for o in orders]


def steps_per_epoch(shard_size: int, per_shard_batch: int) -> int:
    return (shard_size + per_shard_batch - 1) // per_shard_batch
