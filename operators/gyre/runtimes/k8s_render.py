"""Render `Workload`s into Kubernetes manifests: pure functions, no I/O, no client.

One owner's workloads become, per workload:

* SERVICE  -> Deployment, plus a ClusterIP Service when it has ports;
* STATEFUL -> StatefulSet with a headless Service (stable pod DNS) and one PVC per volume;
* BATCH    -> Indexed Job (completions = parallelism = replicas), plus a headless Service
  when it has ports so replicas find each other at ``<job>-<index>.<svc>``;
* ``config_files`` -> a ConfigMap mounted read-only at `CONFIG_DIR`.

Every object carries the Gyre labels (`LABEL_*`) that the runtime prunes and deletes by,
and a controller owner reference to the owning custom resource, so deleting the owner
garbage-collects its children even when the operator is down.

Object names are ``<owner>-<workload>``: workload names are unique only within an owner.

`RenderSettings` carry what an installation decides rather than a resource: the runtime
image (a registry mirror, a locally built tag), its pull policy and secrets, the workload
pods' ServiceAccount, and repository overrides for vendor images (``apache/kafka``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gyre.core.workload import (
    DEFAULT_IMAGE,
    ConfigDirRef,
    EndpointRef,
    EnvValue,
    Owner,
    PeersRef,
    Readiness,
    VolumePathRef,
    Workload,
    port_env,
)
from gyre.runtimes.k8s_status import JOB_INDEX_ANNOTATION as JOB_INDEX_ANNOTATION
from gyre.runtimes.k8s_status import POD_INDEX_LABEL as POD_INDEX_LABEL
from gyre.runtimes.k8s_status import replica_index as replica_index
from gyre.runtimes.shapes import shape_of

Manifest = dict[str, Any]

CONFIG_DIR = "/etc/gyre/config"
"""Where ``config_files`` are mounted; what `ConfigDirRef` resolves to."""

TMP_DIR = "/tmp"  # a writable emptyDir: the root filesystem is read-only

FIELD_MANAGER = "gyre"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_OWNER_KIND = "gyre.dev/owner-kind"
LABEL_OWNER_NAME = "gyre.dev/owner-name"
LABEL_WORKLOAD = "gyre.dev/workload"
LABEL_ROLE = "gyre.dev/role"
MANAGED_BY = "gyre"

ANNOTATION_CONFIG_HASH = "gyre.dev/config-hash"
GPU_RESOURCE = "nvidia.com/gpu"

RUN_AS_USER = 1000  # the runtime image's non-root user

# A StatefulSet's pods carry a ``controller-revision-hash`` label ``<name>-<hash>`` that must
# fit in 63 characters, which leaves 52 for the StatefulSet's own name.
MAX_NAME = 52
MAX_LABEL = 63
CONTAINER_NAME = "main"


@dataclass(frozen=True)
class RenderSettings:
    runtime_image: str | None = None  # replaces the default runtime image (`DEFAULT_IMAGE`)
    pull_policy: str | None = None  # IfNotPresent, Always, Never
    pull_secrets: tuple[str, ...] = ()
    service_account: str | None = None  # the namespace's default when None
    repositories: Mapping[str, str] = field(default_factory=dict)  # vendor repository → mirror


DEFAULT_SETTINGS = RenderSettings()


@dataclass(frozen=True)
class RenderContext:
    """What every object of one owner's render shares."""

    owner: Owner
    namespace: str
    peers: Mapping[str, Workload]  # the owner's workloads by name, for references between them
    settings: RenderSettings = DEFAULT_SETTINGS


def image_for(workload: Workload, settings: RenderSettings) -> str:
    """The image a workload's pods run, after the installation's overrides."""
    if workload.on_kubernetes is not None:
        image = workload.on_kubernetes.image
        repository, sep, tag = image.rpartition(":")
        if not sep or "/" in tag:  # no tag: "registry:5000/repo" has a colon in its host
            repository, tag = image, ""
        mirror = settings.repositories.get(repository)
        if mirror:
            return f"{mirror}:{tag}" if tag else mirror
        return image
    if workload.image == DEFAULT_IMAGE and settings.runtime_image:
        return settings.runtime_image
    return workload.image


