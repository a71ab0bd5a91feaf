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
import signal
import subprocess
import sys
import time
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

    def apply_examples(self) -> None:
        ns = self.args.namespace
        self.kubectl("create", "namespace", ns, check=False)
        say(f"applying the example system into namespace {ns}")
        print(self.kubectl("apply", "-n", ns, "-f", str(repo_root() / "manifests/examples")).stdout)

    def settled(self) -> bool:
        items = self.objects()
        if len(items) < 5:
            return False
        for obj in items:
            st = obj.get("status") or {}
            if st.get("observedGeneration") != obj["metadata"]["generation"]:
                return False
            if st.get("phase") in ("Pending", "Running", "Starting"):
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
            line = "  ".join(
                f"{o['kind']}/{o['metadata']['name']}: {(o.get('status') or {}).get('phase', '-')}"
                for o in self.objects()
            )
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
        print(f"\nexport KUBECONFIG={self.plane.kubeconfig}; export PATH={self.plane.bin_dir}:$PATH")

    def down(self) -> int:
        self.stop_operator()
        self.plane.down()
        say("stopped the operator and the control plane")
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gyre demo", description=__doc__.splitlines()[0])
    p.add_argument("--namespace", "-n", default="demo")
    p.add_argument("--state-dir", type=Path, default=None, help="control plane state dir")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the system to settle")
    p.add_argument("--keep", action="store_true", help="leave the operator running after the demo")
    p.add_argument("--down", action="store_true", help="stop a kept demo and the control plane")
    p.add_argument("--metrics-port", type=int, default=8080)
    p.add_argument("--health-port", type=int, default=8081)
    args = p.parse_args(argv)
    demo = Demo(args)
    if args.down:
        return demo.down()
    proc = demo.start()
    try:
        demo.apply_examples()
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
