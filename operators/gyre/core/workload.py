"""The `Workload`: what a reconcile asks a runtime to run, independent of where it runs.

Builders turn a typed resource into a list of workloads; a runtime (``kubernetes`` or
``local``) makes them real and reports their state back as `WorkloadStatus`. Nothing here
does I/O.

Conventions shared by both runtimes:

* ``command`` starts with ``python`` for Gyre's own entrypoints (``python -m gyre.pipelines.X``);
  the local runtime substitutes the operator's interpreter, images put ``python`` on ``PATH``.
* ``command`` arguments may contain ``$(VAR)`` and are expanded from ``env`` (Kubernetes does
  this natively; the local runtime does the same).
* An env value is a plain string or a reference the runtime resolves: `EndpointRef` (the
  ``host:port`` of another workload's port, or this one's), `PeersRef` (the ``host:port`` of
  every replica of a workload, in index order: how quorum members find each other),
  `VolumePathRef` (where a volume is mounted), `ConfigDirRef` (the directory holding
  ``config_files``).
* ``secrets`` are Kubernetes Secret keys mounted as files under `SECRETS_DIR`; only the
  ``kubernetes`` runtime has Secrets (the ``local`` runtime fails such a workload, saying so).
* ``on_kubernetes`` lets a workload run a vendor image on Kubernetes (``apache/kafka`` for a
  broker) while the ``local`` runtime runs ``command``; both get the same env references.
* Every replica gets the same environment from both runtimes: ``GYRE_OWNER`` (the owner's
  name), ``GYRE_WORKLOAD``, ``GYRE_REPLICA_INDEX`` (0-based), ``GYRE_REPLICAS`` and
  ``GYRE_PORT_<NAME>`` for each declared port (`port_env`). Ports are declared once, here.
* ``status_port`` names the port on which the workload serves ``GET /status`` (the status
  contract, `gyre.pipelines._common.status`); controllers read it with `Runtime.read_status`.
* ``reloads_config``: the workload rereads its ``config_files`` when they change (a router's
  weights), so a change of their contents alone updates them where the workload runs instead
  of restarting it. Locally each file is replaced atomically in place; on Kubernetes the pods
  are not rolled and the kubelet refreshes the mounted ConfigMap (within its sync period, about
  a minute by default).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class WorkloadKind(enum.StrEnum):
    """How a workload runs: long-lived and stateless, long-lived with identity, or to completion."""

    SERVICE = "Service"  # Kubernetes: Deployment + Service
    STATEFUL = "Stateful"  # Kubernetes: StatefulSet + headless Service (+ PVCs)
    BATCH = "Batch"  # Kubernetes: (indexed) Job


class RestartPolicy(enum.StrEnum):
    ALWAYS = "Always"
    ON_FAILURE = "OnFailure"
    NEVER = "Never"


class WorkloadPhase(enum.StrEnum):
    PENDING = "Pending"  # not started, or not all replicas scheduled
    RUNNING = "Running"  # started, not (yet) ready
    READY = "Ready"  # every replica passes its readiness check
    SUCCEEDED = "Succeeded"  # batch: every replica exited 0
    FAILED = "Failed"  # batch: a replica failed past the restart budget
    MISSING = "Missing"  # the runtime has no such workload


@dataclass(frozen=True)
class Port:
    name: str
    port: int  # the container port on Kubernetes; the local runtime allocates a free loopback port
    protocol: str = "TCP"


def port_env(port_name: str) -> str:
    """The variable that holds a port's number in the workload's environment."""
    return "GYRE_PORT_" + "".join(
        c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in port_name.upper()
    )


@dataclass(frozen=True)
class Resources:
    cpu: str | None = None  # Kubernetes quantity, e.g. "500m"
    memory: str | None = None  # e.g. "1Gi"
    gpu: int = 0  # becomes nvidia.com/gpu on Kubernetes


@dataclass(frozen=True)
class Readiness:
    """A workload is ready when the port accepts TCP connections, or the HTTP path answers 2xx."""

    port: str  # a Port.name of this workload
    http_path: str | None = None
    initial_delay_s: float = 0.0
    period_s: float = 2.0


@dataclass(frozen=True)
class Volume:
    name: str
    mount_path: str
    size: str = "1Gi"  # persistent (a PVC per replica) for STATEFUL workloads, emptyDir otherwise


@dataclass(frozen=True)
class EndpointRef:
    """``host:port`` of a port of a workload of the same owner (``workload`` None: this one)."""

    port: str
    workload: str | None = None


@dataclass(frozen=True)
class PeersRef:
    """``host:port`` of ``port`` on every replica of a workload (None: this one), comma-separated
    in index order. Kubernetes: the pods' stable names behind the headless Service."""

    port: str
    workload: str | None = None


