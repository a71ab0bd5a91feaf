"""Point-in-time features and labels in real Spark, compared value by value with a
brute-force oracle (`features_oracle`) on randomized events.

The events have ties (many share a timestamp, on an hourly grid, so events fall exactly on
window and horizon edges), late arrivals (a second file of old events), empty windows (long
gaps), an entity with one event, and nulls. Every aggregation, a filter, the SQL escape hatch
and two labels are checked at every observation point of the three kinds of spine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyspark", reason="pyspark is in the features extra (make setup)")

from gyre.pipelines.features import pit
from gyre.pipelines.features.config import (
    FeatureConfig,
    FeatureJobConfig,
    LabelConfig,
    SourceConfig,
    SourceField,
    SpineConfig,
)

from tests.integration.features_oracle import OracleFeature, OracleLabel, agg, oracle, points_every

pytestmark = pytest.mark.integration

H = 3600
US = 1_000_000
BASE_S = 1_750_000_000 // H * H  # on the hour grid


def _ios(r: Any) -> bool:
    return r["device"] == "ios"


FEATURES = [
    (FeatureConfig(name="n_6h", aggregation="count", window_s=6 * H), None),
    (FeatureConfig(name="n_all", aggregation="count"), None),
    (FeatureConfig(name="amount_sum_1d", aggregation="sum", field="amount", window_s=24 * H), None),
    (FeatureConfig(name="amount_mean_1d", aggregation="mean", field="amount", window_s=24 * H), None),
    (FeatureConfig(name="views_min_6h", aggregation="min", field="views", window_s=6 * H), None),
    (FeatureConfig(name="views_max_6h", aggregation="max", field="views", window_s=6 * H), None),
    (FeatureConfig(name="amount_std_1d", aggregation="stddev", field="amount", window_s=24 * H), None),
    (FeatureConfig(name="device_last", aggregation="last", field="device"), None),
    (FeatureConfig(name="views_last_6h", aggregation="last", field="views", window_s=6 * H), None),
    (FeatureConfig(name="devices_1d", aggregation="distinctCount", field="device", window_s=24 * H), None),
    (FeatureConfig(name="ios_n_1d", aggregation="count", window_s=24 * H, filter="device = 'ios'"), _ios),
    (
        FeatureConfig(
            name="ios_views_1d", aggregation="sum", field="views", window_s=24 * H, filter="device = 'ios'"
        ),
        _ios,
    ),
    (
        FeatureConfig(
            name="mobile_share_1d",
            sql="avg(CASE WHEN device != 'web' THEN 1.0 ELSE 0.0 END)",
            window_s=24 * H,
        ),
        None,
    ),
    (
        FeatureConfig(
            name="big_views_6h", sql="sum(CASE WHEN views > 5 THEN views ELSE 0 END)", window_s=6 * H
        ),
        None,
    ),
]


def _mobile_share(rows: list[Any]) -> Any:
    # SQL: a null device is not "!= 'web'", so it counts as 0.0
    vals = [1.0 if r["device"] is not None and r["device"] != "web" else 0.0 for r in rows]
    return sum(vals) / len(vals) if vals else None


def _big_views(rows: list[Any]) -> Any:
    return sum(r["views"] if r["views"] > 5 else 0 for r in rows) if rows else None


def _churned(rows: list[Any]) -> Any:
    vals = [int(r["churned"]) for r in rows if r["churned"] is not None]
    return (max(vals) == 1) if vals else None


DECIMAL_SQL = {"mobile_share_1d"}
SQL_ORACLES = {"mobile_share_1d": _mobile_share, "big_views_6h": _big_views}
LABELS = [
    (
        LabelConfig(name="churned_next_1d", expression="max(CAST(churned AS INT)) = 1", horizon_s=24 * H),
        _churned,
    ),
    (
        LabelConfig(name="inactive_12h", expression="count(*) = 0", horizon_s=12 * H),
        lambda rows: len(rows) == 0,
    ),
]


def oracle_features() -> list[OracleFeature]:
    out = []
    for f, keep in FEATURES:
        compute = SQL_ORACLES[f.name] if f.sql else agg(f.aggregation or "", f.field)
        window = int(f.window_s * US) if f.window_s is not None else None
        out.append(OracleFeature(f.name, window, keep or (lambda r: True), compute))
    return out


def oracle_labels() -> list[OracleLabel]:
    return [OracleLabel(lab.name, int(lab.horizon_s * US), fn) for lab, fn in LABELS]


def make_events(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for i in range(8):
        ent = f"u{i}"
        n = rng.randint(3, 25)
        # Bursts separated by gaps longer than a day: empty windows between them.
        hours = sorted(rng.choice([rng.randint(0, 30), rng.randint(60, 90)]) for _ in range(n))
        for h in hours:
            events.append(
                {
                    "entity": ent,
                    "ts_us": (BASE_S + h * H) * US,
                    "device": rng.choice(["web", "ios", "android", None]),
                    "amount": rng.choice([None, round(rng.uniform(0, 100), 2), float(rng.randint(0, 3))]),
                    "views": rng.randint(0, 10),
                    "churned": rng.choice([True, False, False, None]),
                }
            )
    events.append(
        {
            "entity": "single",
            "ts_us": (BASE_S + 7 * H) * US,
            "device": "ios",
            "amount": 5.0,
            "views": 9,
            "churned": True,
        }
    )
    return events


def write_events(events: list[dict[str, Any]], root: Path, seed: int) -> None:
    """Two files in a shuffled order: the second holds late events (old timestamps)."""
    rng = random.Random(seed)
    rows = events[:]
    rng.shuffle(rows)
    late = rows[: len(rows) // 3]
    on_time = rows[len(rows) // 3 :]
    root.mkdir(parents=True, exist_ok=True)
    for name, part in (("part-0.parquet", on_time), ("part-1-late.parquet", late)):
        table = pa.table(
            {
                "user_id": [r["entity"] for r in part],
                "ts": pa.array([r["ts_us"] // 1000 for r in part], pa.timestamp("ms", tz="UTC")),
                "device": [r["device"] for r in part],
                "amount": pa.array([r["amount"] for r in part], pa.float64()),
                "views": pa.array([r["views"] for r in part], pa.int32()),
                "churned": pa.array([r["churned"] for r in part], pa.bool_()),
            }
        )
        pq.write_table(table, root / name)


def config(source: Path, spine: SpineConfig) -> FeatureJobConfig:
    return FeatureJobConfig(
        name="pit",
        generation=1,
        source=SourceConfig(kind="parquet", uri=f"file://{source}"),
        entity="user_id",
        timestamp_field="ts",
        features=tuple(f for f, _ in FEATURES),
        labels=tuple(lab for lab, _ in LABELS),
        spine=spine,
        offline_uri="file:///unused",
    )


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("gyre-pit-test")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    yield session
    session.stop()


def run_spark(spark: Any, cfg: FeatureJobConfig) -> dict[tuple[str, int], dict[str, Any]]:
    events = pit.prepare_events(spark.read.parquet(cfg.source.uri), cfg)
    as_of = pit.as_of(events)
    assert as_of is not None
    rows = pit.compute(spark, events, pit.build_spine(spark, events, cfg, as_of), cfg, as_of).collect()
    return {(r["user_id"], int(r[pit.T_US])): r.asDict() for r in rows}


def compare(got: dict[tuple[str, int], dict[str, Any]], want: dict[tuple[str, int], dict[str, Any]]) -> None:
    assert sorted(got) == sorted(want), "observation points differ"
    names = [f.name for f, _ in FEATURES] + [lab.name for lab, _ in LABELS] + ["__labeled"]
    bad = []
    for key, w in want.items():
        g = got[key]
        for n in names:
            a, b = g[n], w[n]
            # Spark SQL averages a decimal literal as a decimal of scale 5 (then written as a
            # double): equal to that scale
            tol = 1e-5 if n in DECIMAL_SQL else 1e-9
            same = (a is None and b is None) or (
                a is not None
                and b is not None
                and (
                    math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)
                    if isinstance(b, float) or isinstance(a, float)
                    else a == b
                )
            )
            if not same:
                bad.append(f"{key} {n}: spark {a!r} != oracle {b!r}")
    assert not bad, f"{len(bad)} values differ:\n" + "\n".join(bad[:20])


def test_every_event_spine_matches_the_oracle(spark: Any, tmp_path: Path) -> None:
    seed = 1
    events = make_events(seed)
    write_events(events, tmp_path / "events", seed)
    cfg = config(tmp_path / "events", SpineConfig())
    want = oracle(events, [(e["entity"], e["ts_us"]) for e in events], oracle_features(), oracle_labels())
    got = run_spark(spark, cfg)
    compare(got, want)
    # The spine has ties: one row per (entity, time), fewer than the events.
    assert len(got) < len(events)
    assert any(not w["__labeled"] for w in want.values())
    assert any(w["__labeled"] for w in want.values())
    assert any(w["n_6h"] == 1 for w in want.values())


def test_grid_spine_matches_the_oracle_with_empty_windows(spark: Any, tmp_path: Path) -> None:
    events = make_events(3)
    write_events(events, tmp_path / "events", 3)
    step = 5 * H
    cfg = config(tmp_path / "events", SpineConfig(kind="every", every_s=step))
    as_of = max(e["ts_us"] for e in events)
    want = oracle(events, points_every(events, step * US, as_of), oracle_features(), oracle_labels())
    compare(run_spark(spark, cfg), want)
    assert any(w["n_6h"] == 0 and w["amount_sum_1d"] is None for w in want.values()), "no empty window"


def test_file_spine_matches_the_oracle(spark: Any, tmp_path: Path) -> None:
    events = make_events(4)
    write_events(events, tmp_path / "events", 4)
    rng = random.Random(4)
    # Points before an entity's first event, on event times, between them, after the last,
    # and for an entity without events.
    points = [(f"u{rng.randint(0, 7)}", (BASE_S + rng.randint(-5, 100) * H) * US) for _ in range(120)]
    points += [(e["entity"], e["ts_us"]) for e in events[:20]] + [("nobody", (BASE_S + 10 * H) * US)]
    tmp_path.joinpath("spine").mkdir()
    pq.write_table(
        pa.table(
            {
                "user_id": [p[0] for p in points],
                "ts": pa.array([p[1] // 1000 for p in points], pa.timestamp("ms", tz="UTC")),
            }
        ),
        tmp_path / "spine" / "points.parquet",
    )
    cfg = config(tmp_path / "events", SpineConfig(kind="path", path=f"file://{tmp_path / 'spine'}"))
    compare(run_spark(spark, cfg), oracle(events, points, oracle_features(), oracle_labels()))


def test_an_invalid_expression_is_named_before_any_data_is_read(spark: Any, tmp_path: Path) -> None:
    fields = (
        SourceField(name="user_id", type="string"),
        SourceField(name="ts", type="timestamp"),
        SourceField(name="views", type="int"),
    )
    base = config(tmp_path / "none", SpineConfig())
    bad_sql = base.model_copy(
        update={
            "source": SourceConfig(kind="parquet", uri="file:///nowhere", fields=fields),
            "features": (FeatureConfig(name="oops", sql="sum(no_such_column)"),),
            "labels": (),
        }
    )
    schema = pit.schema_of(fields)
    with pytest.raises(pit.InvalidExpression) as err:
        pit.validate(spark, schema, bad_sql)
    assert "feature 'oops'" in str(err.value)
    assert "no_such_column" in str(err.value)
    bad_filter = bad_sql.model_copy(
        update={"features": (FeatureConfig(name="f", aggregation="count", filter="views >>> 3"),)}
    )
    with pytest.raises(pit.InvalidExpression, match="feature 'f'"):
        pit.validate(spark, schema, bad_filter)
    bad_label = bad_sql.model_copy(
        update={
            "features": (FeatureConfig(name="n", aggregation="count"),),
            "labels": (LabelConfig(name="y", expression="max(missing) = 1", horizon_s=60),),
        }
    )
    with pytest.raises(pit.InvalidExpression, match="label 'y'"):
        pit.validate(spark, schema, bad_label)


def test_expectation_violations_are_counted_per_column(spark: Any) -> None:
    from gyre.pipelines.features import checks
    from gyre.pipelines.features.config import ExpectationConfig

    rng = random.Random(7)
    rows = [
        (rng.choice([None, 1, 5, 12, -3]), rng.choice([None, "free", "pro", "gold"]), rng.choice([None, 0.5]))
        for _ in range(300)
    ]
    df = spark.createDataFrame(rows, "n int, plan string, share double")
    rules = (
        ExpectationConfig(column="n", not_null=True, min=0, max=10),
        ExpectationConfig(column="plan", allowed_values=("free", "pro")),
        ExpectationConfig(column="share", min=0, max=1),
    )
    want = {
        "n": sum(1 for n, _, _ in rows if n is None or n < 0 or n > 10),
        "plan": sum(1 for _, p, _ in rows if p is not None and p not in ("free", "pro")),
        "share": 0,
    }
    assert checks.count_violations(df, rules) == want
    assert want["n"] > 0
    assert want["plan"] > 0


def test_drift_is_scored_against_the_first_runs_baseline(spark: Any, tmp_path: Path) -> None:
    """The first run keeps its rows as the baseline and scores 0 against itself; a later run
    whose x moved by one standard deviation scores x high and the unmoved features low (PSI and
    KS); a baseline the spec names is read instead of the first run's."""
    from gyre.controllers.featurejob import drifted
    from gyre.pipelines.features import drift
    from gyre.pipelines.features.config import DriftConfig

    def rows(shift: float, seed: int) -> Any:
        rng = random.Random(seed)
        data = [
            (rng.gauss(shift, 1.0), rng.gauss(0.0, 1.0), rng.choice(["free", "pro"])) for _ in range(4000)
        ]
        return spark.createDataFrame(data, "x double, y double, plan string")

    features = ["x", "y", "plan"]
    store = f"file://{tmp_path / 'offline'}"
    first, where = drift.scores(spark, rows(0.0, 1), features, DriftConfig(), store)
    assert where == f"{store}/baseline"
    assert (tmp_path / "offline" / "baseline" / "_SUCCESS").exists()
    assert first == {"x": 0.0, "y": 0.0, "plan": 0.0}
    same, _ = drift.scores(spark, rows(0.0, 2), features, DriftConfig(), store)
    assert max(same.values()) < 0.05, same
    moved, _ = drift.scores(spark, rows(1.0, 3), features, DriftConfig(), store)
    assert moved["x"] > 0.5, moved
    assert moved["y"] < 0.05, moved
    assert moved["plan"] < 0.05, moved
    assert drifted(moved, 0.2) == ["x"]
    ks, _ = drift.scores(spark, rows(1.0, 4), features, DriftConfig(metric="ks"), store)
    assert 0.3 < ks["x"] < 0.45, ks  # the KS distance of N(0,1) and N(1,1) is 0.383
    assert ks["y"] < 0.05, ks
    named = str(tmp_path / "named")
    rows(1.0, 5).write.parquet(named)
    against_named, where = drift.scores(spark, rows(1.0, 6), features, DriftConfig(baseline_uri=named), store)
    assert where == named
    assert against_named["x"] < 0.05, against_named
