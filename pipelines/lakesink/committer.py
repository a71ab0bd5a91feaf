"""Committing Parquet files and Kafka offsets to the lake atomically, per partition.

The lake holds its own commit log: for each Kafka partition, immutable commit records
``_gyre/commits/p<partition>/<next offset>.json`` saying which offsets are in the lake and
which files hold them. A flush writes a partition's files, then one commit record; the record
is the commit point. On start the sink `recover`s each partition: it reads the newest valid
record, completes or discards what a crash interrupted, and resumes from the record's next
offset — whatever Kafka's group offsets say.

Data files are named ``date=<day>/part-p<partition>-<first offset>-<last offset>.parquet``.
Because offset ranges of successive flushes are contiguous, a data file of partition ``p``
is committed iff its last offset is below the partition's committed next offset; a file at or
past it is an orphan of an interrupted flush and is deleted by recovery before the sink writes
anything new. Readers wanting only committed rows use `committed_files`; a plain listing of
``date=*/`` matches it except, for the object-store committer, during a flush.

Two committers, one interface, chosen by the file system (the only place that relies on
rename):

* `RenameCommitter` (local and HDFS-like file systems): data files are written under a hidden
  temp name (``.part-...tmp``, ignored by Arrow/Spark dataset discovery), fsynced, and renamed
  to their final names only after the commit record is durable; recovery rolls a committed
  record's renames forward. Readers never see uncommitted files.
* `ObjectStoreCommitter` (S3-like stores, no rename): data files and the record are written
  directly (an object PUT is atomic); orphans are deleted on recovery by the offset rule.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger("gyre.lakesink")

COMMIT_DIR = "_gyre/commits"
_DATA_RE = re.compile(r"^part-p(\d{5})-(\d{20})-(\d{20})\.parquet$")
_TEMP_RE = re.compile(r"^\.part-p(\d{5})-(\d{20})-(\d{20})\.parquet\.tmp$")
_RECORD_RE = re.compile(r"^(\d{20})\.json$")


class LakeCorruptError(RuntimeError):
    """A committed file is gone: the lake lost data the commit log says it has."""


def data_file_name(partition: int, first: int, last: int) -> str:
    return f"part-p{partition:05d}-{first:020d}-{last:020d}.parquet"


@dataclass(frozen=True)
class CommitRecord:
    """What one flush committed for one partition (JSON in the lake's commit log)."""

    topic: str
    partition: int
    start_offset: int  # the partition's committed next offset before this flush
    next_offset: int  # last offset in this flush + 1: where the sink resumes
    files: tuple[str, ...]  # paths relative to the lake root
    records: int
    committed_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def to_bytes(self) -> bytes:
        d: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "start_offset": self.start_offset,
            "next_offset": self.next_offset,
            "files": list(self.files),
            "records": self.records,
            "committed_at_ms": self.committed_at_ms,
        }
        return orjson.dumps(d)

    @classmethod
    def from_bytes(cls, data: bytes) -> CommitRecord:
        d = orjson.loads(data)
        return cls(
            topic=str(d["topic"]),
            partition=int(d["partition"]),
            start_offset=int(d["start_offset"]),
            next_offset=int(d["next_offset"]),
            files=tuple(str(f) for f in d["files"]),
            records=int(d["records"]),
            committed_at_ms=int(d["committed_at_ms"]),
        )


@dataclass(frozen=True)
class StagedFile:
    """A data file written durably by `Committer.write_file` but not yet committed."""

    rel_path: str  # final path, relative to the lake root
    staged_path: str  # where it is now (absolute, in the file system)
    rows: int


