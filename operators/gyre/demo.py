"""`gyre demo`: the example system on the embedded default, end to end, with its claims checked.

Starts the local control plane (or reuses a running one), installs the CRDs, starts the
operator with the local runtime, applies `manifests/examples/` into a namespace and follows
the resources until they settle, then prints `kubectl get gyre` and every resource's
conditions.

Every run starts from a clean state: it deletes the namespace of an earlier run, the local
runtime's state (Kafka's log among it) and the lake, feature and model directories the
manifests name (``file:///tmp/gyre/...``, moved under ``--data-dir`` when given). Without
that, a second run would post the same sessions into the same lake and train on every event
twice.

What it prints is checked, and a false claim makes it exit with status 1 saying which: every
session is accepted or rejected as generated, the lake holds exactly the accepted events,
each resource reaches the state it is expected to reach today, and the model beats the
majority-class baseline.

Without ``--keep`` it stops the operator (and with it every workload it started) and the
control plane, when it started it, leaving nothing running; a failed run stops them in any
case. A plane that was running before (``gyre cluster up``) is left running.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gyre.controlplane.plane import ControlPlane, ControlPlaneError
from gyre.controlplane.procs import Proc, log_tail, processes
from gyre.core.durations import parse_duration
from gyre.manifests import repo_root

KINDS = ",".join(
    f"{p}.gyre.dev" for p in ("streams", "featurejobs", "trainingjobs", "experiments", "inferenceservices")
)
# Where the example manifests keep their lake, offline features and models.
MANIFEST_DATA_DIR = Path("/tmp/gyre")
_FILE_URI = re.compile(r"file://(/[^\s,}\]\"']+)")


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


class DemoFailed(Exception):
    """A claim of the demo is false, or the system did not get where it should."""


@dataclass(frozen=True)
class Expected:
    """The state a resource of a kind reaches in the demo today."""

    phase: str | None = None
    ready: str | None = None  # status of the Ready condition
    reason: str | None = None  # reason of the Ready condition

    def describe(self) -> str:
        parts = [f"phase {self.phase}"] if self.phase else []
        if self.ready:
            parts.append(f"Ready={self.ready}" + (f" ({self.reason})" if self.reason else ""))
        return ", ".join(parts)

    def mismatch(self, obj: dict[str, Any]) -> str | None:
        """What differs between ``obj``'s status and this expectation; None when nothing does."""
        st = obj.get("status") or {}
        ready: dict[str, Any] = next((c for c in st.get("conditions", []) if c.get("type") == "Ready"), {})
        found = f"phase {st.get('phase', '-')}, Ready={ready.get('status', '-')} ({ready.get('reason', '-')})"
        if self.phase is not None and st.get("phase") != self.phase:
            return found
        if self.ready is not None and ready.get("status") != self.ready:
            return found
        if self.reason is not None and ready.get("reason") != self.reason:
            return found
        return None


# The FeatureJob runs Spark over the lake and publishes a version and online values: Ready.
# The TrainingJob trains on that version. The Experiment's search runs its trials
# (TrainingJobs) to maxTrials. The InferenceService serves the TrainingJob's model with the
# features the FeatureJob keeps online.
EXPECTED: dict[str, Expected] = {
    "Stream": Expected(ready="True"),
    "TrainingJob": Expected(phase="Succeeded", ready="True"),
    "FeatureJob": Expected(phase="Ready", ready="True", reason="FeaturesAvailable"),
    "Experiment": Expected(phase="Succeeded", ready="True", reason="MaxTrialsReached"),
    "InferenceService": Expected(ready="True", reason="Serving"),
}
# Phases after which a FeatureJob's run is over (the demo waits for one).
FEATURE_RUN_OVER = ("Ready", "Failed", "Degraded")
# Users the demo asks the InferenceService about, and how many of the first answers it ignores.
PREDICT_USERS = 25
PREDICT_WARMUP = 5


@dataclass(frozen=True)
class Check:
    claim: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Manifest:
    path: Path
    text: str  # with the data paths moved under the run's data dir
    kind: str
    name: str

    def spec(self) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load(self.text)
        spec: dict[str, Any] = doc.get("spec") or {}
        return spec


