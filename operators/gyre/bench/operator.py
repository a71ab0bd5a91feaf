"""`gyre bench operator`: reconcile throughput and latency of Gyre's operator vs the kopf floor.

Starts a local control plane, creates N TrainingJobs (suspended, so no training runs: the
benchmark measures the operator, not the workloads) for each of two operators in turn — a
no-op kopf operator with the same settings (the floor) and Gyre's operator with the local
runtime — and records, per object, the time from its create call returning to the moment a
watch sees `status.observedGeneration`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from gyre.api import GROUP, VERSION
from gyre.controlplane.plane import ControlPlane
from gyre.controlplane.procs import free_port
from gyre.manifests import repo_root

PLURAL = "trainingjobs"


def _body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"path": "file:///tmp/gyre/bench/data", "label": "y"},
            "workers": 2,
            "runPolicy": {"suspend": True},
            "output": {"uri": f"file:///tmp/gyre/bench/models/{name}"},
        },
    }


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


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


def _run_phase(
    label: str,
    api: client.ApiClient,
    namespace: str,
    operator_cmd: list[str],
    env: dict[str, str],
    n: int,
    health_port: int,
) -> dict[str, float]:
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    created: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def watcher() -> None:
        w = watch.Watch()  # type: ignore[no-untyped-call]
        for event in w.stream(  # type: ignore[no-untyped-call]
            custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, timeout_seconds=600
        ):
            obj = event["object"]
            name = obj["metadata"]["name"]
            if name not in seen and (obj.get("status") or {}).get("observedGeneration"):
                seen[name] = time.perf_counter()
                if len(seen) >= n:
                    break
        done.set()

    log_path = Path(tempfile.mkstemp(prefix=f"gyre-bench-{label}-", suffix=".log")[1])
    with log_path.open("w") as log:
        proc = subprocess.Popen(operator_cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(health_port, proc, log_path)  # the clock starts once the operator is up
        threading.Thread(target=watcher, daemon=True).start()
        time.sleep(0.5)

        def create(i: int) -> None:
            name = f"bench-{i:04d}"
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _body(name))
            created[name] = time.perf_counter()

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(create, range(n)))
        deadline = time.monotonic() + 600
        while not done.wait(1.0):
            print(f"  {label}: {len(seen)}/{n} reconciled", file=sys.stderr, flush=True)
            if proc.poll() is not None:
                raise RuntimeError(f"{label} operator exited {proc.returncode}; log: {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: only {len(seen)}/{n} reconciled in 600 s; log: {log_path}")
        end = max(seen.values())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    latencies = [(seen[k] - created[k]) * 1000 for k in created if k in seen]
    return {
        "reconciles_per_s": round(n / (end - start), 1),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gyre bench operator", description=__doc__.splitlines()[0])
    p.add_argument("-n", "--resources", type=int, default=500)
    p.add_argument("--state-dir", type=Path, default=None, help="control plane state (default: temporary)")
    args = p.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="gyre-bench-")
    plane = ControlPlane(args.state_dir or Path(tmp.name) / "cluster", daemon=False)
    print("starting a local control plane", file=sys.stderr, flush=True)
    plane.up()
    try:
        env = {**os.environ, **plane.env}
        subprocess.run(
            ["kubectl", "apply", "--server-side", "-f", str(repo_root() / "manifests/crds")],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["kubectl", "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"],
            env=env,
            check=True,
            capture_output=True,
        )
        api = plane.api_client()
        py = sys.executable
        floor_port, gyre_port = free_port(), free_port()
        floor_cmd = [py, "-m", "gyre.bench.floor", "-n", "bench-floor", "--health-port", str(floor_port)]
        floor = _run_phase("floor", api, "bench-floor", floor_cmd, env, args.resources, floor_port)
        gyre_cmd = [
            py, "-m", "gyre.cli", "operator", "--runtime", "local", "-n", "bench-gyre",
            "--metrics-port", "0", "--health-port", str(gyre_port),
            "--state-dir", str(Path(tmp.name) / "local"),
        ]  # fmt: skip
        gyre = _run_phase("gyre", api, "bench-gyre", gyre_cmd, env, args.resources, gyre_port)
    finally:
        plane.down()
        tmp.cleanup()
    result = {
        "resources": args.resources,
        **gyre,
        "floor": floor,
        "ratio": round(gyre["reconciles_per_s"] / floor["reconciles_per_s"], 3),
        "goal_ratio": 0.7,
    }
    print(json.dumps(result))
    return 0
