"""Feature benchmark: the FeatureJob's Spark aggregation against DuckDB, and the online read
library against raw redis-py, one run, one JSON object.

Offline, on the same generated events (``--events`` sessions of ``--users`` users over
``--days`` days, Parquet), the same point-in-time features on a daily grid spine (count and
sum over 7 days, mean over 7 days, max over 30 days: t - window < ts <= t):

* ``spark_s``: `gyre.pipelines.features.pit` (the job's own code) in a warm local session
  (``local[N]``, every core; a warm-up pass on a 1% slice first), ending in one aggregate of
  every output column; ``jvm_start_s``: the session's start, apart;
* ``duckdb_s``: the same features as one DuckDB SQL query, ending in the same aggregate;
* both give the same rows and the same sums, or the run fails: equal work;
* ``ratio`` = spark_s / duckdb_s (goal <= 3) and ``pit_rows_per_s`` (spine rows / spark_s).

Online, against a real ``redis-server`` holding ``--entities`` entities of 10 features as the
job materializes them, ``--clients`` threads each reading one entity (then 100) per call:

* the read library (`OnlineTable.get_online_features`: one pipeline of HMGET, values decoded
  and the TTL checked) against raw redis-py on the same keys (one pipeline of the same HMGETs,
  no decoding); ``online_p50_ms``, ``online_p99_ms`` (one entity), ``online_p99_ms_100``,
  ``raw_p99_ms`` and ``online_ratio`` = online / raw p99 (goals: online_p99_ms <= 2,
  online_ratio <= 1.5). The two sides alternate, warmed up, in one run.

    gyre bench features [--events 10000000] [--users 100000] [--days 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gyre.bench.redis_server import start_redis_server

DAY_US = 86_400_000_000
START_MS = 1_735_689_600_000  # 2025-01-01
FEATURES = 10  # online features per entity


def _log(msg: str) -> None:
    print(f"[bench features] {msg}", file=sys.stderr, flush=True)


def make_events(path: Path, events: int, users: int, days: int, seed: int = 0) -> None:
    """Sessions, written in row groups as a lake holds them."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    chunk = 1_000_000
    for i, lo in enumerate(range(0, events, chunk)):
        n = min(chunk, events - lo)
        user = rng.integers(0, users, n)
        ts = START_MS + np.sort(rng.integers(0, days * 86_400_000, n))
        table = pa.table(
            {
                "user_id": pa.array([f"u{u:07d}" for u in user]),
                "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
                "page_views": pa.array(rng.poisson(6, n).astype(np.int64)),
                "session_seconds": pa.array(rng.gamma(2.0, 120.0, n)),
            }
        )
        pq.write_table(table, path / f"part-{i:04d}.parquet", row_group_size=250_000)


def feature_config(source: Path) -> Any:
    from gyre.pipelines.features.config import FeatureConfig, FeatureJobConfig, SourceConfig, SpineConfig

    return FeatureJobConfig(
        name="bench",
        generation=1,
        source=SourceConfig(kind="parquet", uri=f"file://{source}"),
        entity="user_id",
        timestamp_field="ts",
        features=(
            FeatureConfig(name="sessions_7d", aggregation="count", window_s=7 * 86400),
            FeatureConfig(name="views_7d", aggregation="sum", field="page_views", window_s=7 * 86400),
            FeatureConfig(name="seconds_7d", aggregation="mean", field="session_seconds", window_s=7 * 86400),
            FeatureConfig(name="max_views_30d", aggregation="max", field="page_views", window_s=30 * 86400),
        ),
        spine=SpineConfig(kind="every", every_s=86400),
        offline_uri=f"file://{source.parent / 'offline'}",
    )


# Every output column summed (what both sides must agree on).
CHECKSUM = ("rows", "sessions_7d", "views_7d", "seconds_7d", "max_views_30d")


def spark_pass(spark: Any, source: Path) -> tuple[float, dict[str, float]]:
    from pyspark.sql import functions as F  # noqa: N812

    from gyre.pipelines.features import pit

    cfg = feature_config(source)
    started = time.perf_counter()
    events = pit.prepare_events(spark.read.parquet(str(source)), cfg)
    as_of = pit.as_of(events)
    assert as_of is not None
    rows = pit.compute(spark, events, pit.build_spine(spark, events, cfg, as_of), cfg, as_of)
    got = rows.agg(
        F.count(F.lit(1)).alias("rows"),
        *[F.sum(F.col(c)).alias(c) for c in CHECKSUM[1:]],
    ).collect()[0]
    return time.perf_counter() - started, {c: float(got[c] or 0) for c in CHECKSUM}


