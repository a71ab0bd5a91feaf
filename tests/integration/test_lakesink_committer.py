"""The lake's commit protocol, crash by crash: what recovery does with each interrupted state.

No broker: these drive `gyre.pipelines.lakesink.committer` directly and stop it at the exact
points a SIGKILL can hit (the end-to-end kill test hits them at random).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from gyre.pipelines.lakesink.committer import (
    CommitRecord,
    Lake,
    LakeCorruptError,
    ObjectStoreCommitter,
    RenameCommitter,
    committed_files,
    data_file_name,
    make_committer,
    read_committed,
)


def _table(first: int, last: int) -> pa.Table:
    return pa.table({"x": pa.array(range(first, last + 1), pa.int64())})


def _flush(c: RenameCommitter | ObjectStoreCommitter, p: int, first: int, last: int,
           *, commit: bool = True) -> CommitRecord:  # fmt: skip
    rel = f"date=2024-05-01/{data_file_name(p, first, last)}"
    staged = [c.write_file(rel, _table(first, last))]
    rec = CommitRecord(topic="t", partition=p, start_offset=first, next_offset=last + 1,
                       files=(rel,), records=last - first + 1)  # fmt: skip
    if commit:
        c.commit(rec, staged)
    return rec


def _visible(lake_dir: Path) -> list[str]:
    return sorted(p.name for p in lake_dir.glob("date=*/*") if not p.name.startswith("."))


def test_auto_picks_rename_for_local_paths(tmp_path: Path) -> None:
    assert isinstance(make_committer(Lake(str(tmp_path))), RenameCommitter)
    assert isinstance(make_committer(Lake(f"file://{tmp_path}"), "object-store"),
                      ObjectStoreCommitter)  # fmt: skip


def test_uncommitted_temp_files_are_discarded(tmp_path: Path) -> None:
    lake = Lake(f"file://{tmp_path}")
    c = RenameCommitter(lake)
    _flush(c, 0, 0, 9)
    _flush(c, 0, 10, 19, commit=False)  # killed after writing data, before the record
    assert _visible(tmp_path) == [data_file_name(0, 0, 9)]  # readers never saw the temp file
    rec = RenameCommitter(lake).recover(0, lake.list_data())
    assert rec is not None
    assert rec.next_offset == 10
    assert not list(tmp_path.glob("date=*/.*"))  # the temp file is gone
    assert read_committed(lake.uri)["x"].to_pylist() == list(range(10))


def test_committed_record_with_unrenamed_files_is_rolled_forward(tmp_path: Path) -> None:
    lake = Lake(f"file://{tmp_path}")
    c = RenameCommitter(lake)
    _flush(c, 1, 0, 4)
    # Killed between writing the commit record and renaming the data file.
    rel = f"date=2024-05-01/{data_file_name(1, 5, 9)}"
    staged = [c.write_file(rel, _table(5, 9))]
    rec = CommitRecord(topic="t", partition=1, start_offset=5, next_offset=10, files=(rel,),
                       records=5)  # fmt: skip
    c._publish = lambda staged: None  # type: ignore[method-assign]
    c.commit(rec, staged)
    assert _visible(tmp_path) == [data_file_name(1, 0, 4)]
    got = RenameCommitter(lake).recover(1, lake.list_data())
    assert got is not None
    assert got.next_offset == 10
    assert _visible(tmp_path) == [data_file_name(1, 0, 4), data_file_name(1, 5, 9)]
    assert read_committed(lake.uri)["x"].to_pylist() == list(range(10))


def test_torn_commit_record_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    lake = Lake(f"file://{tmp_path}")
    c = ObjectStoreCommitter(lake)
    _flush(c, 2, 0, 9)
    _flush(c, 2, 10, 19, commit=False)  # data written directly, record torn mid-write
    (tmp_path / "_gyre/commits/p00002" / f"{20:020d}.json").write_bytes(b'{"topic": "t", "par')
    rec = ObjectStoreCommitter(lake).recover(2, lake.list_data())
    assert rec is not None
    assert rec.next_offset == 10
    assert _visible(tmp_path) == [data_file_name(2, 0, 9)]  # the orphan is deleted


def test_object_store_orphans_are_invisible_to_committed_readers(tmp_path: Path) -> None:
    lake = Lake(f"file://{tmp_path}")
    c = ObjectStoreCommitter(lake)
    _flush(c, 0, 0, 9)
    _flush(c, 0, 10, 19, commit=False)
    assert len(_visible(tmp_path)) == 2  # a plain listing sees the orphan until recovery ...
    assert [Path(p).name for p in committed_files(lake.uri)] == [data_file_name(0, 0, 9)]


def test_old_commit_records_are_pruned(tmp_path: Path) -> None:
    lake = Lake(f"file://{tmp_path}")
    c = RenameCommitter(lake, keep_records=3)
    for i in range(6):
        _flush(c, 0, i * 10, i * 10 + 9)
    assert [n for n, _ in lake.list_records(0)] == [60, 50, 40]
    assert read_committed(lake.uri).num_rows == 60


def test_a_lost_committed_file_is_an_error_not_silent_loss(tmp_path: Path) -> None:
    lake = Lake(f"file://{tmp_path}")
    c = RenameCommitter(lake)
    _flush(c, 0, 0, 9)
    (tmp_path / "date=2024-05-01" / data_file_name(0, 0, 9)).unlink()
    with pytest.raises(LakeCorruptError):
        RenameCommitter(lake).recover(0, lake.list_data())
