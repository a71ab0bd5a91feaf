"""Incremental runs: which source partitions a run reads and which observation days it
recomputes, so that its version equals a full recomputation's.

A version's manifest records each source partition's fingerprint (its files' names, sizes and
times), the newest event time it saw (``as_of``) and a key of everything the rows depend on
(`pit_key`). The next run compares the source with that, and when only lake days
(``date=YYYY-MM-DD``, the lake sink's event-time days) were added or grew since, it
recomputes the observation days from

    ``A = day(min(first changed day - H, as_of - H))``

onwards, where ``H`` is the longest label horizon, and keeps the earlier days of the previous
version as they are. Why that is exact (`gyre.pipelines.features.pit`'s rules): an event at
``ts`` enters features at observation times in ``[ts, ts + window)`` and labels at those in
``[ts - H, ts)``, all at or after ``A``; a row before ``A`` had its label horizon elapsed
already (``t + H < as_of``), so a newer event time changes nothing there. Rows at or after
``A`` need events after ``A - W`` (``W`` the longest window), so the run reads the lake days
from ``day(A - W)``: the changed days and the window before them, never the older history.

A run is full, and says why, when there is no earlier version, the rows' definition changed,
a feature aggregates all history (no window), the spine is a file, a source partition is not
a lake day, or one was removed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gyre.pipelines.features.config import FeatureJobConfig
from gyre.pipelines.features.status import OfflineVersion

DAY_US = 86_400 * 1_000_000
_LAKE_DAY = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")

# Manifest keys of a version (`gyre.pipelines.features.offline`).
PIT_KEY = "pit_key"
INPUTS = "inputs"
AS_OF_US = "as_of_us"


def pit_key(cfg: FeatureJobConfig) -> str:
    """A hash of everything a version's rows depend on besides the source's data."""
    doc = cfg.model_dump(
        mode="json", include={"source", "entity", "timestamp_field", "features", "labels", "spine"}
    )
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def day_of(us: int) -> str:
    """The UTC day (``YYYY-MM-DD``) of a time in µs since the epoch."""
    return datetime.fromtimestamp(us // DAY_US * 86_400, UTC).date().isoformat()


def day_start_us(day: str) -> int:
    d = date.fromisoformat(day)
    return (d - date(1970, 1, 1)) // timedelta(days=1) * DAY_US


@dataclass(frozen=True)
class Plan:
    """What a run reads and recomputes."""

    read: tuple[str, ...]  # the source partitions it reads
    changed: tuple[str, ...]  # those new or grown since the base version
    base: OfflineVersion | None = None  # the version whose days before `recompute_from` are kept
    recompute_from: str = ""  # the first observation day recomputed ("" : every day)
    as_of_us: int | None = None  # the base version's newest event time
    full_reason: str = ""  # why the run is full ("" when incremental)

    @property
    def incremental(self) -> bool:
        return self.base is not None

    @property
    def recompute_from_us(self) -> int | None:
        return day_start_us(self.recompute_from) if self.recompute_from else None


def plan(
    cfg: FeatureJobConfig,
    partitions: Sequence[str],
    fingerprints: Mapping[str, str],
    base: OfflineVersion | None,
    manifest: Mapping[str, Any] | None,
) -> Plan:
    """The plan of a run over a source of ``partitions`` (with their ``fingerprints``), after
    the newest committed version ``base`` (with its ``manifest``)."""
    parts = tuple(partitions)

    def full(why: str) -> Plan:
        return Plan(read=parts, changed=parts, full_reason=why)

    if base is None or manifest is None:
        return full("no earlier version")
    if manifest.get(PIT_KEY) != pit_key(cfg):
        return full(f"the source, features, labels or spine differ from version {base.version}'s")
    unbounded = [f.name for f in cfg.features if f.window_s is None]
    if unbounded:
        return full(f"feature {unbounded[0]} has no window (it aggregates all history)")
    if cfg.spine.kind == "path":
        return full("the spine is a file, which may hold points on any day")
    days: dict[str, str] = {}
    for p in parts:
        m = _LAKE_DAY.match(p)
        if m is None:
            return full(f"source partition {p} is not a lake day (date=YYYY-MM-DD)")
        days[p] = m.group(1)
    old = manifest.get(INPUTS)
    as_of = manifest.get(AS_OF_US)
    if not isinstance(old, Mapping) or not isinstance(as_of, int):
        return full(f"version {base.version} does not record its inputs")
    removed = sorted(set(old) - set(parts))
    if removed:
        return full(f"source partition {removed[0]} was removed since version {base.version}")
    changed = tuple(p for p in parts if old.get(p) != fingerprints.get(p))
    horizon_us = int(max((lab.horizon_s for lab in cfg.labels), default=0.0) * 1_000_000)
    window_us = int(max(f.window_s or 0.0 for f in cfg.features) * 1_000_000)
    start = min([day_start_us(days[p]) - horizon_us for p in changed] + [as_of - horizon_us])
    first = day_of(start)
    read_from = day_of(day_start_us(first) - window_us)
    read = tuple(p for p in parts if days[p] >= read_from)
    return Plan(read=read, changed=changed, base=base, recompute_from=first, as_of_us=as_of)
