"""Data split and sharding, preprocessing, checkpoints and metrics of the trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from gyre.pipelines.trainer.checkpoint import list_checkpoints, load_latest, save_checkpoint  # noqa: E402
from gyre.pipelines.trainer.config import DatasetConfig, SplitConfig  # noqa: E402
from gyre.pipelines.trainer.data import (  # noqa: E402
    ParquetSource,
    compute_split,
    feature_kinds,
    owned_shards,
    shard_ids,
    to_raw,
)
from gyre.pipelines.trainer.preprocessing import Preprocessor, shard_stats  # noqa: E402
from gyre.pipelines.trainer.worker import auc  # noqa: E402


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    for d, start in (("2024-01-01", 0), ("2024-01-02", 50)):
        part = tmp_path / f"date={d}"
        part.mkdir()
        ids = np.arange(start, start + 50)
        pq.write_table(
            pa.table(
                {
                    "id": ids,
                    "x": ids.astype(np.float64),
                    "c": ["a" if i % 3 else "b" for i in ids],
                    "ts": ids * 10,
                    "y": (ids % 2).astype(np.int64),
                }
            ),
            part / "p.parquet",
            row_group_size=10,
        )
    return tmp_path


def test_source_orders_rows_and_reads_only_requested_row_groups(dataset: Path) -> None:
    src = ParquetSource(f"file://{dataset}")
    assert src.num_rows == 100
    assert len(src.row_groups) == 10
    assert src.partition_columns == ("date",)
    table = src.read_rows(np.array([3, 55, 99]), ["id", "date"])
    assert table.column("id").to_pylist() == [3, 55, 99]
    assert table.column("date").to_pylist() == ["2024-01-01", "2024-01-02", "2024-01-02"]
    assert len(src.version()) == 16


def test_default_features_skip_label_timestamp_partitions_and_excluded(dataset: Path) -> None:
    src = ParquetSource(str(dataset))
    kinds = feature_kinds(
        src, DatasetConfig(path=str(dataset), label="y", timestamp_column="ts", exclude=("id",))
    )
    assert kinds == [("x", "numeric"), ("c", "categorical")]


def test_time_split_puts_the_newest_rows_in_validation(dataset: Path) -> None:
    src = ParquetSource(str(dataset))
    split = compute_split(src, SplitConfig(kind="time", validation_fraction=0.2), "ts")
    assert split.validation_ids.tolist() == list(range(80, 100))


def test_rows_without_a_label_are_in_neither_set(tmp_path: Path) -> None:
    """A FeatureJob's observation with no event in the label's horizon has a null label: it
    teaches nothing (a NaN label made the loss NaN), and a time split's cutoff counts the
    labeled rows only."""
    ids = np.arange(100)
    labels = pa.array([None if i % 4 == 0 or i >= 90 else i % 2 for i in ids], pa.int64())
    pq.write_table(pa.table({"x": ids.astype(np.float64), "ts": ids, "y": labels}), tmp_path / "p.parquet")
    src = ParquetSource(str(tmp_path))
    split = compute_split(src, SplitConfig(kind="time", validation_fraction=0.2), "ts", "y")
    labeled = [i for i in ids if i % 4 != 0 and i < 90]
    assert split.unlabeled_rows == 100 - len(labeled)
    assert split.train_ids.tolist() + split.validation_ids.tolist() == labeled
    n_val = len(split.validation_ids)
    assert 0.2 * len(labeled) <= n_val <= 0.2 * len(labeled) + 1, n_val  # 20% of the labeled rows
    assert split.validation_ids.tolist() == labeled[-n_val:]  # the newest
    assert "left out" in split.description
    random = compute_split(src, SplitConfig(kind="random", validation_fraction=0.3, seed=1), None, "y")
    assert sorted(random.train_ids.tolist() + random.validation_ids.tolist()) == labeled
    none = pa.table({"x": [1.0, 2.0], "ts": [1, 2], "y": pa.array([None, None], pa.int64())})
    pq.write_table(none, tmp_path / "p.parquet")
    with pytest.raises(Exception, match="every row's label 'y' is null"):
        compute_split(ParquetSource(str(tmp_path)), SplitConfig(kind="time"), "ts", "y")


def test_random_split_is_seeded(dataset: Path) -> None:
    src = ParquetSource(str(dataset))
    a = compute_split(src, SplitConfig(kind="random", validation_fraction=0.3, seed=1), None)
    b = compute_split(src, SplitConfig(kind="random", validation_fraction=0.3, seed=1), None)
    assert (a.validation == b.validation).all()
    assert 15 < a.validation.sum() < 45


def test_shards_are_contiguous_equal_blocks_owned_round_robin() -> None:
    shards = shard_ids(np.arange(10), 3)
    assert [s.tolist() for s in shards] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert owned_shards(4, 1, 2) == [1, 3]
    assert owned_shards(2, 0, 1) == [0, 1]


def test_preprocessing_fit_from_shards_equals_fit_on_all(dataset: Path) -> None:
    src = ParquetSource(str(dataset))
    kinds = [("x", "numeric"), ("c", "categorical")]
    parts = [to_raw(src.read_rows(np.arange(i, i + 25), ["x", "c", "y"]), kinds, "y") for i in (0, 25)]
    pre = Preprocessor.fit(kinds, [shard_stats(p, kinds) for p in parts], max_categories=8)
    assert pre.means[0] == pytest.approx(24.5)
    assert pre.stds[0] == pytest.approx(np.arange(50).std())
    assert pre.vocab["c"] == ("a", "b")
    out = pre.transform({"x": [24.5, None], "c": ["b", "never-seen"]})
    # x scaled (missing → 0); c one-hot over [unknown, a, b]
    assert out.tolist() == [[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]]
    assert Preprocessor.from_dict(pre.to_dict()) == pre


def test_checkpoints_are_atomic_pruned_and_latest_wins(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.ones(2) * step}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 30]
    assert not list(tmp_path.glob(".ckpt-*"))
    latest = load_latest(tmp_path)
    assert latest is not None
    assert latest["step"] == 30
    # a torn newest file falls back to the previous checkpoint
    (tmp_path / "ckpt-000000040.pt").write_bytes(b"garbage")
    latest = load_latest(tmp_path)
    assert latest is not None
    assert latest["step"] == 30


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(200).round(2)  # ties included
    labels = (rng.random(200) < 0.4).astype(np.float32)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc(scores, labels) == pytest.approx(pairwise / (len(pos) * len(neg)))
    assert auc(scores, np.zeros(200)) is None
