"""`gyre demo`: the example system on the embedded default, end to end.

Starts the local control plane (or reuses a running one), installs the CRDs, starts the
operator with the local runtime, applies `manifests/examples/` into a namespace and follows
the resources until they settle, then prints `kubectl get gyre` and every resource's
conditions. Without ``--keep`` it stops the operator (and so every workload it started) at
the end; the control plane keeps running until `gyre cluster down`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from gyre.controlplane.plane import ControlPlane
from gyre.manifests import repo_root

KINDS = ",".join(
    f"{p}.gyre.dev" for p in ("streams", "featurejobs", "trainingjobs", "experiments", "inferenceservices")
)


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plane = ControlPlane(args.state_dir)
        self.workdir = self.plane.state_dir.parent / "demo"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pid_file = self.workdir / "operator.pid"
        self.env: dict[str, str] = {}

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], env=self.env, capture_output=True, text=True, check=check)

    def objects(self) -> list[dict[str, Any]]:
        out = self.kubectl("get", KINDS, "-n", self.args.namespace, "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    def start(self) -> subprocess.Popen[bytes]:
        say("starting the local control plane (the first run builds it: several minutes)")
        self.plane.up()
        self.env = {**os.environ, **self.plane.env}
        say("installing the CRDs")
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(repo_root() / "manifests/crds"))
        self.kubectl("wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=gyre")
        self.stop_operator()
        log = self.workdir / "operator.log"
        say(f"starting the operator (runtime: local; log: {log})")
        with log.open("ab") as out:
            proc = subprocess.Popen(
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
        self.pid_file.write_text(str(proc.pid))
        return proc

    def stop_operator(self) -> None:
        if not self.pid_file.exists():
            return
        pid = int(self.pid_file.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(300):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.pid_file.unlink(missing_ok=True)

    def apply(self, path: Path) -> None:
        print(self.kubectl("apply", "-n", self.args.namespace, "-f", str(path)).stdout, end="")

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out = self.kubectl("get", kind, name, "-n", self.args.namespace, "-o", "json").stdout
        obj: dict[str, Any] = json.loads(out)
        return obj

    def wait_for(self, what: str, check: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            done, line = check()
            if line != last:
                say(f"{what}: {line}")
                last = line
            if done:
                return
            time.sleep(1)
        raise SystemExit(
            f"gave up waiting for {what} after {timeout:.0f} s; see {self.workdir / 'operator.log'}"
        )

    def run_stream(self) -> None:
        examples = repo_root() / "manifests/examples"
        ns = self.args.namespace
        if self.kubectl("get", "namespace", ns, check=False).returncode == 0:
            say(f"deleting the namespace {ns} of an earlier run")
            self.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s")
        self.kubectl("create", "namespace", ns)
        say(f"applying the Stream into namespace {self.args.namespace}")
        self.apply(examples / "01-stream.yaml")

        def stream_ready() -> tuple[bool, str]:
            st = self.get("stream", "clicks").get("status") or {}
            ready: dict[str, Any] = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
            return ready.get("status") == "True", f"{st.get('phase', '-')}: {ready.get('message', '')}"

        self.wait_for("Stream clicks", stream_ready, 300)
        url = self.get("stream", "clicks")["status"]["collectorUrl"]
        events = clickstream(self.args.events, seed=7)
        say(f"sending {len(events)} clickstream sessions (a few malformed) to {url}")
        accepted = rejected = 0
        batch = 500
        for i in range(0, len(events), batch):
            result = post_events(url, events[i : i + batch])
            accepted += sum(1 for r in result if r["status"] == "accepted")
            rejected += sum(1 for r in result if r["status"] == "rejected")
            print(
                f"\r    {min(i + batch, len(events))}/{len(events)} sent", end="", file=sys.stderr, flush=True
            )
        print(file=sys.stderr)
        say(f"collector: {accepted} accepted, {rejected} rejected to the dead-letter topic")

        def in_lake() -> tuple[bool, str]:
            sinks = (self.get("stream", "clicks").get("status") or {}).get("sinks") or [{}]
            written = sinks[0].get("recordsWritten") or 0
            return written >= accepted, f"{written}/{accepted} events committed to the lake"

        self.wait_for("lake sink", in_lake, 180)

    def apply_rest(self) -> None:
        say("applying the FeatureJob, TrainingJob, Experiment and InferenceService")
        for path in sorted((repo_root() / "manifests/examples").glob("0[2-9]-*.yaml")):
            self.apply(path)

    def settled(self) -> bool:
        items = self.objects()
        if len(items) < 5:
            return False
        for obj in items:
            st = obj.get("status") or {}
            if st.get("observedGeneration") != obj["metadata"]["generation"]:
                return False
            if obj["kind"] == "TrainingJob" and st.get("phase") not in ("Succeeded", "Failed"):
                return False
        return True

    def follow(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.args.timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(
                    f"the operator exited with {proc.returncode}; see {self.workdir / 'operator.log'}"
                )
            line = "  ".join(_summary(o) for o in self.objects())
            if line != last:
                say(line)
                last = line
            if self.settled():
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
        job = self.get("trainingjob", "churn-v1").get("status") or {}
        metrics = job.get("metrics") or {}
        if "validation" in metrics and "valMajorityAccuracy" in metrics:
            print(
                f"\nTrainingJob churn-v1 ({job.get('phase')}):"
                f" validation accuracy {metrics['validation']:.3f}"
                f" vs {metrics['valMajorityAccuracy']:.3f} for always predicting the majority class;"
                f" model {job.get('model', {}).get('uri')}"
            )
        print(f"\nexport KUBECONFIG={self.plane.kubeconfig}; export PATH={self.plane.bin_dir}:$PATH")

    def down(self) -> int:
        self.stop_operator()
        self.plane.down()
        say("stopped the operator and the control plane")
        return 0


def _summary(obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    text = f"{obj['kind']}/{obj['metadata']['name']}: {st.get('phase', '-')}"
    progress = st.get("progress") or {}
    if progress.get("percent"):
        text += f" {progress['percent']}"
    return text


def clickstream(n: int, seed: int) -> list[dict[str, Any]]:
    """Sessions of a subscription app with a churn label that depends on behaviour and plan;
    one in a hundred is malformed (the collector sends those to the dead-letter topic)."""
    rng = random.Random(seed)
    start = 1_735_689_600_000  # 2025-01-01
    out: list[dict[str, Any]] = []
    for i in range(n):
        plan = rng.choices(["free", "pro", "team"], [0.6, 0.3, 0.1])[0]
        device = rng.choice(["web", "ios", "android"])
        views = max(0, int(rng.gauss(8, 4)))
        seconds = max(5.0, rng.gammavariate(2.0, 120.0))
        tickets = rng.choices([0, 1, 2, 3], [0.7, 0.2, 0.07, 0.03])[0]
        score = 1.0 - 0.25 * views - 0.003 * seconds + 0.8 * tickets + (1.0 if plan == "free" else -0.7)
        churned = score + rng.gauss(0, 0.5) > -0.6
        event: dict[str, Any] = {
            "user_id": f"u{rng.randrange(n // 4 + 1):05d}",
            "ts": start + i * 90_000,
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


def post_events(url: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    req = urllib.request.Request(
        url, data=json.dumps(events).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        results: list[dict[str, Any]] = json.loads(r.read())["results"]
        return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gyre demo", description=__doc__.splitlines()[0])
    p.add_argument("--namespace", "-n", default="demo")
    p.add_argument("--state-dir", type=Path, default=None, help="control plane state dir")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the system to settle")
    p.add_argument("--keep", action="store_true", help="leave the operator running after the demo")
    p.add_argument("--down", action="store_true", help="stop a kept demo and the control plane")
    p.add_argument("--events", type=int, default=6000, help="clickstream sessions to send")
    p.add_argument("--metrics-port", type=int, default=8080)
    p.add_argument("--health-port", type=int, default=8081)
    args = p.parse_args(argv)
    demo = Demo(args)
    if args.down:
        return demo.down()
    proc = demo.start()
    try:
        demo.run_stream()
        demo.apply_rest()
        demo.follow(proc)
        demo.report()
    finally:
        if not args.keep:
            say(
                "stopping the operator and its workloads (the control plane keeps running: gyre cluster down)"
            )
            demo.stop_operator()
    if args.keep:
        say(f"the operator keeps running (pid {proc.pid}); stop everything with: gyre demo --down")
    return 0