def duckdb_query(source: Path) -> str:
    w7, w30 = 7 * DAY_US, 30 * DAY_US
    return f"""
WITH ev AS (
  SELECT user_id, epoch_us(ts) AS t, page_views, session_seconds
  FROM read_parquet('{source}/*.parquet') WHERE user_id IS NOT NULL AND ts IS NOT NULL
),
bounds AS (SELECT max(t) AS as_of FROM ev),
firsts AS (SELECT user_id, min(t) AS first FROM ev GROUP BY user_id),
spine AS (
  SELECT f.user_id, unnest(range(CAST(ceil(f.first / {DAY_US}) AS BIGINT) * {DAY_US},
                                 (b.as_of // {DAY_US}) * {DAY_US} + 1, {DAY_US})) AS t
  FROM firsts f, bounds b
),
feats AS (
  SELECT s.user_id, s.t,
    count(e.t) FILTER (WHERE e.t > s.t - {w7}) AS sessions_7d,
    sum(e.page_views) FILTER (WHERE e.t > s.t - {w7}) AS views_7d,
    avg(e.session_seconds) FILTER (WHERE e.t > s.t - {w7}) AS seconds_7d,
    max(e.page_views) AS max_views_30d
  FROM spine s LEFT JOIN ev e ON e.user_id = s.user_id AND e.t <= s.t AND e.t > s.t - {w30}
  GROUP BY s.user_id, s.t
)
SELECT count(*) AS rows, sum(sessions_7d), sum(views_7d), sum(seconds_7d), sum(max_views_30d) FROM feats
"""


def duckdb_pass(source: Path, threads: int) -> tuple[float, dict[str, float]]:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    started = time.perf_counter()
    row = con.execute(duckdb_query(source)).fetchone()
    elapsed = time.perf_counter() - started
    con.close()
    assert row is not None
    return elapsed, {c: float(v or 0) for c, v in zip(CHECKSUM, row, strict=True)}


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(abs(a[c] - b[c]) <= 1e-6 * max(1.0, abs(a[c])) for c in CHECKSUM)


def start_spark(cores: int) -> tuple[Any, float]:
    from pyspark.sql import SparkSession

    started = time.perf_counter()
    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("gyre-bench-features")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(max(2, cores * 2)))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )
    spark.range(1).count()
    return spark, time.perf_counter() - started


def offline_bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    source, warm = tmp / "events", tmp / "warmup"
    t0 = time.perf_counter()
    make_events(source, args.events, args.users, args.days)
    make_events(warm, max(1000, args.events // 100), max(10, args.users // 100), args.days, seed=1)
    _log(f"generated {args.events} events of {args.users} users in {time.perf_counter() - t0:.1f} s")
    cores = os.cpu_count() or 1
    spark, jvm_s = start_spark(cores)
    try:
        spark_pass(spark, warm)
        duckdb_pass(warm, cores)
        times: dict[str, list[float]] = {"spark": [], "duckdb": []}
        passes: dict[str, Callable[[], tuple[float, dict[str, float]]]] = {
            "spark": lambda: spark_pass(spark, source),
            "duckdb": lambda: duckdb_pass(source, cores),
        }
        rows = 0.0
        for r in range(args.rounds):
            # Alternate which side goes first: neither always gets the warmer page cache.
            order = ["spark", "duckdb"] if r % 2 == 0 else ["duckdb", "spark"]
            sums: dict[str, dict[str, float]] = {}
            for side in order:
                elapsed, sums[side] = passes[side]()
                times[side].append(elapsed)
            if not same(sums["spark"], sums["duckdb"]):
                raise SystemExit(f"Spark and DuckDB disagree: {sums['spark']} vs {sums['duckdb']}")
            rows = sums["spark"]["rows"]
            spark_t, duck_t = times["spark"][-1], times["duckdb"][-1]
            _log(f"round {r}: spark {spark_t:.2f} s, duckdb {duck_t:.2f} s, sums {sums['spark']}")
        spark_s, duckdb_s = times["spark"], times["duckdb"]
    finally:
        spark.stop()
    best_spark, best_duck = min(spark_s), min(duckdb_s)
    return {
        "events": args.events,
        "users": args.users,
        "spine_rows": int(rows),
        "cores": cores,
        "jvm_start_s": round(jvm_s, 2),
        "spark_s": round(best_spark, 3),
        "duckdb_s": round(best_duck, 3),
        "ratio": round(best_spark / best_duck, 2) if best_duck else None,
        "pit_rows_per_s": round(rows / best_spark) if best_spark else None,
    }


def timed_calls(call: Callable[[int], None], clients: int, calls: int) -> list[float]:
    """Latencies (ms) of ``calls`` calls per client thread, all clients at once."""
    out: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients)

    def client(k: int) -> None:
        start.wait()
        for i in range(calls):
            t = time.perf_counter()
            call(k * calls + i)
            out[k].append((time.perf_counter() - t) * 1000)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for xs in out for x in xs]


