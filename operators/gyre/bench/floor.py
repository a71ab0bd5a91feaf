"""The floors: kopf operators that write a first status and do (almost) nothing else.

Each runs with the same kopf settings as Gyre's operator and writes what the benchmark waits
for in Gyre's first status — ``observedGeneration`` and a ``Created`` condition — in the same
single patch kopf makes after a handler.

- The framework floor (default) does only that, so the benchmark's ``ratio`` measures all
  that Gyre adds on top of the framework: building, applying and observing the workloads,
  and the cluster's own work on them (Jobs creating pods, the scheduler binding them, the
  node running them, endpoints following them).
- The apply floor (``--apply``) first server-side applies the very objects Gyre renders for
  the TrainingJob (Gyre's builder, renderer and apply path, the same two tiers), with
  nothing else: no reconcile pass, cache, observation or events. Against it, the benchmark
  measures Gyre's own cost apart from that of the objects any operator creating them causes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from gyre.api import GROUP, VERSION
from gyre.operator.main import configure_kopf, kube_api_client


def _applier() -> Any:
    """``apply(body)``: the TrainingJob's objects, applied as Gyre's runtime applies them."""
    from gyre.api.trainingjob import TrainingJobSpec
    from gyre.builders.trainingjob import build_trainingjob
    from gyre.core.workload import Owner
    from gyre.runtimes import k8s_render as r
    from gyre.runtimes.kube_api import KubeApi
    from gyre.runtimes.kubernetes import _BY_KIND, CONTROLLERS

    kube = KubeApi(kube_api_client())
    pool = ThreadPoolExecutor(max_workers=32)

    async def apply(body: Mapping[str, Any]) -> None:
        md = body["metadata"]
        spec = TrainingJobSpec.model_validate(dict(body["spec"]))
        assert spec.dataset.path is not None, "the bench's TrainingJobs name a dataset path"
        owner = Owner(kind="TrainingJob", namespace=md["namespace"], name=md["name"], uid=md["uid"])
        workloads = build_trainingjob(spec, md["name"], md["generation"], spec.dataset.path)
        manifests = r.render(owner, workloads, owner.namespace, r.DEFAULT_SETTINGS)
        loop = asyncio.get_running_loop()
        for controllers in (False, True):  # what pods mount and reach first, as the runtime does
            tier = [m for m in manifests if (_BY_KIND[m["kind"]] in CONTROLLERS) is controllers]
            await asyncio.gather(
                *(
                    loop.run_in_executor(pool, functools.partial(kube.apply, _BY_KIND[m["kind"]], m))
                    for m in tier
                )
            )

    return apply


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gyre.bench.floor")
    p.add_argument("--namespace", "-n", required=True)
    p.add_argument("--plural", default="trainingjobs")
    p.add_argument("--health-port", type=int, default=0)
    p.add_argument("--apply", action="store_true", help="apply the objects Gyre renders first")
    args = p.parse_args(argv)
    registry = kopf.OperatorRegistry()
    apply = _applier() if args.apply else None

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings)

    @kopf.on.create(GROUP, VERSION, args.plural, registry=registry)
    async def _floor(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        if apply is not None:
            await apply(body)
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
