"""The operator runs on its base dependencies alone, installed as a user installs it.

A virtual environment gets the ``[project] dependencies`` of pyproject.toml and nothing else
(no ``stream``/``train`` extras: no pyarrow, torch, Horovod, orjson, uvloop), and the package
itself from a freshly built wheel. In it, every operator-side module imports, and ``gyre
operator --runtime kubernetes`` reconciles one object of every kind against the real control
plane to a status.

Guards the regression where ``gyre operator`` died at start with ``ModuleNotFoundError:
confluent_kafka`` (operator.main → builders.stream → the topic admin, then a workload module),
and the one where a waiting reconcile was logged as an error on every retry.

Cost: the environment is built once per set of base dependencies and kept under
``$GYRE_CACHE/venv`` (about 20 s; later runs reuse it); the wheel build and install take
about 5 s, the reconciles about 15 s on top of the session's control plane.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gyre.manifests import repo_root
from operator_harness import OperatorProcess, fresh_namespace, install_crds, stream_manifest

from tests.controlplane.cluster import Cluster
from tests.support import eventually, free_port

pytestmark = pytest.mark.controlplane

ROOT = repo_root()
# What only the workloads need; none of it may be installed in, or imported by, the operator.
WORKLOAD_LIBRARIES = ("pyarrow", "torch", "horovod", "orjson", "uvloop", "pyspark", "kserve")
OPERATOR_PACKAGES = (
    "gyre.operator",
    "gyre.controllers",
    "gyre.builders",
    "gyre.runtimes",
    "gyre.api",
    "gyre.core",
    "gyre.controlplane",
)


def base_dependencies() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        deps: list[str] = tomllib.load(f)["project"]["dependencies"]
    return deps


def _run(*cmd: str | Path, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    args = [str(c) for c in cmd]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def base_venv() -> Path:
    """A virtual environment with the base dependencies only, kept per dependency set."""
    deps = base_dependencies()
    key = hashlib.sha256(json.dumps([sys.version_info[:2], sorted(deps)]).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("GYRE_CACHE") or Path.home() / ".cache" / "gyre") / "venv"
    venv = cache / f"base-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f"base-{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other checkouts may be building the same one
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            _run(sys.executable, "-m", "venv", venv)
            _run(venv / "bin" / "python", "-m", "pip", "install", "-q", *deps, timeout=900)
            (venv / ".complete").write_text("\n".join(deps) + "\n")
    return venv


def install_package(site: Path, build: Path) -> None:
    """The wheel a user would get, built from a copy of the sources (so no stale build/
    directory of the checkout leaks in), installed into ``site`` without dependencies."""
    src = build / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("operators", "pipelines"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", build / "dist", src)
    (wheel,) = (build / "dist").glob("gyre-*.whl")
    _run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel)


class Installed:
    """The package in ``site`` on top of the base environment ``venv``."""

    def __init__(self, venv: Path, site: Path) -> None:
        self.venv, self.site = venv, site
        self.python = venv / "bin" / "python"
        # Nothing of the checkout or the development environment: only the wheel's files.
        self.env = {"PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1", "VIRTUAL_ENV": str(venv)}

    def run_python(self, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | self.env
        return _run(self.python, "-c", code, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    build = tmp_path_factory.mktemp("base-install")
    install_package(build / "site", build)
    return Installed(base_venv(), build / "site")


IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
import gyre
imported = []
for package in {packages}:
    mod = importlib.import_module(package)
    imported.append(package)
    for info in pkgutil.walk_packages(mod.__path__, package + "."):
        importlib.import_module(info.name)
        imported.append(info.name)
for name in ("gyre.cli", "gyre.manifests", "gyre.operator.main"):
    importlib.import_module(name)
print(json.dumps({{
    "gyre": gyre.__file__,
    "imported": imported,
    "installed": [m for m in {libraries} if importlib.util.find_spec(m) is not None],
    "loaded": sorted({{m.split(".")[0] for m in sys.modules}} & set({libraries})),
}}))
"""


def test_every_operator_module_imports_with_the_base_dependencies(
    installed: Installed, tmp_path: Path
) -> None:
    code = IMPORT_EVERYTHING.format(packages=list(OPERATOR_PACKAGES), libraries=list(WORKLOAD_LIBRARIES))
    out = json.loads(installed.run_python(code, cwd=tmp_path).stdout)
    assert Path(out["gyre"]).is_relative_to(installed.site), out["gyre"]  # the wheel, not the checkout
    assert out["installed"] == [], "the base environment must not have the workloads' libraries"
    assert out["loaded"] == []
    for module in ("gyre.operator.main", "gyre.operator.handlers", "gyre.controllers.topics"):
        assert module in out["imported"]
    for kind in ("stream", "featurejob", "trainingjob", "experiment", "inferenceservice"):
        assert f"gyre.controllers.{kind}" in out["imported"]
    assert {"gyre.builders.stream", "gyre.builders.trainingjob", "gyre.runtimes.kubernetes"} <= set(
        out["imported"]
    )