class Lake:
    """A lake root on a pyarrow file system, with the layout's path helpers."""

    def __init__(self, uri: str) -> None:
        if "://" not in uri:
            uri = "file://" + os.path.abspath(uri)
        self.uri = uri
        fs, root = pafs.FileSystem.from_uri(uri)
        self.fs: pafs.FileSystem = fs
        self.root = root.rstrip("/")
        self.local = isinstance(fs, pafs.LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def commit_dir(self, partition: int) -> str:
        return self.path(f"{COMMIT_DIR}/p{partition:05d}")

    def list_data(self) -> list[pafs.FileInfo]:
        """Every file under the ``date=*/`` directories (one listing of the lake)."""
        try:
            top = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except FileNotFoundError:
            return []
        infos: list[pafs.FileInfo] = []
        for d in top:
            if d.type == pafs.FileType.Directory and d.base_name.startswith("date="):
                infos.extend(self.fs.get_file_info(pafs.FileSelector(d.path)))
        return infos

    def list_records(self, partition: int) -> list[tuple[int, str]]:
        """(next offset, path) of the partition's commit records, newest first."""
        sel = pafs.FileSelector(self.commit_dir(partition), allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(sel):
            m = _RECORD_RE.match(info.base_name)
            if m:
                out.append((int(m.group(1)), info.path))
        return sorted(out, reverse=True)

    def read_record(self, path: str) -> CommitRecord | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return CommitRecord.from_bytes(f.read())
        except (OSError, ValueError, KeyError, TypeError):
            return None  # torn write of a record that never became the commit point

    def latest_record(self, partition: int) -> CommitRecord | None:
        for _, path in self.list_records(partition):
            rec = self.read_record(path)
            if rec is not None:
                return rec
        return None

    def fsync_file(self, path: str) -> None:
        if self.local:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def fsync_dir(self, path: str) -> None:
        if self.local:
            self.fsync_file(path)


class Committer(Protocol):
    """How files become part of the lake, atomically with their offsets."""

    lake: Lake

    def write_file(self, rel_path: str, table: pa.Table) -> StagedFile:
        """Write ``table`` durably where no reader takes it for committed data yet."""
        ...

    def commit(self, record: CommitRecord, staged: Sequence[StagedFile]) -> None:
        """Make ``staged`` and ``record`` part of the lake; atomic at the record's write."""
        ...

    def recover(self, partition: int, data: Sequence[pafs.FileInfo]) -> CommitRecord | None:
        """Complete or discard an interrupted flush; the partition's latest commit record."""
        ...


class _CommitterBase:
    def __init__(
        self, lake: Lake, *, compression: str = "zstd", fsync: bool = True, keep_records: int = 10
    ) -> None:
        self.lake = lake
        self.compression = compression
        self.fsync = fsync
        self.keep_records = max(keep_records, 1)
        self._made_dirs: set[str] = set()

    def _mkdir(self, path: str) -> None:
        if path not in self._made_dirs:
            self.lake.fs.create_dir(path, recursive=True)
            self._made_dirs.add(path)

    def _write_parquet(self, path: str, table: pa.Table) -> None:
        self._mkdir(path.rsplit("/", 1)[0])
        with self.lake.fs.open_output_stream(path) as out:
            pq.write_table(table, out, compression=self.compression)
        if self.fsync:
            self.lake.fsync_file(path)

    def _prune_records(self, partition: int) -> None:
        for _, path in self.lake.list_records(partition)[self.keep_records :]:
            with contextlib.suppress(FileNotFoundError):
                self.lake.fs.delete_file(path)

    def _delete_orphans(
        self, partition: int, next_offset: int, keep: Iterable[str], data: Sequence[pafs.FileInfo]
    ) -> None:
        keep_set = set(keep)
        for info in data:
            m = _DATA_RE.match(info.base_name) or _TEMP_RE.match(info.base_name)
            if m is None or int(m.group(1)) != partition:
                continue
            is_temp = info.base_name.startswith(".")
            last = int(m.group(3))
            if (is_temp and info.path not in keep_set) or (not is_temp and last >= next_offset):
                log.info("Deleted %s, left by an interrupted flush", info.path)
                with contextlib.suppress(FileNotFoundError):
                    self.lake.fs.delete_file(info.path)


class RenameCommitter(_CommitterBase):
    """Temp files + atomic rename (see the module docstring)."""

    def _temp_of(self, final_path: str) -> str:
        head, name = final_path.rsplit("/", 1)
        return f"{head}/.{name}.tmp"

    def write_file(self, rel_path: str, table: pa.Table) -> StagedFile:
        final = self.lake.path(rel_path)
        temp = self._temp_of(final)
        self._write_parquet(temp, table)
        return StagedFile(rel_path=rel_path, staged_path=temp, rows=table.num_rows)

    def commit(self, record: CommitRecord, staged: Sequence[StagedFile]) -> None:
        lake = self.lake
        cdir = lake.commit_dir(record.partition)
        self._mkdir(cdir)
        final = f"{cdir}/{record.next_offset:020d}.json"
        temp = f"{cdir}/.{record.next_offset:020d}.json.tmp"
        with lake.fs.open_output_stream(temp) as out:
            out.write(record.to_bytes())
        if self.fsync:
            lake.fsync_file(temp)
            for d in {s.staged_path.rsplit("/", 1)[0] for s in staged}:
                lake.fsync_dir(d)  # the temp data files' names are durable before the commit
        lake.fs.move(temp, final)  # the commit point
        if self.fsync:
            lake.fsync_dir(cdir)
        self._publish(staged)
        self._prune_records(record.partition)

    def _publish(self, staged: Sequence[StagedFile]) -> None:
        dirs = set()
        for s in staged:
            final = self.lake.path(s.rel_path)
            self.lake.fs.move(s.staged_path, final)
            dirs.add(final.rsplit("/", 1)[0])
        if self.fsync:
            for d in dirs:
                self.lake.fsync_dir(d)

    def recover(self, partition: int, data: Sequence[pafs.FileInfo]) -> CommitRecord | None:
        lake = self.lake
        for info in lake.fs.get_file_info(
            pafs.FileSelector(lake.commit_dir(partition), allow_not_found=True)
        ):
            if info.base_name.endswith(".tmp"):
                lake.fs.delete_file(info.path)  # a record that never became the commit point
        rec = lake.latest_record(partition)
        next_offset = rec.next_offset if rec is not None else -1
        keep: list[str] = []
        if rec is not None:
            pending = []
            for rel in rec.files:
                final = lake.path(rel)
                if lake.fs.get_file_info(final).type == pafs.FileType.File:
                    continue
                temp = self._temp_of(final)
                if lake.fs.get_file_info(temp).type != pafs.FileType.File:
                    raise LakeCorruptError(
                        f"{final} is committed (offsets < {rec.next_offset} of partition "
                        f"{partition}) but neither it nor its temp file exists"
                    )
                pending.append(StagedFile(rel_path=rel, staged_path=temp, rows=0))
                keep.append(temp)
            if pending:
                log.info("Completed the commit of %d files of partition %d", len(pending),
                         partition)  # fmt: skip
                self._publish(pending)
        self._delete_orphans(partition, max(next_offset, 0), keep, data)
        return rec


class ObjectStoreCommitter(_CommitterBase):
    """No rename: direct writes, the record written last (see the module docstring)."""

    def write_file(self, rel_path: str, table: pa.Table) -> StagedFile:
        path = self.lake.path(rel_path)
        self._write_parquet(path, table)
        return StagedFile(rel_path=rel_path, staged_path=path, rows=table.num_rows)

    def commit(self, record: CommitRecord, staged: Sequence[StagedFile]) -> None:
        cdir = self.lake.commit_dir(record.partition)
        self._mkdir(cdir)
        path = f"{cdir}/{record.next_offset:020d}.json"
        with self.lake.fs.open_output_stream(path) as out:
            out.write(record.to_bytes())  # the commit point; a torn record reads as absent
        if self.fsync:
            self.lake.fsync_file(path)
            self.lake.fsync_dir(cdir)
        self._prune_records(record.partition)

    def recover(self, partition: int, data: Sequence[pafs.FileInfo]) -> CommitRecord | None:
        rec = self.lake.latest_record(partition)
        if rec is not None:
            for rel in rec.files:
                if self.lake.fs.get_file_info(self.lake.path(rel)).type != pafs.FileType.File:
                    raise LakeCorruptError(f"{rel} is committed but missing from the lake")
        self._delete_orphans(partition, rec.next_offset if rec else 0, (), data)
        return rec


def make_committer(
    lake: Lake, kind: str = "auto", *, compression: str = "zstd", fsync: bool = True,
    keep_records: int = 10,
) -> Committer:  # fmt: skip
    """``rename`` for local/HDFS-like file systems, ``object-store`` otherwise (``auto``)."""
    if kind == "auto":
        renames = isinstance(lake.fs, pafs.LocalFileSystem) or lake.fs.type_name == "hdfs"
        kind = "rename" if renames else "object-store"
    cls = RenameCommitter if kind == "rename" else ObjectStoreCommitter
    return cls(lake, compression=compression, fsync=fsync, keep_records=keep_records)


def committed_files(lake_uri: str) -> list[str]:
    """Absolute paths of the lake's committed data files (see the module docstring)."""
    lake = Lake(lake_uri)
    next_offsets: dict[int, int] = {}
    out = []
    for info in lake.list_data():
        m = _DATA_RE.match(info.base_name)
        if m is None:
            continue
        p = int(m.group(1))
        if p not in next_offsets:
            rec = lake.latest_record(p)
            next_offsets[p] = rec.next_offset if rec is not None else 0
        if int(m.group(3)) < next_offsets[p]:
            out.append(info.path)
    return sorted(out)


def read_committed(lake_uri: str, columns: list[str] | None = None) -> pa.Table:
    """The lake's committed rows as one table (with the ``date`` partition column)."""
    lake = Lake(lake_uri)
    tables = []
    for path in committed_files(lake_uri):
        t = pq.read_table(path, columns=columns, filesystem=lake.fs)
        day = path.rsplit("/", 2)[-2].removeprefix("date=")
        tables.append(t.append_column("date", pa.array([day] * t.num_rows, pa.string())))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables)
