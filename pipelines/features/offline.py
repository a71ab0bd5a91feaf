"""The offline store: immutable, versioned training sets, and what a run read from its source.

Layout under the FeatureJob's ``offline.uri``::

    versions/<version>/observation_date=<day>/part-*.parquet
    versions/<version>/_gyre_version.json     rows, source version, schema, created, and what
                                              an incremental run needs (`gyre.pipelines.
                                              features.incremental`): the inputs' fingerprints,
                                              the newest event time, the point-in-time key
    versions/<version>/_gyre_first.parquet    each entity's first event time (a grid spine's)

A version is written under a hidden temporary name and renamed into place with its manifest
already inside, so a reader (a TrainingJob) sees a whole version or none. Versions sort by
name (a UTC timestamp first); the newest `keep` are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gyre.pipelines.features.status import OfflineVersion

VERSIONS_DIR = "versions"
MANIFEST = "_gyre_version.json"
PARTITION_COLUMN = "observation_date"
LAKE_COMMITS = "_gyre/commits"


def local_path(uri: str) -> Path:
    """The local path of a ``file://`` URI or plain path (other schemes: ValueError)."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return Path(parts.path if parts.scheme else uri)
    raise ValueError(f"{uri}: only file:// URIs are supported by the local feature store")


def new_version_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:6]}"


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class SourceSnapshot:
    """What a run reads: the source's partitions and a version naming its content."""

    partitions: tuple[str, ...]  # relative directories (lake days) or files
    version: str
    has_data: bool
    fingerprints: Mapping[str, str] = field(default_factory=dict)  # partition → its files' hash


def snapshot(uri: str, kind: str) -> SourceSnapshot:
    """The source as it is now. A Stream's lake is versioned by its commit log (the next
    offset of every Kafka partition); plain Parquet by its files' names, sizes and times."""
    root = local_path(uri)
    if not root.exists():
        return SourceSnapshot((), "", False)
    files = (
        sorted(
            p
            for p in (root.rglob("*.parquet") if root.is_dir() else [root])
            if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
        )
        if root.is_dir()
        else [root]
    )

    # Partitions: the directories holding the files (a lake's days), or the files themselves
    # where they lie at the top.
    def partition(p: Path) -> str:
        return str(p.parent.relative_to(root)) if root.is_dir() and p.parent != root else p.name

    parts = sorted({partition(p) for p in files})
    # One stat per file: each partition's fingerprint and plain Parquet's version.
    hashes = {name: hashlib.sha256() for name in parts}
    whole = hashlib.sha256()
    for f in files:
        st = f.stat()
        hashes[partition(f)].update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        name = f.relative_to(root) if root.is_dir() else f.name
        whole.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    fingerprints = {name: h.hexdigest()[:16] for name, h in hashes.items()}
    if kind == "lake" and (root / LAKE_COMMITS).is_dir():
        offsets = []
        for pdir in sorted((root / LAKE_COMMITS).iterdir()):
            records = sorted(r.name for r in pdir.glob("*.json"))
            if records:
                offsets.append(f"{pdir.name}:{int(records[-1].split('.')[0])}")
        version = ",".join(offsets)
    else:
        version = whole.hexdigest()[:16]
    return SourceSnapshot(tuple(parts), version, bool(files), fingerprints)


def begin_version(offline_uri: str, version: str) -> Path:
    """The temporary directory a new version is written to."""
    root = local_path(offline_uri) / VERSIONS_DIR
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{version}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def commit_version(
    offline_uri: str,
    version: str,
    tmp: Path,
    rows: int,
    source_version: str,
    schema: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> OfflineVersion:
    """Write the manifest (with ``extra`` in it) into ``tmp`` and rename it into place."""
    created = rfc3339(datetime.now(UTC))
    final = local_path(offline_uri) / VERSIONS_DIR / version
    tmp.mkdir(parents=True, exist_ok=True)
    manifest = {
        "version": version,
        "rows": rows,
        "source_version": source_version,
        "created": created,
        "schema": dict(schema),
        "partitioning": [PARTITION_COLUMN],
        **(extra or {}),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, final)
    return OfflineVersion(
        version=version, uri=f"file://{final}", rows=rows, source_version=source_version, created=created
    )


def list_versions(offline_uri: str) -> list[OfflineVersion]:
    """Every committed version, newest first."""
    root = local_path(offline_uri) / VERSIONS_DIR
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir(), reverse=True):
        m = d / MANIFEST
        if d.name.startswith(".") or not m.is_file():
            continue
        data = json.loads(m.read_text(encoding="utf-8"))
        out.append(
            OfflineVersion(
                version=d.name,
                uri=f"file://{d}",
                rows=int(data.get("rows", 0)),
                source_version=str(data.get("source_version", "")),
                created=str(data.get("created", "")),
            )
        )
    return out


def prune_versions(offline_uri: str, keep: int) -> list[OfflineVersion]:
    """Delete all but the newest ``keep`` versions (and leftover temporaries); the kept ones."""
    root = local_path(offline_uri) / VERSIONS_DIR
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(".tmp-"):
                shutil.rmtree(d, ignore_errors=True)
    versions = list_versions(offline_uri)
    for v in versions[keep:]:
        shutil.rmtree(local_path(v.uri), ignore_errors=True)
    return versions[:keep]


def read_manifest(version: OfflineVersion) -> dict[str, Any]:
    """A committed version's manifest."""
    return dict(json.loads((local_path(version.uri) / MANIFEST).read_text(encoding="utf-8")))


def day_dirs(version_uri: str) -> dict[str, Path]:
    """A version's observation days (``YYYY-MM-DD``) and their directories."""
    root = local_path(version_uri)
    prefix = f"{PARTITION_COLUMN}="
    return {d.name.removeprefix(prefix): d for d in sorted(root.glob(f"{prefix}*")) if d.is_dir()}


def link_days(version_uri: str, tmp: Path, before: str) -> list[str]:
    """The observation days of a committed version before day ``before`` into the version
    being written at ``tmp``, as hard links of its immutable files (copies across
    filesystems); the days linked."""
    days = {day: src for day, src in day_dirs(version_uri).items() if day < before}
    for src in days.values():
        dst = tmp / src.name
        dst.mkdir(parents=True, exist_ok=False)
        for f in sorted(src.iterdir()):
            if f.is_file() and not f.name.startswith((".", "_")):
                try:
                    os.link(f, dst / f.name)
                except OSError:
                    shutil.copy2(f, dst / f.name)
    return list(days)
