"""A `Cluster` handle: what a test needs to reach a cluster (kubeconfig, kubectl, a client).

The ``cluster`` pytest fixture (``tests/controlplane/conftest.py``) yields one.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gyre.controlplane.plane import ControlPlane, default_bin_dir
from kubernetes import config as kube_config
from kubernetes.client import ApiClient


@dataclass
class Cluster:
    """What a test needs to reach a cluster."""

    kubeconfig: Path
    env: dict[str, str]  # for kubectl/helm subprocesses: KUBECONFIG, and PATH with our binaries
    plane: ControlPlane | None = None  # None for a cluster that was not started here

    @classmethod
    def from_plane(cls, plane: ControlPlane) -> Cluster:
        return cls(plane.kubeconfig, plane.env, plane)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path | str) -> Cluster:
        path = os.environ.get("PATH", "")
        if (default_bin_dir() / "kubectl").exists():
            path = f"{default_bin_dir()}{os.pathsep}{path}"
        resolved = Path(kubeconfig).expanduser().resolve()
        return cls(resolved, {**os.environ, "KUBECONFIG": str(resolved), "PATH": path})

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; with ``check``, a failure raises with its stderr."""
        proc = subprocess.run(
            ["kubectl", *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def get_json(self, *args: str) -> Any:
        """``kubectl get ARGS -o json``, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def api_client(self) -> ApiClient:
        """A client of the official library, authenticated as in the kubeconfig."""
        client: ApiClient = kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        return client