def load_examples(directory: Path, data_dir: Path) -> list[Manifest]:
    """The example manifests, their ``file:///tmp/gyre/...`` URIs moved under ``data_dir``."""
    out = []
    for path in sorted(directory.glob("[0-9][0-9]-*.yaml")):
        text = path.read_text()
        if data_dir != MANIFEST_DATA_DIR:
            text = text.replace(f"file://{MANIFEST_DATA_DIR}/", f"file://{data_dir}/")
        doc = yaml.safe_load(text)
        out.append(Manifest(path, text, doc["kind"], doc["metadata"]["name"]))
    return out


def data_paths(manifests: Iterable[Manifest], data_dir: Path) -> list[Path]:
    """The local directories the manifests write to (lake, features, models), inside ``data_dir``."""
    found = {Path(m) for man in manifests for m in _FILE_URI.findall(man.text)}
    return sorted(p for p in found if p.is_relative_to(data_dir) and p != data_dir)


def lake_rows(uri: str) -> int:
    """Rows in the lake's committed data files: what a reader of the lake (the trainer) sees."""
    # The stream extra's reader; imported here so that `gyre` loads without it.
    import pyarrow.parquet as pq

    from gyre.pipelines.lakesink.committer import committed_files

    return sum(pq.ParquetFile(path).metadata.num_rows for path in committed_files(uri))


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plane = ControlPlane(args.state_dir)
        self.workdir = self.plane.state_dir.parent / "demo"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pid_file = self.workdir / "operator.pid"
        self.log = self.workdir / "operator.log"
        # Present while the control plane runs because a demo started it (kept by --keep).
        self.plane_marker = self.workdir / "control-plane-started"
        self.data_dir = Path(args.data_dir).expanduser().resolve()
        self.manifests = load_examples(repo_root() / "manifests/examples", self.data_dir)
        self.env: dict[str, str] = {}
        self.operator: subprocess.Popen[bytes] | None = None
        self.checks: list[Check] = []

    # -- kubectl

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", *args], env=self.env, capture_output=True, text=True, check=check, input=input
        )

    def objects(self) -> list[dict[str, Any]]:
        out = self.kubectl("get", KINDS, "-n", self.args.namespace, "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out = self.kubectl("get", kind, name, "-n", self.args.namespace, "-o", "json").stdout
        obj: dict[str, Any] = json.loads(out)
        return obj

    def apply(self, manifest: Manifest) -> None:
        out = self.kubectl("apply", "-n", self.args.namespace, "-f", "-", input=manifest.text).stdout
        print(out, end="")

    def manifest(self, kind: str) -> Manifest:
        return next(m for m in self.manifests if m.kind == kind)

    # -- the run

    def run(self) -> None:
        self.start_plane()
        self.stop_operator()
        self.clean()
        self.start_operator()
        self.run_stream()
        self.apply_rest()
        self.follow()
        self.report()
        self.verify()

    def start_plane(self) -> None:
        if not self.plane.is_running():
            say("starting the local control plane (the first run builds it: several minutes)")
            self.plane_marker.write_text(f"{os.getpid()}\n")
        self.plane.up()
        self.env = self.plane.env
        say("installing the CRDs")
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(repo_root() / "manifests/crds"))
        self.kubectl("wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=gyre")

    def clean(self) -> None:
        """Remove what an earlier run left: its namespace, the runtime's state, the data dirs."""
        ns = self.args.namespace
        if self.kubectl("get", "namespace", ns, check=False).returncode == 0:
            say(f"deleting the namespace {ns} of an earlier run")
            self.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s")
        for path in [self.workdir / "local", *data_paths(self.manifests, self.data_dir)]:
            if path.exists():
                say(f"removing {path} of an earlier run")
                shutil.rmtree(path)

    def start_operator(self) -> None:
        say(f"starting the operator (runtime: local; log: {self.log})")
        with self.log.open("wb") as out:
            self.operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gyre.cli",
                    "operator",
                    "--runtime",
                    "local",
                    "--state-dir",
                    str(self.workdir / "local"),
                    "--metrics-port",
                    str(self.args.metrics_port),
                    "--health-port",
                    str(self.args.health_port),
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self.operator.pid}\n")

        def healthy() -> tuple[bool, str]:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.args.health_port}/healthz", timeout=2
                ) as r:
                    return r.status == 200, f"health endpoint answered {r.status}"
            except (OSError, urllib.error.URLError):
                return False, "starting"

        self.wait_for("the operator", healthy, 120)

    def operator_alive(self) -> None:
        if self.operator is not None and self.operator.poll() is not None:
            raise DemoFailed(
                f"the operator exited with status {self.operator.returncode}; the end of {self.log}:\n"
                + log_tail(self.log, 20)
            )

    def wait_for(self, what: str, check: Callable[[], tuple[bool, str]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            self.operator_alive()
            done, line = check()
            if line != last:
                say(f"{what}: {line}")
                last = line
            if done:
                return
            if time.monotonic() > deadline:
                raise DemoFailed(f"gave up waiting for {what} after {timeout:.0f} s ({line}); see {self.log}")
            time.sleep(1)

    def post(self, url: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Post one batch to the collector; one result per event."""
        return post_events(url, events)

    def run_stream(self) -> None:
        ns = self.args.namespace
        self.kubectl("create", "namespace", ns)
        stream = self.manifest("Stream")
        say(f"applying the Stream into namespace {ns}")
        self.apply(stream)

        def stream_ready() -> tuple[bool, str]:
            st = self.get("stream", stream.name).get("status") or {}
            ready: dict[str, Any] = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
            return ready.get("status") == "True", f"{st.get('phase', '-')}: {ready.get('message', '')}"

        self.wait_for(f"Stream {stream.name}", stream_ready, 300)
        url = self.get("stream", stream.name)["status"]["collectorUrl"]
        events = clickstream(self.args.events, seed=7)
        malformed = sum(1 for e in events if e["plan"] not in ("free", "pro", "team"))
        say(f"sending {len(events)} clickstream sessions ({malformed} malformed) to {url}")
        accepted = rejected = 0
        batch = 500
        for i in range(0, len(events), batch):
            results = self.post(url, events[i : i + batch])
            accepted += sum(1 for r in results if r["status"] == "accepted")
            rejected += sum(1 for r in results if r["status"] == "rejected")
            print(
                f"\r    {min(i + batch, len(events))}/{len(events)} sent", end="", file=sys.stderr, flush=True
            )
        print(file=sys.stderr)
        say(f"collector: {accepted} accepted, {rejected} rejected to the dead-letter topic")
        self.claim(
            "the collector accepted every well-formed session and rejected every malformed one",
            accepted == len(events) - malformed and rejected == malformed,
            f"{accepted} accepted, {rejected} rejected of {len(events)} sent ({malformed} malformed)",
        )

        uri = stream.spec()["sinks"][0]["lake"]["uri"]

        def in_lake() -> tuple[bool, str]:
            rows = lake_rows(uri)
            return rows >= accepted, f"{rows}/{accepted} events committed to {uri}"

        self.wait_for("lake sink", in_lake, 180)
        # Counted again once a flush later, so that events still on their way are counted too.
        flush_s = _seconds(str(stream.spec()["sinks"][0]["lake"].get("flushInterval", "10s")))
        time.sleep(flush_s + 1)
        rows = lake_rows(uri)
        self.claim(
            "the lake holds every accepted event exactly once",
            rows == accepted,
            f"{rows} rows in {uri}, {accepted} events accepted",
        )
        # Training on a wrong lake proves nothing: stop here.
        self.fail_if_any()

    def apply_rest(self) -> None:
        say("applying the FeatureJob, TrainingJob, Experiment and InferenceService")
        for m in self.manifests:
            if m.kind != "Stream":
                self.apply(m)

    def settled(self, items: list[dict[str, Any]]) -> bool:
        if len(items) < len(self.manifests):
            return False
        for obj in items:
            st = obj.get("status") or {}
            if st.get("observedGeneration") != obj["metadata"]["generation"]:
                return False
            trial = any(r.get("kind") == "Experiment" for r in obj["metadata"].get("ownerReferences") or [])
            if obj["kind"] == "TrainingJob" and not trial and st.get("phase") not in ("Succeeded", "Failed"):
                return False
            if obj["kind"] == "FeatureJob" and st.get("phase") not in FEATURE_RUN_OVER:
                return False
            if obj["kind"] == "Experiment" and st.get("phase") not in ("Succeeded", "Failed"):
                return False  # its trials are done when it is
            if obj["kind"] == "InferenceService" and not _ready(obj):
                return False
        return True

    def follow(self) -> None:
        deadline = time.monotonic() + self.args.timeout
        last = ""
        while time.monotonic() < deadline:
            self.operator_alive()
            items = self.objects()
            line = "  ".join(_summary(o) for o in items)
            if line != last:
                say(line)
                last = line
            if self.settled(items):
                return
            time.sleep(2)
        say(f"not settled after {self.args.timeout:.0f} s; showing the current state")

    def report(self) -> None:
        ns = self.args.namespace
        print(f"\n$ kubectl get gyre -n {ns}")
        print(self.kubectl("get", "gyre", "-n", ns).stdout)
        print("Conditions:")
        for obj in self.objects():
            print(f"  {obj['kind']} {obj['metadata']['name']}")
            for c in (obj.get("status") or {}).get("conditions", []):
                print(f"    {c['type']:<18} {c['status']:<6} {c['reason']:<22} {c.get('message', '')}")
        job = self.get("trainingjob", self.manifest("TrainingJob").name).get("status") or {}
        metrics = job.get("metrics") or {}
        if "validation" in metrics and "valMajorityAccuracy" in metrics:
            print(
                f"\nTrainingJob {self.manifest('TrainingJob').name} ({job.get('phase')}):"
                f" validation accuracy {metrics['validation']:.3f}"
                f" vs {metrics['valMajorityAccuracy']:.3f} for always predicting the majority class;"
                f" model {job.get('model', {}).get('uri')}"
            )

    def verify(self) -> None:
        found = {(o["kind"], o["metadata"]["name"]): o for o in self.objects()}
        for m in self.manifests:
            expected = EXPECTED.get(m.kind)
            if expected is None:
                continue
            obj = found.get((m.kind, m.name))
            mismatch = "not found" if obj is None else expected.mismatch(obj)
            self.claim(
                f"{m.kind} {m.name} reached {expected.describe()}",
                mismatch is None,
                mismatch or "as expected",
            )
        job = found.get(("TrainingJob", self.manifest("TrainingJob").name)) or {}
        metrics = (job.get("status") or {}).get("metrics") or {}
        acc, base = metrics.get("validation"), metrics.get("valMajorityAccuracy")
        self.claim(
            "the model beats always predicting the majority class",
            acc is not None and base is not None and acc > base,
            f"validation accuracy {acc} vs {base}",
        )
        search = found.get(("Experiment", self.manifest("Experiment").name)) or {}
        best = ((search.get("status") or {}).get("best") or {}).get("value")
        self.claim(
            "the search's best trial beats always predicting the majority class",
            best is not None and base is not None and best > base,
            f"best trial's validation accuracy {best} vs {base}",
        )
        self.verify_serving(found)
        print("\nChecks:")
        for c in self.checks:
            print(f"  {'ok  ' if c.ok else 'FAIL'}  {c.claim}: {c.detail}")
        self.fail_if_any()

    def verify_serving(self, found: dict[tuple[str, str], dict[str, Any]]) -> None:
        """Ask the InferenceService about users of the clickstream by key alone: the model
        server reads their features from the FeatureJob's online store."""
        isvc = found.get(("InferenceService", self.manifest("InferenceService").name)) or {}
        url = (isvc.get("status") or {}).get("url")
        claim = "the InferenceService answers for a user by key, with that user's online features"
        if not url or not _ready(isvc):
            self.claim(claim, False, f"not serving: {_summary(isvc) if isvc else 'not found'}")
            return
        name = isvc["metadata"]["name"]
        users = sorted({e["user_id"] for e in clickstream(self.args.events, seed=7)})[:PREDICT_USERS]
        answered = imputed = fallbacks = 0
        probabilities: list[float] = []
        latencies: list[float] = []
        print(f"\nAsking InferenceService {name} at {url} about {len(users)} users by user_id:")
        for i, user in enumerate(users):
            t0 = time.monotonic()
            try:
                body = predict(f"{url}/v1/models/{name}:predict", [{"user_id": user}])
            except (OSError, ValueError) as e:
                self.claim(claim, False, f"{url}: {e}")
                return
            ms = 1000 * (time.monotonic() - t0)
            if i < 3 or body.get("fallback"):
                print(f"  {user}: {json.dumps(body, sort_keys=True)[:160]} ({ms:.1f} ms)")
            if i < PREDICT_WARMUP:
                continue  # the first answers may miss the deadline while the server warms up
            latencies.append(ms)
            if body.get("fallback"):
                fallbacks += 1
                continue
            answered += 1
            imputed += sum(1 for names in body.get("imputed", [[]]) if names)
            probabilities += [float(p) for p in body.get("predictions", []) if isinstance(p, int | float)]
        latencies.sort()
        p50 = latencies[len(latencies) // 2] if latencies else 0.0
        measured = len(users) - PREDICT_WARMUP
        self.claim(
            claim,
            answered > 0 and imputed == 0 and len(probabilities) == answered,
            f"{answered} of {measured} users answered by the model ({fallbacks} fallbacks past the"
            f" deadline), {imputed} with an imputed feature; churn probabilities"
            f" {min(probabilities, default=0):.2f}..{max(probabilities, default=0):.2f};"
            f" latency p50 {p50:.1f} ms, max {max(latencies, default=0):.1f} ms",
        )
        self.verify_fallback(found, isvc, f"{url}/v1/models/{name}:predict", users)

    def verify_fallback(
        self, found: dict[tuple[str, str], dict[str, Any]], isvc: dict[str, Any], url: str, users: list[str]
    ) -> None:
        """The fallback case: with the FeatureJob's online store paused (its redis-server
        stopped by SIGSTOP), every answer is the default response within the deadline and the
        circuit breaker opens; once the store resumes, the breaker lets requests through to the
        model again after its reset timeout."""
        spec = isvc.get("spec") or {}
        fallback = spec.get("fallback") or {}
        deadline_ms = float(fallback.get("deadlineMs", 0))
        breaker = fallback.get("circuitBreaker") or {}
        threshold = int(breaker.get("failureThreshold", 5))
        reset_s = parse_duration(str(breaker.get("resetTimeout", "30s")))
        claim = "with its online store paused, the InferenceService answers its default response on time"
        fj = found.get(("FeatureJob", (spec.get("features") or {}).get("featureJob", ""))) or {}
        address = ((fj.get("status") or {}).get("online") or {}).get("address", "")
        pids = redis_pids(address)
        if len(pids) != 1:
            self.claim(claim, False, f"the online store's redis-server at {address!r}: {len(pids)} processes")
            return
        print(f"\nPausing the online store (redis-server at {address}, SIGSTOP):")
        answers: list[tuple[dict[str, Any], float]] = []
        os.kill(pids[0], signal.SIGSTOP)
        try:
            for user in users[: threshold + 3]:
                t0 = time.monotonic()
                body = predict(url, [{"user_id": user}])
                answers.append((body, 1000 * (time.monotonic() - t0)))
                print(f"  {user}: {json.dumps(body, sort_keys=True)[:160]} ({answers[-1][1]:.1f} ms)")
        except (OSError, ValueError) as e:
            self.claim(claim, False, f"{url}: {e}")
            return
        finally:
            os.kill(pids[0], signal.SIGCONT)
        reasons = [str(body.get("fallback_reason")) for body, _ in answers]
        slowest = max(ms for _, ms in answers)
        # The deadline is the server's; the client's own HTTP round trip comes on top.
        self.claim(
            claim,
            all(body.get("fallback") for body, _ in answers) and slowest <= deadline_ms + 250,
            f"{sum(1 for b, _ in answers if b.get('fallback'))} of {len(answers)} answers were the default"
            f" response, the slowest in {slowest:.1f} ms (deadline {deadline_ms:g} ms); reasons {reasons}",
        )
        recovered = "once the store resumed, the circuit breaker closed and the model answered again"
        print(f"Resumed the online store; asking every 2 s until the breaker ({reset_s:g} s) closes:")
        t0 = time.monotonic()
        while True:
            body = predict(url, [{"user_id": users[0]}])
            waited = time.monotonic() - t0
            if not body.get("fallback") or waited > reset_s + 30:
                break
            time.sleep(2.0)
        print(f"  {users[0]}: {json.dumps(body, sort_keys=True)[:160]} (after {waited:.0f} s)")
        self.claim(
            recovered,
            not body.get("fallback") and "breaker_open" in reasons,
            f"the breaker opened after {reasons.index('breaker_open') if 'breaker_open' in reasons else '-'}"
            f" deadline misses; the model answered again {waited:.0f} s after the store resumed",
        )

    def claim(self, claim: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(claim, ok, detail))
        if not ok:
            say(f"FALSE: {claim}: {detail}")

    def fail_if_any(self) -> None:
        failed = [c for c in self.checks if not c.ok]
        if failed:
            raise DemoFailed("; ".join(f"{c.claim}: {c.detail}" for c in failed))

    # -- stopping

    def stop_operator(self) -> None:
        """Stop the operator of this run or of a kept earlier one (its workloads die with it)."""
        pid = self.operator.pid if self.operator is not None else None
        if pid is None and self.pid_file.exists():
            pid = int(self.pid_file.read_text())
            # A pid of a kept earlier run, unless it has since been reused by another process.
            if not any(str(self.workdir) in a for a in Proc(pid).cmdline()):
                pid = None
        if pid is not None:
            _terminate(pid, self.operator, timeout=30.0)
        self.operator = None
        self.pid_file.unlink(missing_ok=True)

    def stop(self) -> list[int]:
        """Stop the operator, and the control plane when a demo started it; the pids of any
        process of the demo still running half a minute later (none, normally)."""
        self.stop_operator()
        roots = [self.workdir]
        if self.plane_marker.exists():
            self.plane.down()
            self.plane_marker.unlink()
            roots.append(self.plane.state_dir)
            say("stopped the operator, its workloads and the control plane")
        else:
            say("stopped the operator and its workloads (the control plane was running before)")
        # The workloads' supervisors end them when they see the operator gone.
        deadline = time.monotonic() + 30
        while (left := running_under(roots)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def down(self) -> int:
        self.stop_operator()
        self.plane.down()
        self.plane_marker.unlink(missing_ok=True)
        say("stopped the operator and the control plane")
        return 0


def running_under(roots: Iterable[Path]) -> list[int]:
    """Processes working in, or naming in their command line, one of ``roots``; not counting
    this process's ancestors (the shell that ran the demo names its directories too)."""
    names = [str(r) for r in roots]
    ancestors = _ancestors()

    def under(p: Proc) -> bool:
        if p.pid in ancestors:
            return False
        cwd = p.cwd() or ""
        args = p.cmdline()
        return any(cwd == r or cwd.startswith(r + "/") or any(r in a for a in args) for r in names)

    return processes(under)


def _ancestors() -> set[int]:
    out: set[int] = set()
    pid = os.getppid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _terminate(pid: int, child: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, SIGKILL after ``timeout``; waits until the process is gone (and reaps a child)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            return
        if child is None and not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if child is not None:
        child.wait()


def _seconds(duration: str) -> float:
    """``"500ms"``, ``"5s"``, ``"2m"`` in seconds."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if duration.endswith(suffix):
            return float(duration.removesuffix(suffix)) * scale
    return float(duration)


def _ready(obj: dict[str, Any]) -> bool:
    conds = (obj.get("status") or {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def _summary(obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    text = f"{obj['kind']}/{obj['metadata']['name']}: {st.get('phase', '-')}"
    progress = st.get("progress") or {}
    if progress.get("percent"):
        text += f" {progress['percent']}"
    return text


# Six days: the FeatureJob's 7-day windows see a user's history, and its 2-day label horizon
# has elapsed for the observations of the first four.
CLICKSTREAM_SPAN_MS = 6 * 86_400_000


def clickstream(n: int, seed: int) -> list[dict[str, Any]]:
    """Sessions of a subscription app over six days, a quarter as many users as sessions. A user keeps a
    plan, an engagement level and a propensity to file support tickets; a session's churn flag
    depends on the session and the plan. So a user's last week (the FeatureJob's features)
    predicts whether they churn in the next days (its label), and a session's own fields
    predict its flag. One session in a hundred is malformed (the collector sends those to the
    dead-letter topic)."""
    rng = random.Random(seed)
    start = 1_735_689_600_000  # 2025-01-01
    spacing_ms = CLICKSTREAM_SPAN_MS // max(n, 1)  # whatever n, the sessions span the same days
    users = [
        (
            rng.choices(["free", "pro", "team"], [0.6, 0.3, 0.1])[0],
            rng.gauss(0.0, 1.0),  # engagement
            rng.choices([0.1, 0.5, 1.5], [0.6, 0.3, 0.1])[0],  # tickets per session
        )
        for _ in range(n // 4 + 1)
    ]
    out: list[dict[str, Any]] = []
    for i in range(n):
        user = rng.randrange(len(users))
        plan, engagement, ticket_rate = users[user]
        device = rng.choice(["web", "ios", "android"])
        views = max(0, int(rng.gauss(8 + 3 * engagement, 2)))
        seconds = max(5.0, rng.gammavariate(4.0, 60.0 * math.exp(0.4 * engagement)))
        tickets = sum(rng.random() < ticket_rate / 3 for _ in range(3))
        score = 1.0 - 0.25 * views - 0.003 * seconds + 0.8 * tickets + (1.0 if plan == "free" else -0.7)
        churned = score + rng.gauss(0, 0.5) > -0.6
        event: dict[str, Any] = {
            "user_id": f"u{user:05d}",
            "ts": start + i * spacing_ms,
            "device": device,
            "plan": plan,
            "page_views": views,
            "session_seconds": round(seconds, 1),
            "support_tickets": tickets,
            "churned": churned,
        }
        if i % 100 == 99:
            event["plan"] = "enterprise"  # not in the schema's enum
        out.append(event)
    return out


def redis_pids(address: str) -> list[int]:
    """The redis-server processes listening at ``address`` (host:port), by their command line."""
    port = address.rpartition(":")[2]
    if not port.isdigit():
        return []

    def listening(p: Proc) -> bool:
        cmd = p.cmdline()
        # redis-server itself (which retitles itself "redis-server host:port"), not a parent
        # whose arguments name it.
        if not cmd or Path(cmd[0].split()[0]).name != "redis-server":
            return False
        line = " ".join(cmd)
        return f":{port}" in line or f"--port {port}" in line

    return processes(listening)


def predict(url: str, instances: list[dict[str, Any]]) -> dict[str, Any]:
    """A V1 prediction request; the answer's JSON."""
    req = urllib.request.Request(
        url,
        data=json.dumps({"instances": instances}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


def post_events(url: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    req = urllib.request.Request(
        url, data=json.dumps(events).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        results: list[dict[str, Any]] = json.loads(r.read())["results"]
        return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gyre demo", description=__doc__.splitlines()[0])
    p.add_argument("--namespace", "-n", default="demo")
    p.add_argument("--state-dir", type=Path, default=None, help="control plane state dir")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=MANIFEST_DATA_DIR,
        help=f"where the lake, features and models go (default: {MANIFEST_DATA_DIR}, as in the manifests)",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the system to settle")
    p.add_argument("--keep", action="store_true", help="leave the system running after a successful demo")
    p.add_argument("--down", action="store_true", help="stop a kept demo and the control plane")
    p.add_argument("--events", type=int, default=6000, help="clickstream sessions to send")
    p.add_argument("--metrics-port", type=int, default=8080)
    p.add_argument("--health-port", type=int, default=8081)
    return p.parse_args(argv)


def run(demo: Demo) -> int:
    """Run ``demo``; 0 when every claim held, 1 otherwise. Stops what it started unless kept."""
    if demo.args.down:
        return demo.down()
    ok = False
    try:
        demo.run()
        ok = True
    except DemoFailed as e:
        print(f"gyre demo: FAILED: {e}", file=sys.stderr)
    except ControlPlaneError as e:
        print(f"gyre demo: the control plane did not start: {e}", file=sys.stderr)
    except subprocess.CalledProcessError as e:
        print(f"gyre demo: {' '.join(map(str, e.cmd))} failed ({e.returncode}):\n{e.stderr}", file=sys.stderr)
    finally:
        # Also on Ctrl-C: a failed or interrupted run leaves nothing running.
        if not (ok and demo.args.keep):
            left = demo.stop()
            if left:
                print(f"gyre demo: processes of the demo still run: {left}", file=sys.stderr)
                ok = False
    if ok and demo.args.keep:
        say(f"the system keeps running (operator pid {demo.pid_file.read_text().strip()})")
        print(f"\nexport KUBECONFIG={demo.plane.kubeconfig}; export PATH={demo.plane.bin_dir}:$PATH")
        print("Stop everything with: gyre demo --down")
    if not ok:
        print(f"gyre demo: logs: {demo.log} and {demo.workdir / 'local'}", file=sys.stderr)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    return run(Demo(parse_args(argv)))
