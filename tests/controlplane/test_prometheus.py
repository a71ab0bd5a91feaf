"""Every query of every shipped Grafana dashboard returns data from a real Prometheus.

A running system on the local runtime: the operator, a Stream (broker, collector, lake sink)
receiving valid and invalid events all along, a two-worker TrainingJob, and an InferenceService
(model server and router, with drift monitoring) serving a shorter TrainingJob's model and
answering prediction requests all along (half of them leave a feature to the online store), a
FeatureJob (Spark) over the Stream's lake with an online store (whose figures the operator
exports, and whose reads the model server counts), a one-trial search Experiment, and an A/A
online Experiment over the InferenceService (its router and analysis; requests through it and
their outcomes on the Stream all along). A Prometheus
(Debian's package) scrapes the operator and every workload's metrics port each second; each
dashboard query, with Grafana's variables expanded as Grafana would ("All", a rate interval),
must return at least one series with a finite value (`/api/v1/query`), and each variable's
``label_values`` at least one value (`/api/v1/label/<name>/values`, as Grafana asks), while
the system runs.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import OperatorProcess, running_operator
from prometheus_harness import Prometheus, Target, dashboard_generator, local_targets
from test_stream import post, stream
from test_trainingjob import job, make_data

from tests.controlplane.cluster import Cluster
from tests.support import eventually

pytestmark = [
    pytest.mark.controlplane,
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus is installed by make setup"),
]

# What Grafana puts in place of its built-in variables for a dashboard over the last hour
# scraped every second: $__rate_interval is at least four scrape intervals, and more.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__range": "1h"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def grafana_expand(expr: str, dashboard: dict[str, Any]) -> str:
    """``expr`` as Grafana sends it with every variable of ``dashboard`` on "All"."""
    values = dict(GRAFANA_BUILTINS)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            values[variable["name"]] = variable["allValue"]

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"{expr}: no value for ${name}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def has_data(prometheus: Prometheus, expr: str) -> tuple[bool, object]:
    """Whether ``expr`` shows something in Grafana: a variable's ``label_values`` lists at
    least one value; a panel's query has a series with a finite value (not NaN, not ±Inf)."""
    listing = LABEL_VALUES.match(expr)
    if listing:
        values = prometheus.label_values(listing["label"], listing["selector"])
        return bool(values), values
    result = prometheus.query(expr)
    return bool(prometheus.finite(result)), result


