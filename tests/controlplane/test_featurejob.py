"""FeatureJobs through the operator and the local runtime: a real Spark run, a real Redis.

A FeatureJob over Parquet that does not exist yet waits (a condition, not a failed run),
runs once the events arrive, publishes an offline version and fresh online values; a
TrainingJob with dataset.featureJob trains on that version and records it in the model's
lineage; a bad SQL expression then fails fast with Spark's message and keeps the version
published; an unreachable Redis is Degraded with the address tried.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from gyre.controlplane.procs import free_port
from operator_harness import OperatorProcess, running_operator

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytest.importorskip("pyspark", reason="pyspark is in the features extra (make setup)")
pytestmark = [pytest.mark.controlplane, pytest.mark.integration]
DAY_MS = 86_400_000


def make_events(root: Path, users: int = 30, seed: int = 0) -> None:
    """Sessions over 40 days; users with fewer recent sessions churn more often."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[Any]] = {"user_id": [], "ts": [], "plan": [], "page_views": [], "churned": []}
    for u in range(users):
        activity = rng.uniform(0.2, 2.0)
        t = 1_700_000_000_000 + int(rng.integers(0, 3 * DAY_MS))
        plan = str(rng.choice(["free", "pro"]))
        while t < 1_700_000_000_000 + 40 * DAY_MS:
            rows["user_id"].append(f"user-{u}")
            rows["ts"].append(t)
            rows["plan"].append(plan)
            rows["page_views"].append(int(rng.poisson(3 + 4 * activity)))
            rows["churned"].append(bool(rng.random() < (0.6 if activity < 0.8 else 0.1)))
            t += int(DAY_MS / activity * rng.uniform(0.5, 1.5))
    root.mkdir(parents=True)
    table = pa.table(rows | {"ts": pa.array(rows["ts"], pa.timestamp("ms", tz="UTC"))})
    pq.write_table(table, root / "sessions.parquet")


def featurejob(
    name: str, events: Path, out: Path, sql: str = "avg(page_views)", online: str = "", extra: str = ""
) -> str:
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: FeatureJob
metadata: {{name: {name}}}
spec:
  source: {{path: "file://{events}"}}
  entity: user_id
  timestampField: ts
  spine: {{every: 1d}}
  features:
    - {{name: sessions_7d, aggregation: count, window: 7d}}
    - {{name: views_7d, aggregation: sum, field: page_views, window: 7d}}
    - {{name: views_avg_14d, sql: "{sql}", window: 14d}}
  labels:
    - {{name: churned, expression: "coalesce(max(CAST(churned AS INT)), 1)", horizon: 7d}}
  offline: {{uri: "file://{out}", keep: 2}}
  online: {{ttl: 1h{online}}}
  spark: {{executor: {{cpu: "2", memory: 1Gi}}}}{extra}
"""


def trainingjob(name: str, features: str, models: Path) -> str:
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  dataset: {{featureJob: {features}, label: churned, split: {{method: time, timeField: ts}}}}
  model: {{architecture: mlp, task: binary, params: {{hidden: [8]}}}}
  hyperparameters: {{epochs: 3, batchSize: 32, learningRate: 0.01, seed: 1}}
  workers: 1
  output: {{uri: "file://{models}"}}
"""


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from running_operator(cluster, tmp_path, "features", "local", show="gfj,gtj")


def status(op: OperatorProcess, name: str) -> dict[str, Any]:
    return dict(op.get("featurejob", name).get("status") or {})