def child_name(owner: Owner, workload: str) -> str:
    """The Kubernetes name of a workload's objects: ``<owner>-<workload>``, at most 52 chars.

    Longer names are cut and suffixed with a hash of the full name, so they stay unique
    and deterministic.
    """
    name = f"{owner.name}-{workload}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def config_map_name(owner: Owner, workload: str) -> str:
    return f"{child_name(owner, workload)}-config"


def label_value(value: str) -> str:
    """``value`` if it fits a label (63 chars), else a cut of it with a hash of the whole."""
    if len(value) <= MAX_LABEL:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{value[: MAX_LABEL - 9].rstrip('-._')}-{digest}"


def owner_labels(owner: Owner) -> dict[str, str]:
    """The labels every child of ``owner`` carries; a selector for all of them."""
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_OWNER_KIND: label_value(owner.kind),
        # Resource names may be 253 characters long, label values only 63.
        LABEL_OWNER_NAME: label_value(owner.name),
    }


def owner_selector(owner: Owner) -> str:
    """``owner_labels`` as a label selector string."""
    return ",".join(f"{k}={v}" for k, v in owner_labels(owner).items())


def selector_labels(owner: Owner, workload: Workload) -> dict[str, str]:
    """The immutable pod selector of a workload's controller (role is left out on purpose)."""
    return {**owner_labels(owner), LABEL_WORKLOAD: workload.name}


def workload_labels(owner: Owner, workload: Workload) -> dict[str, str]:
    return {**workload.labels, **selector_labels(owner, workload), LABEL_ROLE: workload.role}


def owner_reference(owner: Owner, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def owner_references(owner: Owner) -> list[dict[str, Any]]:
    """The owner itself, or each user of a shared owner: the garbage collector removes the
    children once the last of them is gone, and drops the references of those deleted before."""
    if owner.users:
        return [owner_reference(u, controller=False) for u in sorted(owner.users, key=lambda u: u.uid)]
    return [owner_reference(owner)]


def service_host(owner: Owner, workload: str, namespace: str) -> str:
    """The in-cluster DNS name of a workload's Service."""
    return f"{child_name(owner, workload)}.{namespace}.svc"


def endpoint(owner: Owner, workload: Workload, port: str, namespace: str) -> str:
    """``host:port`` of a workload's port through its Service."""
    return f"{service_host(owner, workload.name, namespace)}:{workload.port(port).port}"


def peer_addresses(owner: Owner, workload: Workload, port: str, namespace: str) -> str:
    """``host:port`` of every replica through the headless Service, in index order."""
    name = child_name(owner, workload.name)
    number = workload.port(port).port
    return ",".join(f"{name}-{i}.{name}.{namespace}.svc:{number}" for i in range(workload.replicas))


def render(
    owner: Owner,
    workloads: Sequence[Workload],
    namespace: str,
    settings: RenderSettings = DEFAULT_SETTINGS,
) -> list[Manifest]:
    """Every object the owner's workloads need, ConfigMaps and Services before controllers."""
    by_name = {w.name: w for w in workloads}
    if len(by_name) != len(workloads):
        raise ValueError(f"{owner.key}: workload names are not unique")
    ctx = RenderContext(owner, namespace, by_name, settings)
    config_maps: list[Manifest] = []
    services: list[Manifest] = []
    controllers: list[Manifest] = []
    autoscalers: list[Manifest] = []
    for w in workloads:
        if w.config_files:
            config_maps.append(build_config_map(owner, w, namespace))
        service = build_service(owner, w, namespace)
        if service is not None:
            services.append(service)
        controller = build_controller(ctx, w)
        controllers.append(controller)
        if w.autoscale is not None:
            autoscalers.append(build_autoscaler(ctx, w, controller))
    return config_maps + services + controllers + autoscalers


def _metadata(owner: Owner, workload: Workload, name: str, namespace: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": workload_labels(owner, workload),
        "ownerReferences": owner_references(owner),
    }


def object_metadata(ctx: RenderContext, workload: Workload, name: str) -> dict[str, Any]:
    """Name, namespace, the Gyre labels and the owner references of one rendered object."""
    return _metadata(ctx.owner, workload, name, ctx.namespace)


def build_config_map(owner: Owner, workload: Workload, namespace: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, workload, config_map_name(owner, workload.name), namespace),
        "data": dict(sorted(workload.config_files.items())),
    }