def _p(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def online_bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    started = start_redis_server(tmp)
    if started is None:
        return {"skipped": "redis-server is not installed"}
    proc, port = started
    import redis

    from gyre.pipelines.features.config import key_prefix
    from gyre.pipelines.features.online import OnlineRow, OnlineTable, materialize

    try:
        pool = redis.ConnectionPool(port=port, max_connections=args.clients * 2)
        client = redis.Redis(connection_pool=pool)
        prefix = key_prefix("bench", "features")
        names = [f"f{i}" for i in range(FEATURES)]
        rng = np.random.default_rng(0)
        rows = [
            OnlineRow(
                f"e{e}", START_MS, {n: float(v) for n, v in zip(names, rng.random(FEATURES), strict=True)}
            )
            for e in range(args.entities)
        ]
        materialize(client, prefix, rows, ttl_s=3600)
        table = OnlineTable(client, prefix)

        def library(n: int) -> Callable[[int], None]:
            def call(i: int) -> None:
                got = table.get_online_features([f"e{(i * n + j) % args.entities}" for j in range(n)], names)
                assert got[0].present

            return call

        def raw(n: int) -> Callable[[int], None]:
            def call(i: int) -> None:
                pipe = client.pipeline(transaction=False)
                for j in range(n):
                    pipe.hmget(prefix + f"e{(i * n + j) % args.entities}", names)
                assert pipe.execute()[0][0] is not None

            return call

        result: dict[str, list[float]] = {"online": [], "raw": [], "online_100": [], "raw_100": []}
        for side in (library(1), raw(1), library(100), raw(100)):
            timed_calls(side, args.clients, max(10, args.calls // 10))  # warm-up
        for r in range(args.rounds * 2):
            order = [("online", library(1)), ("raw", raw(1))]
            for key, call in order if r % 2 == 0 else order[::-1]:
                result[key] += timed_calls(call, args.clients, args.calls)
            order_100 = [("online_100", library(100)), ("raw_100", raw(100))]
            for key, call in order_100 if r % 2 == 0 else order_100[::-1]:
                result[key] += timed_calls(call, args.clients, max(1, args.calls // 10))
        out = {
            "entities": args.entities,
            "features": FEATURES,
            "clients": args.clients,
            "online_p50_ms": _p(result["online"], 50),
            "online_p99_ms": _p(result["online"], 99),
            "raw_p50_ms": _p(result["raw"], 50),
            "raw_p99_ms": _p(result["raw"], 99),
            "online_p99_ms_100": _p(result["online_100"], 99),
            "raw_p99_ms_100": _p(result["raw_100"], 99),
        }
        out["online_ratio"] = (
            round(out["online_p99_ms"] / out["raw_p99_ms"], 2) if out["raw_p99_ms"] else None
        )
        _log(f"online: {out}")
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gyre bench features", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000_000, help="sessions generated")
    p.add_argument("--users", type=int, default=100_000, help="entities among them")
    p.add_argument("--days", type=int, default=30, help="days they span")
    p.add_argument("--rounds", type=int, default=1, help="measured rounds per side (order alternates)")
    p.add_argument("--entities", type=int, default=10_000, help="entities in the online store")
    p.add_argument("--clients", type=int, default=16, help="concurrent online readers")
    p.add_argument("--calls", type=int, default=500, help="one-entity reads per client per round")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from gyre import __version__

    with tempfile.TemporaryDirectory(prefix="gyre-bench-features-") as d:
        tmp = Path(d)
        out: dict[str, Any] = {"bench": "features", "version": __version__}
        out["offline"] = offline_bench(args, tmp)
        out["online"] = online_bench(args, tmp)
        out["goals"] = {
            "ratio_le_3": out["offline"]["ratio"] is not None and out["offline"]["ratio"] <= 3,
            "online_p99_ms_le_2": out["online"].get("online_p99_ms", 1e9) <= 2,
            "online_ratio_le_1_5": (out["online"].get("online_ratio") or 1e9) <= 1.5,
        }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
