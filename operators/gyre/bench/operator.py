"""`gyre bench operator`: reconcile throughput and latency of Gyre's operator vs the kopf floor.

Three operators watch a namespace each, on one control plane: Gyre's operator with the
``kubernetes`` runtime; the floor — a kopf operator with the same settings whose handler
writes the same first status without doing anything; and the apply floor, which also applies
the very objects Gyre renders, and nothing else (`gyre.bench.floor`). The resources are
TrainingJobs that are not suspended, so each of Gyre's reconciles builds a launcher Job, a
worker Job, their Services and ConfigMaps and applies them server-side (kwok nodes run the
pods; nothing trains).

Each phase starts one operator, warms it up on ``--warmup`` objects it must finish first, then
creates ``-n`` objects and records, per object, the time from its create call returning to
the moment a watch sees its first status saying its workloads were applied (the ``Created``
condition at the object's generation). Phases run over ``--rounds`` in an order reversed every
other round (floor, apply floor, Gyre, Gyre, apply floor, floor, ...), so no operator always
runs on the fresher plane; each phase gets a new namespace, deleted (and waited for) after it.

Where the time goes: for the measured window of each phase (first create to last status),
the API server's request counts (``apiserver_request_total``) and its CPU time, per measured
object — what the operator asked for and what the cluster did with the objects it created.

Prints one JSON object: the figures of every operator, per round and pooled, Gyre's ratios to
both floors, and a ``goals`` map (name → value, goal, met) against the framework floor.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from gyre.api import GROUP, VERSION
from gyre.controlplane.plane import ControlPlane, FakeNode
from gyre.controlplane.procs import free_port, stop
from gyre.manifests import repo_root

PLURAL = "trainingjobs"
DONE_CONDITION = "Created"  # Gyre: "launcher and workers are applied"; the floor writes it too
PHASE_TIMEOUT_S = 600.0
# Room for every bench pod (two per TrainingJob, one launcher and one worker) on kwok nodes.
NODES = tuple(FakeNode(f"bench-node-{i}", cpu="1000", memory="4000Gi", pods=2000) for i in range(2))
GOAL_RATIO = 0.7
GOAL_P99_MS = 5000.0
GOAL_P50_OVER_FLOOR = 2.0
OPERATORS = ("floor", "apply-floor", "gyre")


def trainingjob(name: str) -> dict[str, Any]:
    """A TrainingJob whose reconcile renders and applies workloads (not suspended)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"path": "file:///data/bench", "label": "y", "features": ["x"]},
            "workers": 1,
            "resources": {"cpu": "10m", "memory": "16Mi"},
            "output": {"uri": "file:///models/bench"},
        },
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 1])."""
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def _done(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    return any(
        c.get("type") == DONE_CONDITION and c.get("status") == "True" for c in status.get("conditions") or []
    )


class StatusWatch:
    """Watches one namespace's TrainingJobs from a known resourceVersion; records, per name,
    when the first done status was seen."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._namespace = namespace
        self.seen: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        listing: Any = self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        self._rv: str = listing["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{namespace}")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                w = watch.Watch()  # type: ignore[no-untyped-call]
                for event in w.stream(  # type: ignore[no-untyped-call]
                    self._custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self._namespace,
                    PLURAL,
                    resource_version=self._rv,
                    timeout_seconds=30,
                ):
                    now = time.perf_counter()
                    obj = event["object"]
                    self._rv = obj["metadata"]["resourceVersion"]
                    name = obj["metadata"]["name"]
                    if name not in self.seen and _done(obj):
                        with self._cond:
                            self.seen[name] = now
                            self._cond.notify_all()
                    if self._stop.is_set():
                        break
        except BaseException as exc:  # reported by wait()
            self._error = exc
            with self._cond:
                self._cond.notify_all()

    def wait(self, names: Sequence[str], deadline: float, check: Any = None) -> None:
        """Until every name was seen done; ``check()`` runs every second (raises to abort)."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise RuntimeError(f"watch failed: {self._error!r}") from self._error
                missing = [n for n in names if n not in self.seen]
                if not missing:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(missing)}/{len(names)} objects got no status in time")
                self._cond.wait(1.0)
                if check is not None:
                    check(len(names) - len(missing), len(names))

    def close(self) -> None:
        self._stop.set()


@dataclass
class PhaseResult:
    operator: str
    round: int
    reconciles_per_s: float
    latencies_ms: list[float] = field(repr=False)
    reconcile_mean_ms: float | None = None  # Gyre only, from its metrics
    workloads: int | None = None  # Gyre only: workloads applied for this phase's objects
    # The measured window, per measured object: API requests by kind, API server CPU seconds.
    requests: dict[str, float] = field(default_factory=dict, repr=False)
    apiserver_cpu_s: float = 0.0
    operator_requests: dict[str, float] | None = None  # Gyre only: what its runtime sent

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        out: dict[str, Any] = {
            "round": self.round,
            "reconciles_per_s": round(self.reconciles_per_s, 1),
            "p50_ms": round(statistics.median(lat), 1),
            "p99_ms": round(percentile(lat, 0.99), 1),
        }
        if self.reconcile_mean_ms is not None:
            out["reconcile_mean_ms"] = round(self.reconcile_mean_ms, 1)
        if self.workloads is not None:
            out["workloads"] = self.workloads
        out["api_requests_per_object"] = round(sum(self.requests.values()), 1)
        if self.operator_requests is not None:
            out["operator_requests_per_object"] = round(sum(self.operator_requests.values()), 2)
        out["apiserver_cpu_ms_per_object"] = round(self.apiserver_cpu_s * 1000, 1)
        return out


class ApiServerCounters:
    """The API server's own counters, read from its ``/metrics``: requests served so far by
    (verb, resource/subresource), and its process CPU seconds."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    def read(self) -> tuple[collections.Counter[str], float]:
        from prometheus_client.parser import text_string_to_metric_families

        method, url, headers, body, post = self._api.param_serialize(
            method="GET", resource_path="/metrics", auth_settings=["BearerToken"]
        )
        response = self._api.call_api(method, url, header_params=headers, body=body, post_params=post)
        text = response.response.data.decode()
        requests: collections.Counter[str] = collections.Counter()
        cpu = 0.0
        for family in text_string_to_metric_families(text):
            if family.name == "apiserver_request":
                for sample in family.samples:
                    if sample.name != "apiserver_request_total":
                        continue
                    lb = sample.labels
                    resource = lb.get("resource") or "(none)"
                    if lb.get("subresource"):
                        resource += "/" + lb["subresource"]
                    requests[f"{lb.get('verb', '?')} {resource}"] += int(sample.value)
            elif family.name == "process_cpu_seconds":
                cpu = sum(sample.value for sample in family.samples)
        return requests, float(cpu)


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited {proc.returncode}; log: {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"operator not healthy within 120 s; log: {log_path}")


