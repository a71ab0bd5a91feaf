"""A Gyre operator process for tests: started against the test cluster, stopped after."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gyre.controlplane import procs
from gyre.controlplane.procs import running_in
from gyre.manifests import repo_root

from tests.controlplane.cluster import Cluster
from tests.support import free_port

ROOT = repo_root()
PLURALS = ["streams", "featurejobs", "trainingjobs", "experiments", "inferenceservices"]
# What the kubernetes runtime renders (`gyre.runtimes.k8s_render`), for `children`.
CHILD_KINDS = "configmaps,services,jobs,deployments,statefulsets,horizontalpodautoscalers"


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "manifests/crds"))
    for plural in PLURALS:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{plural}.gyre.dev", "--timeout=60s")


def fresh_namespace(cluster: Cluster, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    return name


def running_operator(
    cluster: Cluster,
    workdir: Path,
    prefix: str,
    runtime: str,
    *,
    show: str = "gyre",
    log_lines: int = 200,
    show_wide: str = "",
    delete_namespace: bool = False,
) -> Iterator[OperatorProcess]:
    """The body of an operator fixture: the CRDs installed, an operator watching a fresh
    namespace (``prefix``-...) yielded, then stopped; its log tail and the namespace's ``show``
    objects are printed (pytest shows them only when the test failed), ``show_wide``'s as a
    table; ``delete_namespace``: deleted after, without waiting."""
    install_crds(cluster)
    op = OperatorProcess(cluster, fresh_namespace(cluster, prefix), runtime, workdir).start()
    yield op
    op.stop()
    print(f"--- operator log ({op.log_path}) ---\n{op.log(log_lines)}")
    print(cluster.kubectl("get", show, "-n", op.namespace, "-o", "yaml", check=False).stdout)
    if show_wide:
        print(cluster.kubectl("get", show_wide, "-n", op.namespace, "-o", "wide", check=False).stdout)
    if delete_namespace:
        cluster.kubectl("delete", "namespace", op.namespace, "--wait=false", check=False)


class OperatorProcess:
    """`gyre operator` as a child process, watching one namespace."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        runtime: str,
        workdir: Path,
        *,
        command: Sequence[str] = (sys.executable, "-m", "gyre.cli"),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``command`` runs the ``gyre`` CLI; ``env`` is added to the cluster's environment."""
        self.cluster = cluster
        self.namespace = namespace
        self.runtime = runtime
        self.workdir = workdir
        self.command = tuple(command)
        self.env = dict(env or {})
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.log_path = workdir / f"operator-{namespace}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**self.cluster.env, "PYTHONUNBUFFERED": "1", **self.env}
        cmd = [
            *self.command, "operator", "--runtime", self.runtime,
            "-n", self.namespace, "--metrics-port", str(self.metrics_port),
            "--health-port", str(self.health_port), "--state-dir", str(self.workdir / "local"),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        procs.stop(self.proc, timeout_s=60)

    def log(self, lines: int = 80) -> str:
        if not self.log_path.exists():
            return ""
        return procs.log_tail(self.log_path, lines)

    def get(self, kind: str, name: str) -> Mapping[str, Any]:
        out = self.cluster.kubectl("get", kind, name, "-n", self.namespace, "-o", "json").stdout
        obj: Mapping[str, Any] = json.loads(out)
        return obj

    def status(self, kind: str, name: str) -> dict[str, Any]:
        """The object's status ({} before the operator wrote one)."""
        return dict(self.get(kind, name).get("status") or {})

    def condition(self, kind: str, name: str, type_: str) -> Mapping[str, Any]:
        for c in (self.get(kind, name).get("status") or {}).get("conditions", []):
            if c["type"] == type_:
                return c  # type: ignore[no-any-return]
        raise AssertionError(
            f"{kind}/{name} has no {type_} condition yet: {self.get(kind, name).get('status')}"
        )

    def apply(self, manifest: str) -> None:
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=manifest)

    def children(self, kind: str, name: str) -> dict[tuple[str, str], dict[str, Any]]:
        """What the kubernetes runtime rendered for one object, found by its owner labels."""
        return children(self.cluster, self.namespace, owner_selector(kind, name))


def owner_selector(kind: str, name: str) -> str:
    """The labels every child of a Gyre object carries on Kubernetes, as a selector."""
    return f"app.kubernetes.io/managed-by=gyre,gyre.dev/owner-kind={kind},gyre.dev/owner-name={name}"


def children(cluster: Cluster, namespace: str, selector: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Rendered objects matching ``selector``, by (kind, name)."""
    out = cluster.kubectl("get", CHILD_KINDS, "-n", namespace, "-l", selector, "-o", "json").stdout
    return {(i["kind"], i["metadata"]["name"]): i for i in json.loads(out)["items"]}


def running_pids_under(path: Path) -> list[int]:
    """Processes working in ``path`` (the local runtime runs each replica in a directory there)."""
    return running_in(path)


def stream_manifest(
    name: str,
    *,
    managed: str = "",
    external: str | None = None,
    topic: str,
    sink_lake: str | None = None,
    collector: str | None = None,
) -> str:
    """A Stream (schema: a required ``user_id`` key, a ``ts`` timestamp, an enum ``plan``, an int
    ``views``); ``managed`` (or ``external``), ``topic``, ``sink_lake`` and ``collector`` are
    YAML flow-map bodies."""
    kafka = f"external: {{{external}}}" if external is not None else f"managed: {{{managed}}}"
    sink = f"\n  sinks:\n    - name: lake\n      lake: {{{sink_lake}}}" if sink_lake else ""
    collector_spec = f"\n  collector: {{{collector}}}" if collector else ""
    return f"""
apiVersion: gyre.dev/v1alpha1
kind: Stream
metadata: {{name: {name}}}
spec:
  kafka: {{{kafka}}}
  topic: {{{topic}}}
  schema:
    key: user_id
    timestampField: ts
    fields:
      - {{name: user_id, type: string, required: true}}
      - {{name: ts, type: timestamp, required: true}}
      - {{name: plan, type: string, enum: [free, pro]}}
      - {{name: views, type: int}}{collector_spec}{sink}
"""


def make_data(root: Path, rows: int = 3000, seed: int = 0) -> Path:
    """Sessions with a churn label that depends on activity and plan (~35% positive), as
    Parquet for TrainingJobs to train on."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    views = rng.poisson(6, rows)
    seconds = rng.gamma(2.0, 120.0, rows)
    plan = rng.choice(["free", "pro", "team"], rows, p=[0.6, 0.3, 0.1])
    logit = -0.35 * views + 0.004 * (300 - seconds) + np.where(plan == "free", 1.2, -0.8) + 1.0
    churned = (logit + rng.normal(0, 0.4, rows)) > 0.6
    ts = (np.arange(rows) * 60_000 + 1_700_000_000_000).astype("datetime64[ms]")
    root.mkdir(parents=True)
    table = pa.table(
        {"ts": ts, "plan": plan, "page_views": views, "session_seconds": seconds, "churned": churned}
    )
    pq.write_table(table, root / "part-0.parquet", row_group_size=500)
    return root
