"""The offline store's versions and the source snapshot a run records (no Spark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gyre.pipelines.features import offline


def _lake(root: Path) -> None:
    for day, part, first, last in (
        ("2025-01-01", 0, 0, 9),
        ("2025-01-02", 0, 10, 19),
        ("2025-01-02", 1, 0, 4),
    ):
        d = root / f"date={day}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"part-p{part:05d}-{first:020d}-{last:020d}.parquet").write_bytes(b"x")
        commits = root / "_gyre/commits" / f"p{part:05d}"
        commits.mkdir(parents=True, exist_ok=True)
        (commits / f"{last + 1:020d}.json").write_text("{}")
    (
        root / "date=2025-01-02" / ".part-p00001-00000000000000000005-00000000000000000009.parquet.tmp"
    ).write_bytes(b"uncommitted")


def test_a_lake_is_versioned_by_its_commit_log(tmp_path: Path) -> None:
    _lake(tmp_path / "lake")
    snap = offline.snapshot(f"file://{tmp_path / 'lake'}", "lake")
    assert snap.has_data
    assert snap.partitions == ("date=2025-01-01", "date=2025-01-02")
    assert snap.version == "p00000:20,p00001:5"


def test_a_missing_or_empty_source_has_no_data(tmp_path: Path) -> None:
    assert not offline.snapshot(f"file://{tmp_path / 'nothing'}", "parquet").has_data
    (tmp_path / "empty").mkdir()
    assert not offline.snapshot(f"file://{tmp_path / 'empty'}", "parquet").has_data


def test_plain_parquet_is_versioned_by_its_files(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.parquet").write_bytes(b"1")
    first = offline.snapshot(str(tmp_path / "p"), "parquet")
    assert first.partitions == ("a.parquet",)
    (tmp_path / "p" / "b.parquet").write_bytes(b"2")
    assert offline.snapshot(str(tmp_path / "p"), "parquet").version != first.version


def test_versions_are_immutable_sorted_and_pruned_to_keep(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'store'}"
    names = [f"2026010{i}T000000Z-abc" for i in range(1, 5)]
    for i, name in enumerate(names):
        tmp = offline.begin_version(uri, name)
        (tmp / "observation_date=2026-01-01").mkdir(parents=True)
        v = offline.commit_version(uri, name, tmp, rows=i, source_version=f"p0:{i}", schema={"x": "bigint"})
        assert v.uri == f"file://{tmp_path / 'store' / 'versions' / name}"
        assert not tmp.exists()
    manifest = json.loads((tmp_path / "store/versions" / names[0] / offline.MANIFEST).read_text())
    assert manifest["rows"] == 0
    assert manifest["schema"] == {"x": "bigint"}
    # A crashed run's leftovers are never a version and are cleaned.
    offline.begin_version(uri, "20990101T000000Z-crash").mkdir(parents=True)
    kept = offline.prune_versions(uri, keep=2)
    assert [v.version for v in kept] == [names[3], names[2]]
    assert sorted(p.name for p in (tmp_path / "store/versions").iterdir()) == [names[2], names[3]]
    assert [v.rows for v in offline.list_versions(uri)] == [3, 2]


def test_only_local_uris_are_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only file://"):
        offline.local_path("s3://bucket/features")
