"""A FeatureJob over a Stream's lake, reconciled pass after pass on the real local runtime
(real Spark, a real redis-server the runtime starts), without an API server.

The lake is laid out as the lake sink writes it (``date=`` directories, a commit log), so the
run records the days it read and the lake's version; the Stream's published schema lets an
invalid expression fail before any data is read, and the version stays published.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyspark", reason="pyspark is in the features extra (make setup)")
pytest.importorskip("redis", reason="redis-py is in the features extra (make setup)")

from gyre.controllers.base import ObjectMeta, ReconcileContext, reconcile
from gyre.controllers.registry import CONTROLLERS
from gyre.runtimes.local import LocalRuntime

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000
START_MS = 1_735_689_600_000  # 2025-01-01


def write_lake(root: Path) -> int:
    """Three days of sessions of 20 users, one file per day, and the commit log."""
    n = 0
    for day in range(3):
        rows = [(f"u{u}", START_MS + day * DAY_MS + u * 60_000 + k * 3_600_000, u % 5 + k)
                for u in range(20) for k in range(2)]  # fmt: skip
        d = root / f"date=2025-01-0{day + 1}"
        d.mkdir(parents=True)
        table = pa.table(
            {
                "user_id": [r[0] for r in rows],
                "ts": pa.array([r[1] for r in rows], pa.timestamp("ms", tz="UTC")),
                "page_views": pa.array([r[2] for r in rows], pa.int32()),
                "_kafka_partition": pa.array([0] * len(rows), pa.int32()),
                "_kafka_offset": pa.array(range(n, n + len(rows)), pa.int64()),
            }
        )
        pq.write_table(table, d / f"part-p00000-{n:020d}-{n + len(rows) - 1:020d}.parquet")
        n += len(rows)
    (root / "_gyre/commits/p00000").mkdir(parents=True)
    (root / f"_gyre/commits/p00000/{n:020d}.json").write_text("{}")
    return n


def stream(lake: Path) -> dict[str, Any]:
    return {
        "spec": {
            "kafka": {"managed": {"replicas": 1}},
            "topic": {"retention": "30d"},
            "schema": {"key": "user_id", "timestampField": "ts", "fields": [
                {"name": "user_id", "type": "string", "required": True},
                {"name": "ts", "type": "timestamp", "required": True},
                {"name": "page_views", "type": "int"}]},
            "sinks": [{"name": "lake", "lake": {"uri": f"file://{lake}"}}],
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "WorkloadsReady",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "lakeUri": f"file://{lake}",
            "schemaFields": [{"name": "user_id", "type": "string"}, {"name": "ts", "type": "timestamp"},
                             {"name": "page_views", "type": "int"}],
        },
    }  # fmt: skip


def featurejob(out: Path, sql: str) -> dict[str, Any]:
    return {
        "source": {"stream": "clicks"},
        "entity": "user_id",
        "timestampField": "ts",
        "features": [
            {"name": "sessions_1d", "aggregation": "count", "window": "1d"},
            {"name": "views_max_2d", "aggregation": "max", "field": "page_views", "window": "2d"},
            {"name": "views_sql", "sql": sql, "window": "1d"},
        ],
        "labels": [{"name": "active_next_day", "expression": "count(*) > 0", "horizon": "1d"}],
        "offline": {"uri": f"file://{out}"},
        "online": {"ttl": "1h"},
    }


def read_online(online: Mapping[str, Any]) -> dict[str, Any]:
    from gyre.pipelines.features.online import OnlineTable

    reader = OnlineTable.from_url(f"redis://{online['address']}", online["keyPrefix"])
    (u3,) = reader.get_online_features(["u3"], ["sessions_1d", "views_max_2d", "views_sql"])
    return {k: (v.value, v.status) for k, v in u3.values.items()}


def cond(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


async def passes_until(
    rt: LocalRuntime, objects: Mapping[tuple[str, str], Any], spec: Mapping[str, Any], gen: int,
    status: dict[str, Any], done: Any, within_s: float = 400,
) -> dict[str, Any]:  # fmt: skip
    meta = ObjectMeta(kind="FeatureJob", namespace="ns", name="churn", uid="uid-fj", generation=gen)
    ctx = ReconcileContext(lambda k, ns, name: objects.get((k, name)), rt)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        out = await reconcile(CONTROLLERS["FeatureJob"], meta, spec, status, ctx)
        status = {k: v for k, v in out.status.items() if v is not None}
        if done(status):
            return status
        if loop.time() > deadline:
            raise AssertionError(f"not done after {within_s}s: {status}")
        await asyncio.sleep(1.0)


def test_a_stream_lake_to_a_version_and_online_values_then_a_bad_expression(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    events = write_lake(lake)
    objects = {("Stream", "clicks"): stream(lake)}

    online_now: dict[str, Any] = {}

    def ready(st: Mapping[str, Any]) -> bool:
        return cond(st, "Ready")["status"] == "True" and st.get("phase") == "Ready"

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with LocalRuntime(tmp_path / "rt") as rt:
            good = featurejob(tmp_path / "features", "sum(page_views)")
            first = await passes_until(rt, objects, good, 1, {}, ready)
            online_now.update(read_online(first["online"]))  # while the runtime's Redis runs
            bad = featurejob(tmp_path / "features", "sum(page_viewz)")

            def degraded(st: Mapping[str, Any]) -> bool:
                return cond(st, "Degraded")["reason"] == "InvalidExpression"

            second = await passes_until(rt, objects, bad, 2, first, degraded)
            return first, second

    first, second = asyncio.run(go())
    run, offline, online = first["lastRun"], first["offline"], first["online"]
    assert run["partitionsRead"] == ["date=2025-01-01", "date=2025-01-02", "date=2025-01-03"]
    assert run["sourceVersion"] == offline["sourceVersion"] == f"p00000:{events}"
    table = ds.dataset(offline["latestUri"].removeprefix("file://"), partitioning="hive").to_table()
    assert table.num_rows == offline["rows"] == run["rows"]
    assert run["rows"] + run["unlabeledRows"] == events  # one point per event (no ties here)
    assert online["keys"] == run["entities"] == 20
    assert online["newestFeatureTime"].startswith("2025-01-03")

    # u3's last event: day 3, hour 1; in the day before it: its two events of day 3 (views 3, 4).
    assert online_now == {
        "sessions_1d": (2, "present"),
        "views_max_2d": (4, "present"),
        "views_sql": (7, "present"),
    }

    msg = cond(second, "Degraded")["message"]
    assert "views_sql" in msg
    assert "page_viewz" in msg
    assert second["offline"]["latestVersion"] == offline["latestVersion"], "the good version stays published"
    assert cond(second, "Ready")["status"] == "True"
    assert second["lastRun"]["succeeded"] is False
    assert second["lastRun"]["partitionsRead"] == [], "it failed before reading anything"