def test_waits_for_data_then_publishes_a_version_training_reads(
    operator: OperatorProcess, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    operator.apply(featurejob("churn", events, tmp_path / "features"))

    def waiting() -> None:
        c = operator.condition("featurejob", "churn", "Progressing")
        assert (c["status"], c["reason"]) == ("True", "WaitingForData"), c
        assert operator.condition("featurejob", "churn", "Ready")["reason"] == "SourceEmpty"
        assert operator.condition("featurejob", "churn", "Degraded")["status"] == "False"

    eventually(waiting, timeout=180, interval=1)
    make_events(events)

    def ready() -> dict[str, Any]:
        c = operator.condition("featurejob", "churn", "Ready")
        assert (c["status"], c["reason"]) == ("True", "FeaturesAvailable"), c
        return status(operator, "churn")

    # Spark on two busy cores: a JVM start and some twenty stages take minutes
    st = eventually(ready, timeout=600, interval=1)
    offline, online, run = st["offline"], st["online"], st["lastRun"]
    table = ds.dataset(offline["latestUri"].removeprefix("file://"), partitioning="hive").to_table()
    assert table.num_rows == offline["rows"] == run["rows"] > 0
    assert run["unlabeledRows"] > 0, "the last 7 days have no label yet"
    assert {
        "user_id",
        "ts",
        "sessions_7d",
        "views_7d",
        "views_avg_14d",
        "churned",
        "observation_date",
    } <= set(table.column_names)
    assert run["partitionsRead"] == ["sessions.parquet"]
    assert st["features"] == ["sessions_7d", "views_7d", "views_avg_14d"]
    assert online["keys"] == run["entities"] == 30
    assert online["newestFeatureTime"]
    assert online["materializedAt"]
    printed = operator.cluster.kubectl("get", "featurejobs", "-n", operator.namespace).stdout
    assert "FeaturesAvailable" in printed, printed
    assert str(offline["rows"]) in printed, printed

    from gyre.pipelines.features.online import OnlineTable

    reader = OnlineTable.from_url(f"redis://{online['address']}", online["keyPrefix"])
    got = reader.get_online_features(["user-0", "user-29", "nobody"], st["features"])
    assert all(v.status == "present" for v in got[0].values.values()), got[0]
    assert got[0].values["sessions_7d"].value >= 1
    assert all(v.status == "missing" for v in got[2].values.values())

    operator.apply(trainingjob("churn-model", "churn", tmp_path / "models"))

    def trained() -> dict[str, Any]:
        tj = dict(operator.get("trainingjob", "churn-model").get("status") or {})
        assert tj.get("phase") == "Succeeded", tj.get("phase")
        return tj

    tj = eventually(trained, timeout=300, interval=1)
    assert tj["dataset"] == {
        "uri": offline["latestUri"],
        "version": offline["latestVersion"],
        "featureJob": "churn",
    }
    meta = json.loads((Path(tj["model"]["uri"].removeprefix("file://")) / "metadata.json").read_text())
    assert meta["dataset"]["version"] == offline["latestVersion"]
    assert meta["dataset"]["feature_job"] == "churn"
    assert meta["features"]
    assert {f["name"] for f in meta["features"]} == set(st["features"])

    # A bad SQL expression: fails fast with Spark's message naming the feature; the previous
    # version stays published.
    operator.apply(featurejob("churn", events, tmp_path / "features", sql="avg(no_such_column)"))

    def degraded() -> dict[str, Any]:
        c = operator.condition("featurejob", "churn", "Degraded")
        assert (c["status"], c["reason"]) == ("True", "InvalidExpression"), c
        assert "views_avg_14d" in c["message"], c
        assert "no_such_column" in c["message"], c
        return status(operator, "churn")

    after = eventually(degraded, timeout=600, interval=1)
    assert after["offline"]["latestVersion"] == offline["latestVersion"]
    assert after["lastRun"]["succeeded"] is False
    assert after["lastRun"]["partitionsRead"] == [], "it failed before reading any data"


def test_an_unreachable_redis_is_degraded_with_its_address(operator: OperatorProcess, tmp_path: Path) -> None:
    make_events(tmp_path / "events", users=5)
    port = free_port()  # nothing listens there
    operator.apply(
        featurejob(
            "nowhere",
            tmp_path / "events",
            tmp_path / "features",
            online=f", redisUrl: 'redis://127.0.0.1:{port}'",
        )
    )

    def degraded() -> None:
        c = operator.condition("featurejob", "nowhere", "Degraded")
        assert (c["status"], c["reason"]) == ("True", "RedisUnreachable"), c
        assert f"127.0.0.1:{port}" in c["message"], c

    eventually(degraded, timeout=300, interval=1)
    assert "offline" not in status(operator, "nowhere"), "no version is published by a failed run"


def test_a_schedule_runs_again_one_run_at_a_time(operator: OperatorProcess, tmp_path: Path) -> None:
    """Every minute: the first run starts on the spec, the next ones on the schedule's
    minutes, each after the previous one ended, each publishing a new version and entering the
    history."""
    make_events(tmp_path / "events")
    operator.apply(
        featurejob("minutely", tmp_path / "events", tmp_path / "out", extra="\n  schedule: '* * * * *'")
    )

    def ran_on_schedule() -> dict[str, Any]:
        st = status(operator, "minutely")
        history = st.get("history") or []
        assert len(history) >= 2, (st.get("phase"), st.get("currentRun"), history)
        return st

    st = eventually(ran_on_schedule, timeout=360, interval=2)
    first, second = reversed(st["history"][:2])
    assert (first["run"], first["trigger"]) == (1, "spec"), first
    assert (second["run"], second["trigger"]) == (2, "schedule"), second
    assert second["scheduledTime"].endswith(":00Z"), second  # a minute of the schedule
    assert first["succeeded"], first
    assert second["succeeded"], second
    assert first["version"] != second["version"]

    def at(text: str) -> float:
        import datetime as dt

        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    # One run at a time: the second started (finish - duration) after the first finished.
    assert at(second["time"]) - second["durationSeconds"] >= at(first["time"]) - 1.0, (first, second)
    assert at(st["nextScheduleTime"]) > at(st["lastScheduleTime"])
    assert st["offline"]["latestVersion"] in {h["version"] for h in st["history"]}
    assert operator.condition("featurejob", "minutely", "Ready")["status"] == "True"