def manifests(nothing: str) -> str:
    """One object of every kind; the Stream's Kafka is an address where nothing listens."""
    stream = stream_manifest(
        "events",
        external=f'bootstrapServers: ["{nothing}"]',
        topic="partitions: 1",
        sink_lake='uri: "file:///lake/events"',
        collector="replicas: 1",
    )
    return (
        stream
        + """---
apiVersion: gyre.dev/v1alpha1
kind: FeatureJob
metadata: {name: features}
spec:
  source: {path: "file:///data/events"}
  entity: user_id
  timestampField: ts
  features:
    - {name: views_7d, aggregation: sum, field: views, window: 7d}
  offline: {uri: "file:///features"}
---
apiVersion: gyre.dev/v1alpha1
kind: TrainingJob
metadata: {name: model}
spec:
  dataset: {path: "file:///data/x", label: churned, features: [plan, views]}
  model: {architecture: mlp, task: binary}
  workers: 1
  resources: {cpu: 100m, memory: 128Mi}
  output: {uri: "file:///models"}
---
apiVersion: gyre.dev/v1alpha1
kind: Experiment
metadata: {name: tuning}
spec:
  search:
    objective: {metric: validation, goal: maximize}
    algorithm: {name: random}
    parameters:
      - {name: hyperparameters.learningRate, type: double, min: 0.001, max: 0.1}
    maxTrials: 2
    trialTemplate:
      dataset: {path: "file:///data/x", label: churned}
      model: {architecture: mlp, task: binary}
      output: {uri: "file:///models/tuning"}
---
apiVersion: gyre.dev/v1alpha1
kind: InferenceService
metadata: {name: serving}
spec:
  model: {uri: "file:///models/x"}
"""
    )


@pytest.fixture
def operator(cluster: Cluster, installed: Installed, tmp_path: Path) -> Iterator[OperatorProcess]:
    install_crds(cluster)
    op = OperatorProcess(
        cluster,
        fresh_namespace(cluster, "base"),
        "kubernetes",
        tmp_path,
        command=[str(installed.site / "bin" / "gyre")],
        env=installed.env,
    )
    op.start()
    yield op
    op.stop()
    # Shown by pytest only when the test failed.
    print(f"--- operator log ({op.log_path}) ---\n{op.log(200)}")
    print(cluster.kubectl("get", "gyre", "-n", op.namespace, "-o", "yaml", check=False).stdout)
    cluster.kubectl("delete", "namespace", op.namespace, "--wait=false", check=False)


def _requeues(metrics_port: int) -> float:
    """Reconciles that asked kopf to retry (not the operator's own resync)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("gyre_reconciles_total{") or 'result="requeue"' not in line:
            continue
        if 'trigger="resync"' not in line and 'trigger="dependency"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_operator_reconciles_every_kind_with_the_base_dependencies(operator: OperatorProcess) -> None:
    operator.apply(manifests(f"127.0.0.1:{free_port()}"))

    def condition(kind: str, name: str, type_: str) -> dict[str, str]:
        status = operator.get(kind, name).get("status") or {}
        assert status.get("observedGeneration") == 1, status
        return dict(operator.condition(kind, name, type_))

    # The FeatureJob and the InferenceService build their workloads (kwok runs no Spark and no
    # model server): a run starting, model servers starting or not answering.
    features = eventually(lambda: condition("featurejob", "features", "Ready"), 60)
    assert (features["status"], features["reason"]) == ("False", "NoVersionYet"), features
    serving = eventually(lambda: condition("inferenceservice", "serving", "Ready"), 60)
    assert serving["status"] == "False", serving
    assert serving["reason"] in ("WorkloadsStarting", "ModelNotAnswering"), serving
    # A search needs its engine, the search extra: where the operator's interpreter has it
    # the search starts its trials, where it lacks it the Experiment says what to install.
    ready = eventually(lambda: condition("experiment", "tuning", "Ready"), 60)
    assert ready["status"] == "False", ready
    searching = ready["reason"] == "Searching" and "trials started" in ready["message"]
    missing = ready["reason"] == "RuntimeError" and "pip install 'gyre[search]'" in ready["message"]
    assert searching or missing, ready
    created = eventually(lambda: condition("trainingjob", "model", "Created"), 60)
    assert created["status"] == "True", created
    # The topic admin (confluent-kafka, a base dependency) was asked and found no broker.
    stream = eventually(lambda: condition("stream", "events", "Ready"), 60)
    assert stream["status"] == "False", stream
    assert "waiting for topic" in stream["message"], stream
    assert "KafkaError" in stream["message"], stream

    # Waiting is retried through kopf, quietly: no error line for it in the operator's log.
    eventually(lambda: _requeues(operator.metrics_port) > 0, 30, what="a reconcile that waits")
    log = operator.log_path.read_text()
    assert "failed temporarily" not in log, operator.log(40)
    assert "Traceback" not in log, operator.log(80)