def build_service(owner: Owner, workload: Workload, namespace: str) -> Manifest | None:
    """ClusterIP for SERVICE; headless for STATEFUL (always) and BATCH (with ports).

    Headless Services publish not-ready addresses: peers (Kafka controllers, Horovod ranks)
    must resolve each other before any of them is ready.
    """
    shape = shape_of(workload)
    headless = shape.headless
    if not workload.ports and not shape.always_service:
        return None
    spec: dict[str, Any] = {
        "selector": selector_labels(owner, workload),
        "ports": [
            {"name": p.name, "port": p.port, "targetPort": p.name, "protocol": p.protocol}
            for p in workload.ports
        ],
    }
    if headless:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
    else:
        spec["type"] = "ClusterIP"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, workload, child_name(owner, workload.name), namespace),
        "spec": spec,
    }


def build_controller(ctx: RenderContext, workload: Workload) -> Manifest:
    """The object that runs the workload's pods, as its shape renders it."""
    return shape_of(workload).build_controller(ctx, workload, build_pod_template(ctx, workload))


def build_autoscaler(ctx: RenderContext, workload: Workload, controller: Manifest) -> Manifest:
    """The ``autoscaling/v2`` HorizontalPodAutoscaler of an autoscaled workload's controller.

    It needs a minimum of 1 (0 needs the HPAScaleToZero feature gate, off by default); a
    resource target is a utilisation percent of the pods' requests, a pods metric an average
    value per pod read from the custom metrics API (e.g. prometheus-adapter)."""
    scale = workload.autoscale
    assert scale is not None
    if not shape_of(workload).autoscales:
        raise ValueError(f"workload {workload.name}: a {workload.kind} workload cannot autoscale")
    if (scale.resource is None) == (scale.pods_metric is None):
        raise ValueError(f"workload {workload.name}: autoscale on exactly one of a resource or a pods metric")
    if scale.resource is not None:
        metric: dict[str, Any] = {
            "type": "Resource",
            "resource": {
                "name": scale.resource,
                "target": {"type": "Utilization", "averageUtilization": max(1, round(scale.target))},
            },
        }
    else:
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": scale.pods_metric},
                "target": {"type": "AverageValue", "averageValue": _quantity(scale.target)},
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_metadata(ctx, workload, controller["metadata"]["name"]),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": controller["apiVersion"],
                "kind": controller["kind"],
                "name": controller["metadata"]["name"],
            },
            "minReplicas": max(1, scale.min_replicas),
            "maxReplicas": max(1, scale.max_replicas, scale.min_replicas),
            "metrics": [metric],
        },
    }


def _quantity(value: float) -> str:
    """A Kubernetes quantity: whole numbers as they are, fractions in milli-units."""
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def build_pod_template(ctx: RenderContext, workload: Workload) -> Manifest:
    owner, settings = ctx.owner, ctx.settings
    shape = shape_of(workload)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": TMP_DIR}]
    for v in workload.volumes:
        if not shape.claims_volumes:  # else from the controller's claim templates
            volumes.append({"name": v.name, "emptyDir": {"sizeLimit": v.size}})
        mounts.append({"name": v.name, "mountPath": v.mount_path})
    for secret in workload.secrets:
        volume = f"secret-{secret.name}"
        volumes.append(
            {
                "name": volume,
                "secret": {"secretName": secret.secret, "items": [{"key": secret.key, "path": "value"}]},
            }
        )
        mounts.append({"name": volume, "mountPath": secret.path.rsplit("/", 1)[0], "readOnly": True})
    variant = workload.on_kubernetes
    if variant is not None:
        for i, path in enumerate(variant.writable_paths):
            volumes.append({"name": f"writable-{i}", "emptyDir": {}})
            mounts.append({"name": f"writable-{i}", "mountPath": path})
    annotations: dict[str, str] = {}
    if workload.config_files:
        volumes.append({"name": "gyre-config", "configMap": {"name": config_map_name(owner, workload.name)}})
        mounts.append({"name": "gyre-config", "mountPath": CONFIG_DIR, "readOnly": True})
        # ConfigMap changes do not restart pods by themselves; a changed hash rolls them,
        # unless the workload rereads its config (the kubelet refreshes the mounted files).
        if not workload.reloads_config:
            annotations[ANNOTATION_CONFIG_HASH] = config_hash(workload.config_files)

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image_for(workload, settings),
        "command": list(variant.command if variant else workload.command),
        "env": build_env(ctx, workload),
        "ports": [{"name": p.name, "containerPort": p.port, "protocol": p.protocol} for p in workload.ports],
        "resources": build_resources(workload),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if settings.pull_policy:
        container["imagePullPolicy"] = settings.pull_policy
    if workload.readiness is not None:
        container["readinessProbe"] = build_probe(workload.readiness)

    spec: dict[str, Any] = {
        "restartPolicy": shape.pod_restart_policy(workload),
        # Service links would flood the env with other Services' variables and could shadow
        # the $(VAR) names the command refers to.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if settings.pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in settings.pull_secrets]
    spec.update(shape.pod_spec(ctx, workload))
    metadata: dict[str, Any] = {"labels": workload_labels(owner, workload)}
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": spec}


def config_hash(files: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(sorted(files.items()))).encode()).hexdigest()[:16]