def gyre_metrics(metrics_port: int) -> tuple[float | None, int]:
    """From Gyre's /metrics: the mean wall time of its TrainingJob reconcile passes (ms), and
    how many workloads it applied for the TrainingJobs it holds."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = count = workloads = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("kind") != "TrainingJob":
                continue
            if s.name == "gyre_reconcile_duration_seconds_sum":
                total += s.value
            elif s.name == "gyre_reconcile_duration_seconds_count":
                count += s.value
            elif s.name == "gyre_workloads":
                workloads += s.value
    return (total / count * 1000 if count else None), int(workloads)


def gyre_requests(metrics_port: int) -> collections.Counter[str]:
    """What Gyre's runtime has sent to the API server so far, by ``VERB resource``, from its
    ``gyre_kube_requests_total`` (kopf's own requests are not in it: a status patch and the
    annotations patch per handled object, as for the floors)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: collections.Counter[str] = collections.Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gyre_kube_requests_total":
                out[f"{s.labels['verb']} {s.labels['resource']}"] += int(s.value)
    return out


def _operator_cmd(which: str, namespace: str, health: int, metrics: int, workdir: Path) -> list[str]:
    py = sys.executable
    if which in ("floor", "apply-floor"):
        extra = ["--apply"] if which == "apply-floor" else []
        return [py, "-m", "gyre.bench.floor", "-n", namespace, "--health-port", str(health), *extra]
    return [
        py, "-m", "gyre.cli", "operator", "--runtime", "kubernetes", "-n", namespace,
        "--metrics-port", str(metrics), "--health-port", str(health), "--state-dir", str(workdir),
    ]  # fmt: skip