@dataclass(frozen=True)
class VolumePathRef:
    volume: str


@dataclass(frozen=True)
class ConfigDirRef:
    """The directory in which ``config_files`` are found, or one of its files (``file``)."""

    file: str | None = None


DEFAULT_IMAGE = "ghcr.io/gyre-ml/gyre-runtime:0.1.0"
"""The runtime image (``images/runtime``); an installation may replace it (Helm values)."""

EnvValue = str | EndpointRef | PeersRef | VolumePathRef | ConfigDirRef

SECRETS_DIR = "/etc/gyre/secrets"
"""Where `SecretFile`s are mounted: ``<SECRETS_DIR>/<name>/value``."""


@dataclass(frozen=True)
class SecretFile:
    """A key of a Kubernetes Secret (in the owner's namespace) as the file `path` names.

    The file sits in a directory of its own (no ``subPath``), so a changed Secret reaches a
    running pod.
    """

    name: str  # the directory under SECRETS_DIR; a DNS-1123 label
    secret: str
    key: str

    @property
    def path(self) -> str:
        return f"{SECRETS_DIR}/{self.name}/value"


@dataclass(frozen=True)
class KubernetesContainer:
    """How the workload's pods run on Kubernetes when not from the Gyre runtime image.

    ``command`` and ``env`` (added to the workload's own env) may use ``$(VAR)``. The container
    keeps a read-only root filesystem, so ``writable_paths`` become emptyDir mounts.
    """

    image: str
    command: tuple[str, ...]
    env: Mapping[str, EnvValue] = field(default_factory=dict)
    writable_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Autoscale:
    """Replicas that follow a metric between ``min_replicas`` and ``max_replicas``: the value
    per replica aimed at is ``target``. Kubernetes: an ``autoscaling/v2`` HorizontalPodAutoscaler
    on the workload's controller (the controller's replicas are then the autoscaler's); the
    local runtime runs ``Workload.replicas``."""

    min_replicas: int
    max_replicas: int
    target: float
    resource: str | None = None  # a resource's utilisation percent ("cpu"), or
    pods_metric: str | None = None  # a per-pod metric of the custom metrics API, averaged


@dataclass(frozen=True)
class Workload:
    name: str  # deterministic; unique within its owner; a DNS-1123 label
    role: str  # what it is for: "broker", "collector", "sink", "launcher", "worker", ...
    kind: WorkloadKind
    command: tuple[str, ...]
    image: str = DEFAULT_IMAGE
    replicas: int = 1
    env: Mapping[str, EnvValue] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()
    resources: Resources = field(default_factory=Resources)
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    readiness: Readiness | None = None
    volumes: tuple[Volume, ...] = ()
    config_files: Mapping[str, str] = field(default_factory=dict)
    backoff_limit: int = 6  # batch: restarts of a failing replica before the workload fails
    labels: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[SecretFile, ...] = ()
    on_kubernetes: KubernetesContainer | None = None
    status_port: str | None = None  # a Port.name: where GET /status is served
    reloads_config: bool = False  # config_files change in place, without a restart
    autoscale: Autoscale | None = None  # SERVICE only

    def port(self, name: str) -> Port:
        for p in self.ports:
            if p.name == name:
                return p
        raise KeyError(f"workload {self.name} has no port {name!r}")


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns a set of workloads."""

    kind: str
    namespace: str
    name: str
    uid: str
    api_version: str = "gyre.dev/v1alpha1"
    users: tuple[Owner, ...] = ()
    """A shared owner (``uid`` empty) is not an object: its workloads serve several objects,
    the ``users``, and live while any of them does (Kubernetes: an owner reference per user)."""

    @property
    def key(self) -> str:
        return f"{self.kind.lower()}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class WorkloadStatus:
    name: str
    phase: WorkloadPhase
    replicas: int = 0
    ready_replicas: int = 0
    succeeded: int = 0
    failed: int = 0
    restarts: int = 0
    message: str = ""
    exit_codes: tuple[int | None, ...] = ()
    # While it is pending: why its pods cannot start and will not by themselves soon
    # (unschedulable, an image that cannot be pulled, a container that cannot be created);
    # empty in any other phase and when nothing blocks them.
    stuck: str = ""