def build_resources(workload: Workload) -> dict[str, Any]:
    r = workload.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if r.cpu is not None:
        requests["cpu"] = r.cpu  # no CPU limit: throttling hurts more than it protects
    if r.memory is not None:
        requests["memory"] = r.memory
        limits["memory"] = r.memory
    if r.gpu:
        # Extended resources are set as limits; the request defaults to the same value.
        limits[GPU_RESOURCE] = r.gpu
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def build_probe(readiness: Readiness) -> dict[str, Any]:
    handler: dict[str, Any]
    if readiness.http_path is not None:
        handler = {"httpGet": {"path": readiness.http_path, "port": readiness.port}}
    else:
        handler = {"tcpSocket": {"port": readiness.port}}
    return {
        **handler,
        "initialDelaySeconds": math.ceil(readiness.initial_delay_s),
        "periodSeconds": max(1, math.ceil(readiness.period_s)),
    }


def resolve_env_value(ctx: RenderContext, workload: Workload, value: EnvValue) -> str:
    """The string an env reference stands for inside a pod of ``workload``."""
    owner, namespace, peers = ctx.owner, ctx.namespace, ctx.peers
    match value:
        case str():
            return value
        case EndpointRef(port=port, workload=target):
            other = workload if target is None else peers.get(target)
            if other is None:
                raise ValueError(
                    f"{owner.key}: workload {workload.name} refers to unknown workload {target!r}"
                )
            return endpoint(owner, other, port, namespace)
        case PeersRef(port=port, workload=target):
            other = workload if target is None else peers.get(target)
            if other is None or not shape_of(other).stable_pod_names:
                raise ValueError(
                    f"{owner.key}: workload {workload.name} needs the replicas of {target!r}, "
                    "which must be a Stateful or Batch workload of the same owner"
                )
            return peer_addresses(owner, other, port, namespace)
        case VolumePathRef(volume=volume):
            for v in workload.volumes:
                if v.name == volume:
                    return v.mount_path
            raise ValueError(f"{owner.key}: workload {workload.name} has no volume {volume!r}")
        case ConfigDirRef(file=str(name)):
            return f"{CONFIG_DIR}/{name}"
        case ConfigDirRef():
            return CONFIG_DIR
    raise TypeError(f"unsupported env value {value!r}")


def build_env(ctx: RenderContext, workload: Workload) -> list[dict[str, Any]]:
    own = dict(workload.env)
    if workload.on_kubernetes is not None:
        own.update(workload.on_kubernetes.env)
    # The index and count come first so that later values and the command may use $(VAR).
    # The same environment the local runtime gives (see `gyre.core.workload`).
    env: list[dict[str, Any]] = [
        entry
        for entry in (
            shape_of(workload).replica_index_env(workload),
            {"name": "GYRE_REPLICAS", "value": str(workload.replicas)},
            {"name": "GYRE_OWNER", "value": ctx.owner.name},
            {"name": "GYRE_WORKLOAD", "value": workload.name},
            *({"name": port_env(p.name), "value": str(p.port)} for p in workload.ports),
        )
        # Server-side apply keys env by name: a duplicate name is rejected, so an explicit
        # value replaces the default.
        if entry["name"] not in own
    ]
    for key, value in own.items():
        env.append({"name": key, "value": resolve_env_value(ctx, workload, value)})
    return env
