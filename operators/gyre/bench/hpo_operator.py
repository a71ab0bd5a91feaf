"""The operator's share of a search (``gyre bench hpo --operator``): a local control plane, the
operator on the local runtime, and one Experiment of tiny one-worker trials run one at a time.

``first_trial_s``: from creating the Experiment to its first trial TrainingJob Running;
``overhead_per_trial_s``: per trial, from the watch seeing it Succeeded to the watch seeing
the next trial created (the controller's time between trials, not training time); the median.
Times are taken where this process sees the objects (a watch on the API server).
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gyre.bench.operator import _install_crds, _wait_healthy
from gyre.controlplane.plane import ControlPlane
from gyre.controlplane.procs import free_port

TRIALS = 4
NAMESPACE = "bench-hpo"


def _data(root: Path, rows: int = 400) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.normal(size=rows)
    root.mkdir(parents=True)
    pq.write_table(pa.table({"x": x, "y": x + rng.normal(0, 0.5, rows) > 0}), root / "part-0.parquet")
    return root


def manifest(data: Path, out: Path) -> dict[str, Any]:
    return {
        "apiVersion": "gyre.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "bench", "namespace": NAMESPACE},
        "spec": {
            "search": {
                "algorithm": {"name": "tpe", "seed": 0},
                "parameters": [
                    {"name": "hyperparameters.learningRate", "type": "double", "min": 0.001, "max": 0.1}
                ],
                "parallelTrials": 1,
                "maxTrials": TRIALS,
                "trialTemplate": {
                    "dataset": {"path": f"file://{data}", "label": "y", "features": ["x"]},
                    "hyperparameters": {"epochs": 1},
                    "workers": 1,
                    "backend": "ddp",
                    "output": {"uri": f"file://{out}"},
                },
            }
        },
    }


class TrialWatch:
    """When this process first saw each trial created and each Running and Succeeded."""

    def __init__(self, api: Any) -> None:
        from kubernetes import client, watch

        self.seen: dict[tuple[str, str], float] = {}
        self._custom = client.CustomObjectsApi(api)
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stream = self._watch.stream(  # type: ignore[no-untyped-call]
            self._custom.list_namespaced_custom_object, "gyre.dev", "v1alpha1", NAMESPACE, "trainingjobs"
        )
        try:
            for event in stream:
                obj = event["object"]
                name = obj["metadata"]["name"]
                now = time.monotonic()
                self.seen.setdefault((name, "Created"), now)
                phase = (obj.get("status") or {}).get("phase")
                if phase:
                    self.seen.setdefault((name, phase), now)
        except Exception:
            if not self._stopped.is_set():
                raise  # the watch broke while measuring
            # Stopped: the watch ends when the plane goes down under it.

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()  # type: ignore[no-untyped-call]


def measure() -> dict[str, Any]:
    from kubernetes import client

    with tempfile.TemporaryDirectory(prefix="gyre-bench-hpo-") as tmp:
        work = Path(tmp)
        plane = ControlPlane(work / "cluster", daemon=False)
        print("[bench hpo] starting a local control plane", file=sys.stderr, flush=True)
        plane.up()
        proc = None
        try:
            env = plane.env
            _install_crds(env)
            api = plane.api_client()
            client.CoreV1Api(api).create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE))
            )
            health, metrics = free_port(), free_port()
            log_path = work / "operator.log"
            cmd = [
                sys.executable, "-m", "gyre.cli", "operator", "--runtime", "local", "-n", NAMESPACE,
                "--health-port", str(health), "--metrics-port", str(metrics),
                "--state-dir", str(work / "local"),
            ]  # fmt: skip
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    cmd, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT
                )
            _wait_healthy(health, proc, log_path)
            watch = TrialWatch(api)
            body = manifest(_data(work / "data"), work / "models")
            created = time.monotonic()
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                "gyre.dev", "v1alpha1", NAMESPACE, "experiments", body
            )
            names = [f"bench-{i}" for i in range(TRIALS)]
            deadline = time.monotonic() + 600
            while (names[-1], "Succeeded") not in watch.seen:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the search did not finish; operator log: {log_path}")
                time.sleep(0.1)
            watch.stop()
            seen = watch.seen
            gaps = [seen[(b, "Created")] - seen[(a, "Succeeded")] for a, b in itertools.pairwise(names)]
            return {
                "trials": TRIALS,
                "first_trial_s": round(
                    seen.get((names[0], "Running"), seen[(names[0], "Succeeded")]) - created, 3
                ),
                "overhead_per_trial_s": round(statistics.median(gaps), 3),
                "overhead_per_trial_all_s": [round(g, 3) for g in gaps],
            }
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            plane.down()
