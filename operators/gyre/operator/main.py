"""`gyre operator`: one process that reconciles all five kinds.

Configures kopf (standalone, annotations for its bookkeeping, no framework events: Gyre
records its own, `gyre.operator.events`), serves
Prometheus metrics and a health endpoint, picks the runtime, and runs until stopped. On stop,
the runtime is closed: the local runtime's processes end with the operator.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import kopf
from prometheus_client import start_http_server

from gyre.api import GROUP, KINDS, VERSION
from gyre.builders.stream import KAFKA_IMAGE
from gyre.operator.handlers import register
from gyre.runtimes.base import Runtime
from gyre.runtimes.k8s_render import RenderSettings

log = logging.getLogger("gyre.operator")


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Settings shared by Gyre's operator and the framework-floor operator of the benchmark."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="gyre.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="gyre.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "gyre.dev/finalizer"
    # kopf's own events ("Handler ... succeeded") are noise; Gyre records what it did and what
    # went wrong itself (gyre.operator.events), on every reconcile path, rate-limited.
    settings.posting.enabled = False
    # One worker per object, unbounded: a cap makes objects beyond it wait for idle workers.
    settings.batching.worker_limit = None
    settings.batching.batch_window = 0.02
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.execution.max_workers = 8


class KubeWriter:
    """Writes outside kopf handlers: status merge patches (resync), deletions on request, Events."""

    def __init__(self) -> None:
        self._api: Any = None
        self._core: Any = None

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client

            self._api = client.CustomObjectsApi(kube_api_client())
        return self._api

    def _core_client(self) -> Any:
        if self._core is None:
            from kubernetes import client

            self._core = client.CoreV1Api(kube_api_client())
        return self._core

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        await asyncio.to_thread(self._core_client().create_namespaced_event, namespace, body)

    async def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            await asyncio.to_thread(self._core_client().patch_namespaced_event, name, namespace, patch)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        plural = KINDS[kind].INFO.plural
        await asyncio.to_thread(
            self._client().delete_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
        )

    async def write_status(self, kind: str, namespace: str, name: str, changes: dict[str, Any]) -> None:
        plural = KINDS[kind].INFO.plural
        await asyncio.to_thread(
            self._client().patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"status": changes},
        )


# Connections the operator's API client keeps open; the kubernetes runtime has as many
# requests in flight at once (the client's default, 5 per CPU, is 10 on two cores).
KUBE_CONNECTIONS = 32


def in_cluster_server(env: Mapping[str, str]) -> str | None:
    """The API server a pod reaches, from the ``KUBERNETES_SERVICE_HOST``/``PORT`` the kubelet
    (or the pod's own env) sets, as the Kubernetes client library reads it; kopf's
    service-account login would otherwise name ``kubernetes.default.svc``, which needs cluster
    DNS (a host-network pod without it, e.g. on a cluster without kube-proxy, cannot resolve it)."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def kube_api_client() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = KUBE_CONNECTIONS
    return client.ApiClient(configuration)


def make_runtime(name: str, state_dir: Path | None, namespaces: Sequence[str] = ()) -> Runtime:
    """``namespaces``: where the operator watches (all when empty), which the kubernetes
    runtime's own watches follow."""
    if name == "local":
        from gyre.runtimes.local import LocalRuntime

        return LocalRuntime(state_dir or default_state_dir())
    if name == "kubernetes":
        from gyre.runtimes.kubernetes import KubernetesRuntime

        return KubernetesRuntime(kube_api_client(), render_settings(os.environ), namespaces)
    raise SystemExit(f"unknown runtime {name!r}: use local or kubernetes")


def render_settings(env: Mapping[str, str]) -> RenderSettings:
    """What the Helm chart's values decide for workload pods, from the operator's environment."""
    repositories = {}
    if env.get("GYRE_KAFKA_IMAGE_REPOSITORY"):
        repositories[KAFKA_IMAGE] = env["GYRE_KAFKA_IMAGE_REPOSITORY"]
    return RenderSettings(
        runtime_image=env.get("GYRE_RUNTIME_IMAGE") or None,
        pull_policy=env.get("GYRE_RUNTIME_IMAGE_PULL_POLICY") or None,
        pull_secrets=tuple(s for s in env.get("GYRE_RUNTIME_IMAGE_PULL_SECRETS", "").split(",") if s),
        service_account=env.get("GYRE_RUNTIME_SERVICE_ACCOUNT") or None,
        repositories=repositories,
    )


def default_state_dir() -> Path:
    base = os.environ.get("GYRE_LOCAL_STATE") or os.path.expanduser("~/.local/share/gyre/local")
    return Path(base)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gyre operator", description=__doc__.splitlines()[0])
    p.add_argument(
        "--runtime", choices=["local", "kubernetes"], default=os.environ.get("GYRE_RUNTIME", "local")
    )
    p.add_argument("--namespace", "-n", action="append", default=[], help="watch only these (default: all)")
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("GYRE_METRICS_PORT", "8080")))
    p.add_argument("--health-port", type=int, default=int(os.environ.get("GYRE_HEALTH_PORT", "8081")))
    p.add_argument("--state-dir", type=Path, default=None, help="local runtime: logs and data")
    p.add_argument(
        "--log-format", choices=["text", "json"], default=os.environ.get("GYRE_LOG_FORMAT", "text")
    )
    p.add_argument("--resync-interval", type=float, default=60.0, help="seconds between periodic reconciles")
    p.add_argument("--verbose", "-v", action="store_true")
    return p.parse_args(argv)


async def run_operator(args: argparse.Namespace, stop: asyncio.Event | None = None) -> None:
    runtime = make_runtime(args.runtime, args.state_dir, args.namespace)
    registry = kopf.OperatorRegistry()
    # Child objects live in the API server whichever runtime runs the workloads.
    from gyre.operator.children import KubeChildren

    children = KubeChildren(kube_api_client(), namespaces=args.namespace)
    handlers = register(registry, runtime, KubeWriter(), children)

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = kopf.login_with_service_account(**kwargs)
        if info is None:
            return kopf.login_with_kubeconfig(**kwargs)
        server = in_cluster_server(os.environ)
        return dataclasses.replace(info, server=server) if server else info

    @kopf.on.startup(registry=registry)
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings)

    handlers.attach(asyncio.get_running_loop())
    resync = asyncio.create_task(handlers.resync_forever(args.resync_interval))
    if args.metrics_port:
        start_http_server(args.metrics_port, addr="0.0.0.0")
    stop_flag = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_flag.set)
    log.info(
        "Started the Gyre operator: runtime=%s namespaces=%s metrics=:%s health=:%s",
        args.runtime,
        ",".join(args.namespace) or "all",
        args.metrics_port,
        args.health_port,
    )
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
            stop_flag=stop_flag,
        )
    finally:
        resync.cancel()
        children.close()
        await runtime.close()
        log.info("Stopped the Gyre operator")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
        log_prefix=True,
    )
    asyncio.run(run_operator(args))
    return 0