def _create_all(custom: client.CustomObjectsApi, namespace: str, names: Sequence[str]) -> dict[str, float]:
    created: dict[str, float] = {}

    def create(name: str) -> None:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, trainingjob(name))
        created[name] = time.perf_counter()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, names))
    return created


def _delete_namespace(core: client.CoreV1Api, namespace: str, timeout_s: float = 300) -> None:
    """Delete and wait until it is gone, so its pods load neither the plane nor the next phase."""
    try:
        core.delete_namespace(namespace)
    except ApiException as e:
        if e.status != 404:
            raise
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        time.sleep(0.5)
    print(f"  namespace {namespace} still terminating after {timeout_s:.0f} s", file=sys.stderr)


def run_phase(
    which: str, round_: int, api: client.ApiClient, env: Mapping[str, str], n: int, warmup: int, workdir: Path
) -> PhaseResult:
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    namespace = f"bench-{which}-{round_}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    health, metrics = free_port(), free_port()
    log_path = workdir / f"{namespace}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            _operator_cmd(which, namespace, health, metrics, workdir / namespace),
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    label = f"{which} (round {round_})"
    progress = {"at": 0.0}

    def check(done: int, total: int) -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"{label}: operator exited {proc.returncode}; log: {log_path}")
        if time.monotonic() - progress["at"] > 5:
            progress["at"] = time.monotonic()
            print(f"  {label}: {done}/{total} done", file=sys.stderr, flush=True)

    statuses = StatusWatch(api, namespace)
    try:
        _wait_healthy(health, proc, log_path)
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        # Warm-up: first-call costs (imports, connection pools, the API server's caches for
        # the child kinds) are paid here, not by the measured objects.
        warm = [f"warmup-{i:04d}" for i in range(warmup)]
        _create_all(custom, namespace, warm)
        statuses.wait(warm, deadline, check)
        names = [f"bench-{i:04d}" for i in range(n)]
        counters = ApiServerCounters(api)
        requests_before, cpu_before = counters.read()
        own_before = gyre_requests(metrics) if which == "gyre" else None
        start = time.perf_counter()
        created = _create_all(custom, namespace, names)
        statuses.wait(names, deadline, check)
        end = max(statuses.seen[k] for k in names)
        requests_after, cpu_after = counters.read()
        own = None if own_before is None else gyre_requests(metrics) - own_before
        mean_ms, workloads = gyre_metrics(metrics) if which == "gyre" else (None, None)
    finally:
        statuses.close()
        stop(proc, timeout_s=30)
    _delete_namespace(core, namespace)
    return PhaseResult(
        operator=which,
        round=round_,
        reconciles_per_s=n / (end - start),
        latencies_ms=[(statuses.seen[k] - created[k]) * 1000 for k in names],
        reconcile_mean_ms=mean_ms,
        workloads=workloads,
        requests={k: v / n for k, v in (requests_after - requests_before).items() if v > 0},
        apiserver_cpu_s=(cpu_after - cpu_before) / n,
        operator_requests=None if own is None else {k: v / n for k, v in own.items() if v > 0},
    )


def phase_order(rounds: int) -> list[str]:
    """Reversed every other round: floor, apply-floor, gyre, gyre, apply-floor, floor, ..."""
    out: list[str] = []
    for r in range(rounds):
        out += list(OPERATORS) if r % 2 == 0 else list(reversed(OPERATORS))
    return out


