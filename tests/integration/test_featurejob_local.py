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


def write_days(root: Path, days: range, first: int = 0, users: range = range(20)) -> int:
    """Two sessions of each of ``users`` (one hour apart) on each of ``days`` (since 2025-01-01),
    one file per day at Kafka offsets from ``first`` (the lake sink's layout), and the commit
    log's record; the next offset."""
    n = first
    for day in days:
        rows = [(f"u{u}", START_MS + day * DAY_MS + k * 3_600_000 + u * 60_000, u % 5 + k)
                for u in users for k in range(2)]  # fmt: skip
        d = root / f"date=2025-01-{day + 1:02d}"
        d.mkdir(parents=True, exist_ok=True)
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
    (root / "_gyre/commits/p00000").mkdir(parents=True, exist_ok=True)
    (root / f"_gyre/commits/p00000/{n:020d}.json").write_text("{}")
    return n


def write_lake(root: Path) -> int:
    """Three days of sessions of 20 users, one file per day, and the commit log."""
    return write_days(root, range(3))


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
    status: dict[str, Any], done: Any, within_s: float = 400, name: str = "churn",
) -> dict[str, Any]:  # fmt: skip
    meta = ObjectMeta(kind="FeatureJob", namespace="ns", name=name, uid=f"uid-{name}", generation=gen)
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


def version_rows(offline: Mapping[str, Any]) -> list[dict[str, Any]]:
    path = offline["latestUri"].removeprefix("file://")
    table = ds.dataset(path, partitioning="hive").to_table()
    return sorted(table.to_pylist(), key=lambda r: (r["user_id"], r["ts"]))


def online_rows(online: Mapping[str, Any]) -> dict[str, Any]:
    """Every user's row in the online store, without when it was written."""
    import redis

    client = redis.Redis.from_url(f"redis://{online['address']}")
    return {
        u: {k: v for k, v in client.hgetall(online["keyPrefix"] + u).items() if k != b"_at"}
        for u in (f"u{i}" for i in range(21))
    }


@pytest.mark.parametrize("spine", [None, {"every": "6h"}], ids=["event-spine", "grid-spine"])
def test_an_incremental_run_reads_only_the_new_days_and_equals_a_full_run(
    tmp_path: Path, spine: Mapping[str, Any] | None
) -> None:
    """Six days (half of the users on the sixth, one user on the first only), then the other
    half's events of the sixth day and two more days: the next run reads the changed days and
    the 2-day window before the first recomputed day (the 1-day label horizon before the first
    changed one: those users' labels on the fifth day change), keeps the four days before it,
    and equals a full run (rows, figures, online values)."""
    lake = tmp_path / "lake"
    n = write_days(lake, range(5))
    n = write_days(lake, range(5, 6), n, users=range(10))
    n = write_days(lake, range(1), n, users=range(20, 21))  # u20 is seen on the first day only
    objects = {("Stream", "clicks"): stream(lake)}
    spec = featurejob(tmp_path / "features", "sum(page_views)") | ({"spine": spine} if spine else {})
    full_spec = featurejob(tmp_path / "full", "sum(page_views)") | ({"spine": spine} if spine else {})

    def finished(run: int) -> Any:
        return lambda st: (st.get("lastRun") or {}).get("run") == run and st["lastRun"].get("succeeded")

    async def go() -> tuple[dict[str, Any], ...]:
        async with LocalRuntime(tmp_path / "rt") as rt:
            first = await passes_until(rt, objects, spec, 1, {}, finished(1))
            write_days(lake, range(6, 8), write_days(lake, range(5, 6), n, users=range(10, 20)))
            again = await passes_until(rt, objects, spec, 2, first, finished(2))
            full = await passes_until(rt, objects, full_spec, 1, {}, finished(1), name="full")
            return first, again, full, online_rows(again["online"]), online_rows(full["online"])

    first, again, full, online_again, online_full = asyncio.run(go())
    run = again["lastRun"]
    rows = version_rows(again["offline"])
    assert rows == version_rows(full["offline"])
    assert {str(r["observation_date"]) for r in rows} >= {"2025-01-01", "2025-01-07"}
    for figure in ("rows", "unlabeledRows", "entities"):
        assert run[figure] == full["lastRun"][figure], figure
    assert online_again == online_full
    assert all(online_again[u] for u in online_again), "every user has a row online"

    days = [f"date=2025-01-{d:02d}" for d in range(1, 9)]
    assert first["lastRun"]["incremental"] is False
    assert first["lastRun"]["fullRunReason"] == "no earlier version"
    assert run["incremental"] is True, run
    assert run["partitionsChanged"] == days[5:]
    assert run["recomputedFrom"] == "2025-01-05"
    assert run["partitionsRead"] == days[2:], "the changed days and the 2-day window before the 5th"
    assert full["lastRun"]["partitionsRead"] == days
    assert full["lastRun"]["incremental"] is False

    # The four kept days are the first version's files, linked, not rewritten.
    before = Path(first["offline"]["latestUri"].removeprefix("file://"))
    after = Path(again["offline"]["latestUri"].removeprefix("file://"))

    def inodes(version: Path, day: str) -> set[int]:
        return {f.stat().st_ino for f in (version / f"observation_date={day}").glob("*.parquet")}

    for day in ("2025-01-01", "2025-01-04"):
        assert inodes(before, day) == inodes(after, day), day
    assert not inodes(before, "2025-01-05") & inodes(after, "2025-01-05"), "the 5th is recomputed"
