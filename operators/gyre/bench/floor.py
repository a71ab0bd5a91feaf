"""The framework floor: a kopf operator that writes a first status and does nothing else.

It runs with the same kopf settings as Gyre's operator and writes what the benchmark waits
for in Gyre's first status — ``observedGeneration`` and a ``Created`` condition — in the same
single patch kopf makes after a handler, so the benchmark's ratio measures what Gyre adds on
top of the framework: building, applying and observing the workloads.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from typing import Any

import kopf

from gyre.api import GROUP, VERSION
from gyre.operator.main import configure_kopf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gyre.bench.floor")
    p.add_argument("--namespace", "-n", required=True)
    p.add_argument("--plural", default="trainingjobs")
    p.add_argument("--health-port", type=int, default=0)
    args = p.parse_args(argv)
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings)

    @kopf.on.create(GROUP, VERSION, args.plural, registry=registry)
    async def _noop(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        generation = body["metadata"]["generation"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch.status["observedGeneration"] = generation
        patch.status["conditions"] = [
            {
                "type": "Created",
                "status": "True",
                "reason": "Floor",
                "message": "",
                "observedGeneration": generation,
                "lastTransitionTime": now,
            }
        ]

    kopf.configure(verbose=False)
    liveness = f"http://127.0.0.1:{args.health_port}/healthz" if args.health_port else None
    asyncio.run(
        kopf.operator(
            registry=registry, standalone=True, namespaces=[args.namespace], liveness_endpoint=liveness
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
