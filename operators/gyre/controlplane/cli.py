"""``gyre cluster up|down|status`` and ``gyre images``: the local control plane from the
command line.

Each function takes the arguments after the subcommand and returns the exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gyre.controlplane.images.podman import ImageBuildError, ensure_built, project_images
from gyre.controlplane.plane import (
    K8S_VERSION,
    ControlPlane,
    ControlPlaneError,
    default_state_dir,
)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"where the plane keeps its data, logs and pids (default: {default_state_dir()})",
    )
    return p


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[gyre cluster] %(message)s", stream=sys.stderr)


def cli_up(argv: Sequence[str] | None = None) -> int:
    p = _parser("gyre cluster up", "Start (or reuse) a local Kubernetes control plane.")
    p.add_argument("--port", type=int, default=None, help="kube-apiserver port (default: free)")
    p.add_argument("--kubeconfig", type=Path, default=None, help="where to write the kubeconfig")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p.add_argument(
        "--kubelet",
        action="store_true",
        help="also start containerd and a real kubelet as a node named after this host",
    )
    args = p.parse_args(argv)
    _setup_logging()
    plane = ControlPlane(
        args.state_dir, apiserver_port=args.port, kubeconfig=args.kubeconfig, kubelet=args.kubelet
    )
    try:
        plane.up(args.timeout)
    except ControlPlaneError as e:
        print(f"gyre cluster up: {e}", file=sys.stderr)
        print(f"logs: {plane.state_dir / 'logs'}", file=sys.stderr)
        return 1
    settings = plane.node_settings() if args.kubelet else None
    real = f" and the real node {settings.name}" if settings is not None else ""
    print(f"Kubernetes {K8S_VERSION} is up at {plane.server} ({len(plane.nodes)} kwok nodes{real}).")
    print("Use it with:")
    print(f"  export KUBECONFIG={plane.kubeconfig}")
    print(f"  export PATH={plane.bin_dir}:$PATH   # kubectl and helm of the same version")
    print("  kubectl get nodes")
    print(f"Stop it with: gyre cluster down --state-dir {plane.state_dir}")
    return 0


def cli_down(argv: Sequence[str] | None = None) -> int:
    p = _parser("gyre cluster down", "Stop the local control plane (its data is kept).")
    args = p.parse_args(argv)
    _setup_logging()
    plane = ControlPlane(args.state_dir)
    try:
        plane.down()
    except ControlPlaneError as e:
        print(f"gyre cluster down: {e}", file=sys.stderr)
        return 1
    print(f"Control plane in {plane.state_dir} is stopped.")
    return 0


def cli_status(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 when every component runs and the API server is ready, else 1."""
    p = _parser("gyre cluster status", "Show the local control plane's components.")
    args = p.parse_args(argv)
    st = ControlPlane(args.state_dir).status()
    print(f"state dir:  {st.state_dir}")
    print(f"kubeconfig: {st.kubeconfig}")
    print(f"server:     {st.server or '-'} ({'ready' if st.ready else 'not ready'})")
    for c in st.components:
        state = f"running (pid {c.pid})" if c.running else "stopped"
        print(f"  {c.name:<24} {state:<22} {c.log}")
    return 0 if st.running and st.ready else 1


def cli_images(argv: Sequence[str] | None = None) -> int:
    """Build (or reuse) the project's images; with ``--load``, import them into the running
    plane's real node."""
    from gyre.manifests import repo_root

    p = _parser("gyre images", "Build the operator and runtime images with podman (cached by their inputs).")
    p.add_argument(
        "names",
        nargs="*",
        metavar="operator|runtime|runtime-stream|kafka",
        help=(
            "which images (default: operator and runtime; runtime-stream has no torch or Horovod;"
            " kafka is a broker in apache/kafka's layout)"
        ),
    )
    p.add_argument("--load", action="store_true", help="import them into the plane's real node")
    args = p.parse_args(argv)
    _setup_logging()
    plane = ControlPlane(args.state_dir)
    if args.load and not plane.node_running():
        print(
            f"gyre images: no real node runs in {plane.state_dir} (gyre cluster up --kubelet)",
            file=sys.stderr,
        )
        return 1
    try:
        for image in project_images(repo_root(), args.names):
            built = ensure_built(image, repo_root())
            how = f"built in {built.seconds:.0f} s" if built.seconds else "unchanged"
            print(f"{image.name}: {built.archive} ({how})")
            if args.load:
                plane.load_image(built.archive)
                print(f"{image.name}: loaded into the real node")
    except (ImageBuildError, ControlPlaneError) as e:
        print(f"gyre images: {e}", file=sys.stderr)
        return 1
    return 0
