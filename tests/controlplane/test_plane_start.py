"""A control plane whose start fails stops what it had started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gyre.controlplane import ComponentExitedError, ControlPlane, running_pids
from gyre.controlplane.plane import default_bin_dir

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]


def test_a_failed_start_leaves_no_component_running(tmp_path: Path) -> None:
    """Regression: a start whose kube-apiserver was taken for dead left etcd and kube-apiserver
    running. Here the real etcd starts and a kube-apiserver that exits at once fails the start."""
    real_etcd = Path(os.environ.get("GYRE_BIN_DIR") or default_bin_dir()) / "etcd"
    if not os.access(real_etcd, os.X_OK):
        pytest.skip(f"no etcd binary at {real_etcd} (run make setup)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "etcd").symlink_to(real_etcd)
    apiserver = bin_dir / "kube-apiserver"
    apiserver.write_text("#!/bin/sh\necho 'E0101 flag provided but not defined: --simulated'\nexit 1\n")
    apiserver.chmod(0o755)
    state = tmp_path / "plane"
    plane = ControlPlane(state, bin_dir=bin_dir, daemon=False)
    try:
        with pytest.raises(ComponentExitedError, match=r"kube-apiserver exited(.|\n)*--simulated"):
            plane.up(timeout=60)
        assert list(running_pids(state)) == []
        assert not plane.status().running
        assert plane.pid("etcd") is None
    finally:
        plane.down()