@pytest.fixture
def operator(cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    yield from running_operator(
        cluster, tmp_path, "prom", "local", show="gst,gtj,ginf,gfj,gexp", log_lines=150
    )


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    (tmp_path / "prometheus").mkdir()
    prom = Prometheus(tmp_path / "prometheus").start()
    yield prom
    prom.stop()
    print(f"--- prometheus log ---\n{prom.log()}")


class Sender:
    """Calls ``send`` with a growing counter every ``interval_s`` in a thread, until stopped; a
    failure ends the loop and is raised when the block exits."""

    def __init__(self, what: str, send: Callable[[int], None], interval_s: float = 0.5) -> None:
        self.what = what
        self.send = send
        self.interval_s = interval_s
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.send(self.sent)
            except Exception as e:  # raised again when the block exits
                self.error = e
                return
            self.sent += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Sender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None and exc[0] is None:
            raise AssertionError(f"{self.what} failed: {self.error}")


def post_events(url: str) -> Callable[[int], None]:
    """Valid and invalid events to a collector, 22 a call."""

    def send(n: int) -> None:
        i = 20 * n
        good = [{"user_id": f"u{i + j}", "ts": 1_700_000_000_000 + i + j, "plan": "free"} for j in range(20)]
        bad = [{"user_id": "x", "ts": "yesterday"}, {"user_id": "y", "ts": 1, "plan": "gold"}]
        post(url, good + bad)

    return send


def predict(url: str) -> Callable[[int], None]:
    """Eight prediction requests a call, concurrently (so batches form), some unanswerable in
    time (the fallback); every other one leaves a feature to the online store."""

    def one(i: int) -> None:
        row: dict[str, Any] = {
            "user_id": f"u{i % 40}",
            "plan": ["free", "pro", "team"][i % 3],
            "page_views": i % 17,
        }
        if i % 2:
            row["session_seconds"] = 30.0 + i % 500
        req = urllib.request.Request(
            f"{url}/v1/models/{SERVED}:predict",
            data=json.dumps({"instances": [row]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

    def send(n: int) -> None:
        threads = [threading.Thread(target=one, args=(8 * n + k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return send


SERVED = "churn-serving"
AA = "churn-aa"


def online_experiment() -> str:
    """A/A over the one InferenceService, outcomes (``views``) by user key on the Stream."""
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: Experiment
metadata: {{name: {AA}}}
spec:
  online:
    variants:
      - {{name: a, inferenceService: {SERVED}}}
      - {{name: b, inferenceService: {SERVED}}}
    allocation: {{policy: thompson, intervalSeconds: 2}}
    analysis: {{method: bayesian, metric: views, reward: continuous, minSamples: 1000}}
    feedbackStream: clicks
    keyField: user_id
    aa: true
"""


def search_experiment(data: Path, out: Path) -> str:
    template = job("unused", data, out, epochs=1, workers=1, every=1000).split("spec:", 1)[1]
    body = "\n".join("    " + line for line in template.strip("\n").splitlines())
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: Experiment
metadata: {{name: churn-search}}
spec:
  search:
    maxTrials: 1
    parallelTrials: 1
    parameters:
      - {{name: hyperparameters.learningRate, type: double, min: 0.001, max: 0.01}}
    trialTemplate:
{body}
"""


def through_experiment(url: str, collector: str) -> Callable[[int], None]:
    """Four keyed prediction requests through the online Experiment, then an outcome for each
    user on the Stream."""

    def send(n: int) -> None:
        users = [f"aa-{4 * n + k}" for k in range(4)]
        for i, user in enumerate(users):
            row = {"user_id": user, "plan": "free", "page_views": (n + i) % 17, "session_seconds": 60.0}
            req = urllib.request.Request(
                f"{url}/v1/models/{SERVED}:predict",
                data=json.dumps({"instances": [row]}).encode(),
                headers={"Content-Type": "application/json", "X-Gyre-Key": user},
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
        now = int(time.time() * 1000)
        post(collector, [{"user_id": u, "ts": now, "views": (n + i) % 5} for i, u in enumerate(users)])

    return send


def feature_job(offline: Path) -> str:
    """Features of the Stream's users, with an online store (a redis-server the operator runs)."""
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: FeatureJob
metadata: {{name: clicks-features}}
spec:
  source: {{stream: clicks}}
  entity: user_id
  timestampField: ts
  features:
    - {{name: sessions_1d, aggregation: count, window: 1d}}
  offline: {{uri: "file://{offline}"}}
  online: {{enabled: true, ttl: 48h}}
  validation:
    expectations: [{{column: sessions_1d, min: 0}}]
    driftBaseline: {{metric: psi, threshold: 0.2}}
"""


def inference_service(model_job: str) -> str:
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: InferenceService
metadata: {{name: {SERVED}}}
spec:
  model: {{trainingJob: {model_job}}}
  features: {{featureJob: clicks-features, entityKey: user_id}}
  batching: {{enabled: true, maxBatchSize: 8, maxLatencyMs: 5}}
  fallback: {{deadlineMs: 2000, defaultResponse: {{churn_probability: 0.1}}}}
  monitoring:
    drift: {{metric: psi, threshold: 0.2, window: 10m}}
"""


def test_every_dashboard_query_returns_data(
    operator: OperatorProcess, prometheus: Prometheus, tmp_path: Path
) -> None:
    op = operator
    op.apply(stream(tmp_path / "lake"))
    # Long enough to outlast the queries: it is stopped with the operator, not awaited.
    data = make_data(tmp_path / "data", rows=20000)
    op.apply(job("churn", data, tmp_path / "models", epochs=500, every=1000))
    # A short one, whose model an InferenceService serves.
    op.apply(job("churn-small", data, tmp_path / "models-small", epochs=1, every=1000, workers=1))
    op.apply(inference_service("churn-small"))
    op.apply(feature_job(tmp_path / "features"))
    op.apply(search_experiment(data, tmp_path / "models-search"))
    op.apply(online_experiment())

    def stream_ready() -> dict[str, Any]:
        st = dict(op.get("stream", "clicks").get("status") or {})
        assert op.condition("stream", "clicks", "Ready")["status"] == "True", st.get("conditions")
        return st

    collector_url = eventually(stream_ready, timeout=180, interval=1)["collectorUrl"]

    def training() -> None:
        progress = (op.get("trainingjob", "churn").get("status") or {}).get("progress") or {}
        assert progress.get("step", 0) > 0, progress

    def features_published() -> None:
        assert (op.status("featurejob", "clicks-features").get("online") or {}).get("keys"), op.status(
            "featurejob", "clicks-features"
        )

    def serving() -> str:
        assert op.condition("inferenceservice", SERVED, "Ready")["status"] == "True"
        return str(op.status("inferenceservice", SERVED)["url"])

    def experimenting() -> str:
        assert op.condition("experiment", AA, "Ready")["status"] == "True", op.status("experiment", AA)
        return str(op.status("experiment", AA)["url"])

    def searched() -> None:
        assert op.status("experiment", "churn-search").get("best"), op.status("experiment", "churn-search")

    with contextlib.ExitStack() as senders:
        poster = senders.enter_context(Sender("posting events", post_events(collector_url)))
        eventually(training, timeout=240, interval=1)
        serving_url = eventually(serving, timeout=300, interval=1)
        eventually(features_published, timeout=300, interval=1)
        predictor = senders.enter_context(Sender("predicting", predict(serving_url), interval_s=0.2))
        experiment_url = eventually(experimenting, timeout=180, interval=1)
        senders.enter_context(Sender("experimenting", through_experiment(experiment_url, collector_url)))
        eventually(searched, timeout=300, interval=1)
        # What runs all along: the short TrainingJob and the FeatureJob's Spark run have ended
        # (the operator reports the FeatureJob's figures).
        ended = {("churn-small", "launcher"), ("churn-small", "worker"), ("clicks-features", "spark")}
        ended |= {("churn-search-0", "launcher"), ("churn-search-0", "worker")}
        targets = [
            Target("gyre-operator", f"127.0.0.1:{op.metrics_port}"),
            *[
                t
                for t in local_targets(op.workdir / "local")
                if (t.labels["gyre_dev_owner_name"], t.labels["gyre_dev_workload"]) not in ended
            ],
        ]
        workloads = {
            (t.labels["gyre_dev_owner_name"], t.labels["gyre_dev_workload"]) for t in targets if t.labels
        }
        expected = {("clicks", "collector"), ("clicks", "sink-lake"), ("churn", "worker")}
        expected |= {(SERVED, "predictor"), (SERVED, "router"), (AA, "router"), (AA, "analysis")}
        assert expected <= workloads, targets
        assert sum(t.labels.get("gyre_dev_owner_name") == "churn" for t in targets) == 2
        prometheus.scrape(targets)

        generator = dashboard_generator()
        queries = [
            (path.name, expr, grafana_expand(expr, dashboard))
            for path in sorted(generator.DASHBOARD_DIR.glob("*.json"))  # the files the chart ships
            for dashboard in [json.loads(path.read_text())]
            for expr in generator.queries(dashboard)
        ]
        assert len({name for name, _, _ in queries}) == 6
        pending = {q[2] for q in queries}
        last: dict[str, object] = {}
        started = time.monotonic()

        def every_query_has_data() -> None:
            for expr in sorted(pending):
                ok, last[expr] = has_data(prometheus, expr)
                if ok:
                    pending.discard(expr)
            assert not pending, "queries without data:\n" + "\n".join(
                f"  [{n}] {e}\n      -> {last.get(x)}" for n, e, x in queries if x in pending
            )

        eventually(every_query_has_data, timeout=180, interval=1)
        print(
            f"{len(queries)} queries returned data {time.monotonic() - started:.1f} s after the first scrape"
        )
        assert poster.sent > 0
        assert predictor.sent > 0
        # What an online Experiment's promotion guards read from this Prometheus
        from gyre.controllers.online import prometheus_guard

        guard = prometheus_guard(prometheus.url, op.namespace, SERVED, "5m")
        assert guard.error is None, guard
        assert guard.latency_p99_ms is not None, guard
        assert 0 < guard.latency_p99_ms < 10_000, guard
        assert guard.error_rate is not None, guard
        assert 0 <= guard.error_rate <= 1, guard
        assert prometheus_guard(prometheus.url, op.namespace, "no-such-service", "5m").latency_p99_ms is None