def summarize(results: Sequence[PhaseResult]) -> dict[str, Any]:
    def pooled(which: str) -> dict[str, Any]:
        mine = [r for r in results if r.operator == which]
        lat = [x for r in mine for x in r.latencies_ms]
        out: dict[str, Any] = {
            "reconciles_per_s": round(statistics.mean(r.reconciles_per_s for r in mine), 1),
            "p50_ms": round(statistics.median(lat), 1),
            "p90_ms": round(percentile(lat, 0.90), 1),
            "p99_ms": round(percentile(lat, 0.99), 1),
            "max_ms": round(max(lat), 1),
            "api_requests_per_object": round(statistics.mean(sum(r.requests.values()) for r in mine), 1),
            "apiserver_cpu_ms_per_object": round(statistics.mean(r.apiserver_cpu_s for r in mine) * 1000, 1),
            # Every kind of request in the measured windows, most frequent first.
            "requests_per_object": {
                k: round(v / len(mine), 2)
                for k, v in sum(
                    (collections.Counter(r.requests) for r in mine), collections.Counter()
                ).most_common()
            },
            "rounds": [r.summary() for r in mine],
        }
        own = [r.operator_requests for r in mine if r.operator_requests is not None]
        if own:
            total = sum((collections.Counter(o) for o in own), collections.Counter())
            out["operator_requests_per_object"] = {k: round(v / len(own), 2) for k, v in total.most_common()}
        return out

    gyre, floor, apply_floor = pooled("gyre"), pooled("floor"), pooled("apply-floor")
    ratio = gyre["reconciles_per_s"] / floor["reconciles_per_s"]
    p50_over = gyre["p50_ms"] / floor["p50_ms"]

    def goal(value: float, op: str, target: float) -> dict[str, Any]:
        met = value >= target if op == ">=" else value <= target
        return {"value": round(value, 3), "goal": f"{op} {target:g}", "met": met}

    return {
        "gyre": gyre,
        "floor": floor,
        "apply_floor": apply_floor,
        "ratio": round(ratio, 3),
        "p50_over_floor": round(p50_over, 3),
        # Gyre against an operator that applies the same objects and does nothing else.
        "ratio_vs_apply_floor": round(gyre["reconciles_per_s"] / apply_floor["reconciles_per_s"], 3),
        "p50_over_apply_floor": round(gyre["p50_ms"] / apply_floor["p50_ms"], 3),
        "goals": {
            "ratio": goal(ratio, ">=", GOAL_RATIO),
            "p99_ms": goal(gyre["p99_ms"], "<=", GOAL_P99_MS),
            "p50_over_floor": goal(p50_over, "<=", GOAL_P50_OVER_FLOOR),
        },
    }


def _install_crds(env: Mapping[str, str]) -> None:
    for cmd in (
        ["kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(repo_root() / "manifests/crds")],
        ["kubectl", "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"],
    ):
        subprocess.run(cmd, env=dict(env), check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gyre bench operator", description=__doc__.splitlines()[0])
    p.add_argument("-n", "--resources", type=int, default=200, help="measured objects per phase")
    p.add_argument("--warmup", type=int, default=20, help="objects each operator finishes first")
    p.add_argument("--rounds", type=int, default=2, help="each round runs both operators (ABBA order)")
    p.add_argument("--state-dir", type=Path, default=None, help="control plane state (default: temporary)")
    p.add_argument(
        "--kubeconfig", type=Path, default=None, help="use this cluster instead of starting a control plane"
    )
    args = p.parse_args(argv)
    if args.resources < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("-n and --rounds must be at least 1, --warmup at least 0")

    tmp = tempfile.TemporaryDirectory(prefix="gyre-bench-")
    workdir = Path(tmp.name)
    plane: ControlPlane | None = None
    results: list[PhaseResult] = []
    try:
        if args.kubeconfig is not None:
            env = {**os.environ, "KUBECONFIG": str(args.kubeconfig.resolve())}
            api = config.new_client_from_config(config_file=str(args.kubeconfig))  # type: ignore[no-untyped-call]
        else:
            plane = ControlPlane(args.state_dir or workdir / "cluster", nodes=NODES, daemon=False)
            print("starting a local control plane", file=sys.stderr, flush=True)
            plane.up()
            env = plane.env
            api = plane.api_client()
        _install_crds(env)
        for i, which in enumerate(phase_order(args.rounds)):
            print(f"phase {i + 1}: {which}", file=sys.stderr, flush=True)
            results.append(
                run_phase(which, i // len(OPERATORS), api, env, args.resources, args.warmup, workdir)
            )
    finally:
        if plane is not None:
            plane.down()
        tmp.cleanup()
    result = {
        "resources": args.resources,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "order": phase_order(args.rounds),
        "kind": "TrainingJob (not suspended; kubernetes runtime)",
        **summarize(results),
    }
    print(json.dumps(result))
    return 0
