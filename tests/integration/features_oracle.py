"""A brute-force reference for point-in-time features and labels, written apart from Spark.

For each observation point it scans every event of the entity; nothing is shared with
`gyre.pipelines.features.pit` but the rules themselves: a feature at t sees the events with
t - window < ts <= t, a label those with t < ts <= t + horizon, and only when
t + horizon <= the newest event time.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Row = Mapping[str, Any]


@dataclass(frozen=True)
class OracleFeature:
    name: str
    window_us: int | None
    keep: Callable[[Row], bool]  # the filter
    compute: Callable[[list[Row]], Any]  # over the window's rows, in no particular order


@dataclass(frozen=True)
class OracleLabel:
    name: str
    horizon_us: int
    compute: Callable[[list[Row]], Any]


def _values(rows: list[Row], field: str) -> list[Any]:
    return [r[field] for r in rows if r[field] is not None]


def agg(kind: str, field: str | None = None) -> Callable[[list[Row]], Any]:
    def count(rows: list[Row]) -> Any:
        return len(rows)

    def other(rows: list[Row]) -> Any:
        assert field is not None
        vals = _values(rows, field)
        if kind == "distinctCount":
            return len(set(vals))
        if not vals:
            return None
        if kind == "sum":
            return float(sum(vals))
        if kind == "mean":
            return float(sum(vals)) / len(vals)
        if kind == "min":
            return min(vals)
        if kind == "max":
            return max(vals)
        if kind == "stddev":
            return statistics.stdev(vals) if len(vals) > 1 else None
        if kind == "last":
            return max((r["ts_us"], r[field]) for r in rows if r[field] is not None)[1]
        raise ValueError(kind)

    return count if kind == "count" else other


def points_every(events: Sequence[Row], step_us: int, as_of_us: int) -> list[tuple[str, int]]:
    first: dict[str, int] = {}
    for e in events:
        first[e["entity"]] = min(first.get(e["entity"], e["ts_us"]), e["ts_us"])
    out = []
    for ent, t0 in first.items():
        g = -(-t0 // step_us) * step_us
        while g <= as_of_us:
            out.append((ent, g))
            g += step_us
    return out


def oracle(
    events: Sequence[Row],
    points: Sequence[tuple[str, int]],
    features: Sequence[OracleFeature],
    labels: Sequence[OracleLabel],
) -> dict[tuple[str, int], dict[str, Any]]:
    """(entity, t µs) → {feature and label values, "__labeled": bool}."""
    by_entity: dict[str, list[Row]] = {}
    for e in events:
        by_entity.setdefault(e["entity"], []).append(e)
    as_of = max(e["ts_us"] for e in events)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for ent, t in set(points):
        mine = by_entity.get(ent, [])
        row: dict[str, Any] = {}
        for f in features:
            rows = [
                e
                for e in mine
                if e["ts_us"] <= t and (f.window_us is None or e["ts_us"] > t - f.window_us) and f.keep(e)
            ]
            row[f.name] = f.compute(rows)
        labeled = True
        for lab in labels:
            elapsed = t + lab.horizon_us <= as_of
            labeled = labeled and elapsed
            future = [e for e in mine if t < e["ts_us"] <= t + lab.horizon_us]
            row[lab.name] = lab.compute(future) if elapsed else None
        row["__labeled"] = labeled
        out[(ent, t)] = row
    return out
