"""The `gyre` command: operator, local control plane, manifests, demo and benchmarks."""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = """usage: gyre <command> [options]

commands:
  operator            run the operator (--runtime local|kubernetes)
  cluster up|down|status
                      a real local control plane (etcd, kube-apiserver, controller-manager,
                      scheduler, kwok nodes) on loopback
  images [operator|runtime|runtime-stream|kafka] [--load]
                      build the images with podman from a local base (no registry, no
                      Docker) and load them into the local plane's real node
  manifests [--check] generate the CRDs from the API models
  demo                set up everything and run the example system on the embedded default
  experiment plot NAME [-n NAMESPACE] [-o DIR]
                      PNGs of an Experiment's search (Optuna's plots)
  bench operator|stream|train|bandit|serve|hpo|features
                      benchmarks; each prints one JSON object
"""


def _operator(argv: list[str]) -> int:
    from gyre.operator.main import main

    return main(argv)


def _cluster(argv: list[str]) -> int:
    from gyre.controlplane import cli

    verbs = {"up": cli.cli_up, "down": cli.cli_down, "status": cli.cli_status}
    if not argv or argv[0] not in verbs:
        print("usage: gyre cluster up|down|status [options]", file=sys.stderr)
        return 2
    return verbs[argv[0]](argv[1:])


def _images(argv: list[str]) -> int:
    from gyre.controlplane import cli

    return cli.cli_images(argv)


def _manifests(argv: list[str]) -> int:
    from gyre.manifests import main

    return main(argv)


def _demo(argv: list[str]) -> int:
    from gyre.demo import main

    return main(argv)


def _experiment(argv: list[str]) -> int:
    if not argv or argv[0] != "plot":
        print("usage: gyre experiment plot NAME [-n NAMESPACE] [-o DIR]", file=sys.stderr)
        return 2
    from gyre.operator.plot import main

    return main(argv[1:])


def _bench(argv: list[str]) -> int:
    if not argv or argv[0] not in ("operator", "stream", "train", "bandit", "serve", "hpo", "features"):
        print("usage: gyre bench operator|stream|train|bandit|serve|hpo|features [options]", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(f"gyre.bench.{argv[0]}")
    rc: int = module.main(argv[1:])
    return rc


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "operator": _operator,
    "cluster": _cluster,
    "images": _images,
    "manifests": _manifests,
    "demo": _demo,
    "experiment": _experiment,
    "bench": _bench,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"gyre: unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
