"""A real local Kubernetes control plane (etcd, kube-apiserver, controller manager,
scheduler, kwok fake nodes) for the embedded platform and the tests."""

from gyre.controlplane.cli import cli_down, cli_status, cli_up
from gyre.controlplane.plane import (
    DEFAULT_NODES,
    K8S_VERSION,
    ComponentExitedError,
    ControlPlane,
    ControlPlaneError,
    ControlPlaneStatus,
    FakeNode,
    default_state_dir,
    down,
    ensure_binaries,
    running_pids,
    status,
    up,
)

__all__ = [
    "DEFAULT_NODES",
    "K8S_VERSION",
    "ComponentExitedError",
    "ControlPlane",
    "ControlPlaneError",
    "ControlPlaneStatus",
    "FakeNode",
    "cli_down",
    "cli_status",
    "cli_up",
    "default_state_dir",
    "down",
    "ensure_binaries",
    "running_pids",
    "status",
    "up",
]
