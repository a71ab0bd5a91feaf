"""Manifests rendered from workloads: the shape the kubernetes runtime applies."""

from __future__ import annotations

from typing import Any

import pytest
from gyre.core.workload import (
    Autoscale,
    ConfigDirRef,
    EndpointRef,
    KubernetesContainer,
    Owner,
    PeersRef,
    Port,
    Readiness,
    Resources,
    RestartPolicy,
    SecretFile,
    Volume,
    VolumePathRef,
    Workload,
    WorkloadKind,
)
from gyre.runtimes import k8s_render as r

OWNER = Owner(kind="Stream", namespace="ml", name="clicks", uid="1234-abcd")
NS = "ml"


def workload(**kw: Any) -> Workload:
    defaults: dict[str, Any] = {
        "name": "broker",
        "role": "broker",
        "kind": WorkloadKind.SERVICE,
        "command": ("python", "-m", "gyre.pipelines.x"),
    }
    return Workload(**{**defaults, **kw})


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, got {[m['kind'] for m in manifests]}"
    return found[0]


def container(m: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = m["spec"]["template"]["spec"]["containers"][0]
    return c


def env_of(m: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(m)["env"]}


@pytest.mark.parametrize(
    ("kind", "ports", "expected"),
    [
        (WorkloadKind.SERVICE, (), ["Deployment"]),
        (WorkloadKind.SERVICE, (Port("http", 8080),), ["Service", "Deployment"]),
        (WorkloadKind.STATEFUL, (), ["Service", "StatefulSet"]),
        (WorkloadKind.STATEFUL, (Port("kafka", 9092),), ["Service", "StatefulSet"]),
        (WorkloadKind.BATCH, (), ["Job"]),
        (WorkloadKind.BATCH, (Port("rdzv", 29500),), ["Service", "Job"]),
    ],
)
def test_each_kind_renders_its_objects(
    kind: WorkloadKind, ports: tuple[Port, ...], expected: list[str]
) -> None:
    manifests = r.render(OWNER, [workload(kind=kind, ports=ports)], NS)
    assert [m["kind"] for m in manifests] == expected


def test_config_files_render_a_config_map_first() -> None:
    w = workload(config_files={"server.properties": "a=1\n"}, ports=(Port("http", 80),))
    manifests = r.render(OWNER, [w], NS)
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Service", "Deployment"]
    cm = manifests[0]
    assert cm["metadata"]["name"] == "clicks-broker-config"
    assert cm["data"] == {"server.properties": "a=1\n"}


@pytest.mark.parametrize("kind", [WorkloadKind.SERVICE, WorkloadKind.STATEFUL, WorkloadKind.BATCH])
def test_every_object_has_labels_and_controller_owner_reference(kind: WorkloadKind) -> None:
    w = workload(kind=kind, role="collector", ports=(Port("http", 80),), config_files={"a": "b"})
    for m in r.render(OWNER, [w], NS):
        md = m["metadata"]
        assert md["namespace"] == NS
        assert md["name"].startswith("clicks-broker")
        assert md["labels"] == {
            "app.kubernetes.io/managed-by": "gyre",
            "gyre.dev/owner-kind": "Stream",
            "gyre.dev/owner-name": "clicks",
            "gyre.dev/workload": "broker",
            "gyre.dev/role": "collector",
        }
        assert md["ownerReferences"] == [
            {
                "apiVersion": "gyre.dev/v1alpha1",
                "kind": "Stream",
                "name": "clicks",
                "uid": "1234-abcd",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_owner_api_version_is_taken_from_the_owner() -> None:
    owner = Owner(kind="ConfigMap", namespace=NS, name="o", uid="u", api_version="v1")
    (m,) = r.render(owner, [workload()], NS)
    assert m["metadata"]["ownerReferences"][0]["apiVersion"] == "v1"
    assert m["metadata"]["ownerReferences"][0]["kind"] == "ConfigMap"


def test_pod_template_carries_selector_labels_and_extra_labels() -> None:
    w = workload(labels={"team": "ads"})
    dep = one(r.render(OWNER, [w], NS), "Deployment")
    selector = dep["spec"]["selector"]["matchLabels"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert "gyre.dev/role" not in selector  # the selector is immutable; role may change
    assert pod_labels["team"] == "ads"


def test_service_is_cluster_ip_for_services_and_headless_for_peers() -> None:
    svc = one(r.render(OWNER, [workload(ports=(Port("http", 8080),))], NS), "Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    for kind in (WorkloadKind.STATEFUL, WorkloadKind.BATCH):
        svc = one(r.render(OWNER, [workload(kind=kind, ports=(Port("p", 1),))], NS), "Service")
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["publishNotReadyAddresses"] is True


def test_stateful_set_has_claims_per_volume_and_its_service_name() -> None:
    w = workload(
        kind=WorkloadKind.STATEFUL,
        replicas=3,
        volumes=(Volume("data", "/var/lib/kafka", size="5Gi"),),
        env={"DATA_DIR": VolumePathRef("data")},
    )
    sts = one(r.render(OWNER, [w], NS), "StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["serviceName"] == "clicks-broker"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    pod = spec["template"]["spec"]
    assert {"name": "data", "mountPath": "/var/lib/kafka"} in container(sts)["volumeMounts"]
    assert all(v["name"] != "data" for v in pod["volumes"])  # provided by the claim
    assert env_of(sts)["DATA_DIR"] == "/var/lib/kafka"
    assert env_of(sts)["GYRE_REPLICA_INDEX"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }


def test_volumes_outside_stateful_sets_are_empty_dirs() -> None:
    w = workload(volumes=(Volume("scratch", "/scratch", size="2Gi"),))
    dep = one(r.render(OWNER, [w], NS), "Deployment")
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "2Gi"}} in dep["spec"]["template"]["spec"]["volumes"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RestartPolicy.ALWAYS, "OnFailure"),
        (RestartPolicy.ON_FAILURE, "OnFailure"),
        (RestartPolicy.NEVER, "Never"),
    ],
)
def test_job_is_indexed_with_restart_policy_a_job_accepts(policy: RestartPolicy, expected: str) -> None:
    w = workload(kind=WorkloadKind.BATCH, replicas=4, backoff_limit=2, restart_policy=policy)
    job = one(r.render(OWNER, [w], NS), "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    assert spec["backoffLimit"] == 2
    assert spec["template"]["spec"]["restartPolicy"] == expected
    assert env_of(job)["GYRE_REPLICA_INDEX"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert env_of(job)["GYRE_REPLICAS"] == "4"


def test_job_with_ports_gets_a_subdomain_for_peer_dns() -> None:
    w = workload(kind=WorkloadKind.BATCH, ports=(Port("rdzv", 29500),))
    job = one(r.render(OWNER, [w], NS), "Job")
    assert job["spec"]["template"]["spec"]["subdomain"] == "clicks-broker"
    no_ports = one(r.render(OWNER, [workload(kind=WorkloadKind.BATCH)], NS), "Job")
    assert "subdomain" not in no_ports["spec"]["template"]["spec"]


@pytest.mark.parametrize("policy", list(RestartPolicy))
def test_long_running_workloads_always_restart(policy: RestartPolicy) -> None:
    for kind, obj in ((WorkloadKind.SERVICE, "Deployment"), (WorkloadKind.STATEFUL, "StatefulSet")):
        m = one(r.render(OWNER, [workload(kind=kind, restart_policy=policy)], NS), obj)
        assert m["spec"]["template"]["spec"]["restartPolicy"] == "Always"


def test_env_references_are_resolved() -> None:
    broker = workload(kind=WorkloadKind.STATEFUL, ports=(Port("kafka", 9092),))
    sink = workload(
        name="sink",
        role="sink",
        ports=(Port("metrics", 9100),),
        volumes=(Volume("spool", "/spool"),),
        config_files={"sink.json": "{}"},
        env={
            "BOOTSTRAP": EndpointRef("kafka", workload="broker"),
            "SELF": EndpointRef("metrics"),
            "SPOOL": VolumePathRef("spool"),
            "CONFIG": ConfigDirRef(),
            "PLAIN": "x",
        },
    )
    dep = one(r.render(OWNER, [broker, sink], NS), "Deployment")
    env = env_of(dep)
    assert env["BOOTSTRAP"] == "clicks-broker.ml.svc:9092"
    assert env["SELF"] == "clicks-sink.ml.svc:9100"
    assert env["SPOOL"] == "/spool"
    assert env["CONFIG"] == r.CONFIG_DIR
    assert env["PLAIN"] == "x"
    assert env["GYRE_REPLICA_INDEX"] == "0"
    # The replica variables come first, so later values may refer to them with $(VAR).
    assert [e["name"] for e in container(dep)["env"]][:2] == ["GYRE_REPLICA_INDEX", "GYRE_REPLICAS"]


def test_pods_get_the_environment_the_local_runtime_gives() -> None:
    """Both runtimes give a workload its owner, name, replica index and count, and a
    GYRE_PORT_<NAME> per declared port (the local runtime: tests/runtimes)."""
    w = workload(kind=WorkloadKind.STATEFUL, replicas=3, ports=(Port("http", 8080), Port("raft-peer", 9093)))
    env = env_of(one(r.render(OWNER, [w], NS), "StatefulSet"))
    assert env["GYRE_OWNER"] == "clicks"
    assert env["GYRE_WORKLOAD"] == "broker"
    assert env["GYRE_REPLICAS"] == "3"
    assert env["GYRE_REPLICA_INDEX"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    assert (env["GYRE_PORT_HTTP"], env["GYRE_PORT_RAFT_PEER"]) == ("8080", "9093")


@pytest.mark.parametrize(
    ("pod", "index"),
    [
        ({"metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": "2"}}}, 2),
        ({"metadata": {"labels": {"apps.kubernetes.io/pod-index": "1"}}}, 1),
        ({"metadata": {"labels": {"app": "x"}}}, None),
    ],
)
def test_replica_index_of_a_pod(pod: dict[str, Any], index: int | None) -> None:
    assert r.replica_index(pod) == index


def test_explicit_env_overrides_replica_defaults_without_duplicates() -> None:
    dep = one(r.render(OWNER, [workload(env={"GYRE_REPLICAS": "9"})], NS), "Deployment")
    names = [e["name"] for e in container(dep)["env"]]
    assert names.count("GYRE_REPLICAS") == 1
    assert env_of(dep)["GYRE_REPLICAS"] == "9"


@pytest.mark.parametrize(
    "env",
    [{"X": EndpointRef("http", workload="nope")}, {"X": VolumePathRef("nope")}],
)
def test_dangling_references_are_errors(env: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="nope"):
        r.render(OWNER, [workload(ports=(Port("http", 80),), env=env)], NS)


def test_config_files_are_mounted_at_the_config_dir_with_a_rolling_hash() -> None:
    a = one(r.render(OWNER, [workload(config_files={"f": "1"})], NS), "Deployment")
    b = one(r.render(OWNER, [workload(config_files={"f": "2"})], NS), "Deployment")
    mount = {"name": "gyre-config", "mountPath": r.CONFIG_DIR, "readOnly": True}
    assert mount in container(a)["volumeMounts"]
    assert {
        "name": "gyre-config",
        "configMap": {"name": "clicks-broker-config"},
    } in a["spec"]["template"]["spec"]["volumes"]
    hash_a = a["spec"]["template"]["metadata"]["annotations"]["gyre.dev/config-hash"]
    hash_b = b["spec"]["template"]["metadata"]["annotations"]["gyre.dev/config-hash"]
    assert hash_a != hash_b


def test_config_of_a_workload_that_rereads_it_does_not_roll_its_pods() -> None:
    """The kubelet refreshes the mounted ConfigMap; a hash in the template would restart the pods."""
    a = one(r.render(OWNER, [workload(config_files={"f": "1"}, reloads_config=True)], NS), "Deployment")
    b = one(r.render(OWNER, [workload(config_files={"f": "2"}, reloads_config=True)], NS), "Deployment")
    assert a == b
    assert "annotations" not in a["spec"]["template"]["metadata"]
    mount = {"name": "gyre-config", "mountPath": r.CONFIG_DIR, "readOnly": True}
    assert mount in container(a)["volumeMounts"]


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (Resources(), {}),
        (Resources(cpu="500m"), {"requests": {"cpu": "500m"}}),
        (
            Resources(cpu="2", memory="4Gi"),
            {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
        ),
        (Resources(gpu=2), {"limits": {"nvidia.com/gpu": 2}}),
    ],
)
def test_resources(resources: Resources, expected: dict[str, Any]) -> None:
    dep = one(r.render(OWNER, [workload(resources=resources)], NS), "Deployment")
    assert container(dep)["resources"] == expected


@pytest.mark.parametrize(
    ("readiness", "handler"),
    [
        (Readiness(port="http"), {"tcpSocket": {"port": "http"}}),
        (
            Readiness(port="http", http_path="/healthz"),
            {"httpGet": {"path": "/healthz", "port": "http"}},
        ),
    ],
)
def test_readiness_probe(readiness: Readiness, handler: dict[str, Any]) -> None:
    w = workload(ports=(Port("http", 8080),), readiness=readiness)
    probe = container(one(r.render(OWNER, [w], NS), "Deployment"))["readinessProbe"]
    assert probe == {**handler, "initialDelaySeconds": 0, "periodSeconds": 2}


def test_pods_run_non_root_with_read_only_root_and_writable_tmp() -> None:
    dep = one(r.render(OWNER, [workload()], NS), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container(dep)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container(dep)["volumeMounts"]


def test_command_and_image_pass_through() -> None:
    w = workload(command=("python", "-m", "x", "--rank=$(GYRE_REPLICA_INDEX)"), image="img:1")
    c = container(one(r.render(OWNER, [w], NS), "Deployment"))
    assert c["command"] == ["python", "-m", "x", "--rank=$(GYRE_REPLICA_INDEX)"]
    assert c["image"] == "img:1"
    assert c["name"] == "main"


def test_long_names_are_cut_deterministically() -> None:
    owner = Owner(kind="Stream", namespace=NS, name="a" * 60, uid="u")
    name = r.child_name(owner, "broker")
    assert len(name) <= 52
    assert name == r.child_name(owner, "broker")
    assert name != r.child_name(owner, "broker2")


def test_duplicate_workload_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="not unique"):
        r.render(OWNER, [workload(), workload()], NS)


def test_render_is_deterministic() -> None:
    ws = [
        workload(ports=(Port("http", 80),), config_files={"b": "2", "a": "1"}),
        workload(name="w", kind=WorkloadKind.BATCH, replicas=2),
    ]
    assert r.render(OWNER, ws, NS) == r.render(OWNER, ws, NS)


def test_long_owner_names_still_make_valid_label_values() -> None:
    owner = Owner(kind="Stream", namespace=NS, name="n" * 200, uid="u")
    labels = r.owner_labels(owner)
    assert len(labels["gyre.dev/owner-name"]) <= 63
    other = Owner(kind="Stream", namespace=NS, name="n" * 199 + "m", uid="u")
    assert r.owner_labels(other)["gyre.dev/owner-name"] != labels["gyre.dev/owner-name"]


def test_peers_are_the_stateful_pods_behind_the_headless_service_in_index_order() -> None:
    nodes = workload(
        name="kafka",
        kind=WorkloadKind.STATEFUL,
        replicas=3,
        ports=(Port("kafka", 9092), Port("controller", 9093)),
        env={"PEERS": PeersRef("kafka"), "VOTERS": PeersRef("controller")},
    )
    client = workload(name="probe", env={"NODES": PeersRef("kafka", workload="kafka")})
    manifests = r.render(OWNER, [nodes, client], NS)
    env = env_of(one(manifests, "StatefulSet"))
    hosts = [f"clicks-kafka-{i}.clicks-kafka.ml.svc" for i in range(3)]
    assert env["PEERS"] == ",".join(f"{h}:9092" for h in hosts)
    assert env["VOTERS"] == ",".join(f"{h}:9093" for h in hosts)
    assert env_of(one(manifests, "Deployment"))["NODES"] == env["PEERS"]


def test_peers_of_a_deployment_are_an_error_since_its_pods_have_no_stable_names() -> None:
    web = workload(name="web", ports=(Port("http", 80),))
    with pytest.raises(ValueError, match="must be a Stateful or Batch workload"):
        r.render(OWNER, [web, workload(name="x", env={"P": PeersRef("http", workload="web")})], NS)


def test_secret_files_mount_one_key_in_a_directory_of_its_own() -> None:
    token = SecretFile(name="token", secret="api-token", key="bearer")
    dep = one(r.render(OWNER, [workload(secrets=(token,))], NS), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "secret-token")
    assert volume["secret"] == {"secretName": "api-token", "items": [{"key": "bearer", "path": "value"}]}
    mount = next(m for m in container(dep)["volumeMounts"] if m["name"] == "secret-token")
    # A directory mount (no subPath): a changed Secret reaches the running pod.
    assert mount == {"name": "secret-token", "mountPath": "/etc/gyre/secrets/token", "readOnly": True}
    assert token.path == "/etc/gyre/secrets/token/value"


def test_a_kubernetes_container_replaces_image_and_command_and_adds_env() -> None:
    w = workload(
        kind=WorkloadKind.STATEFUL,
        ports=(Port("kafka", 9092),),
        env={"SHARED": "a", "SELF": EndpointRef("kafka")},
        on_kubernetes=KubernetesContainer(
            image="apache/kafka:4.4.0",
            command=("/bin/sh", "-c", "exec run"),
            env={"EXTRA": "b", "SHARED": "override"},
            writable_paths=("/opt/kafka/logs",),
        ),
    )
    sts = one(r.render(OWNER, [w], NS), "StatefulSet")
    c = container(sts)
    assert (c["image"], c["command"]) == ("apache/kafka:4.4.0", ["/bin/sh", "-c", "exec run"])
    env = env_of(sts)
    assert (env["SHARED"], env["EXTRA"], env["SELF"]) == ("override", "b", "clicks-broker.ml.svc:9092")
    assert [e["name"] for e in c["env"]].count("SHARED") == 1
    assert {"name": "writable-0", "mountPath": "/opt/kafka/logs"} in c["volumeMounts"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_a_shared_owner_references_each_of_its_users_none_as_controller() -> None:
    users = (
        Owner(kind="Stream", namespace=NS, name="b", uid="uid-b"),
        Owner(kind="Stream", namespace=NS, name="a", uid="uid-a"),
    )
    shared = Owner(kind="KafkaCluster", namespace=NS, name="shared", uid="", users=users)
    for m in r.render(shared, [workload(kind=WorkloadKind.STATEFUL, config_files={"f": "x"})], NS):
        refs = m["metadata"]["ownerReferences"]
        assert [(ref["name"], ref["uid"], ref["controller"]) for ref in refs] == [
            ("a", "uid-a", False),
            ("b", "uid-b", False),
        ]
        assert m["metadata"]["labels"][r.LABEL_OWNER_KIND] == "KafkaCluster"


def test_installation_settings_pick_images_pull_options_and_service_account() -> None:
    settings = r.RenderSettings(
        runtime_image="registry.local/gyre-runtime:dev",
        pull_policy="Always",
        pull_secrets=("regcred",),
        service_account="workloads",
        repositories={"apache/kafka": "mirror.local/kafka"},
    )
    gyre = workload()
    kafka = workload(
        name="kafka",
        kind=WorkloadKind.STATEFUL,
        on_kubernetes=KubernetesContainer(image="apache/kafka:4.4.0", command=("run",)),
    )
    pinned = workload(name="pinned", image="example.org/tool:1")
    manifests = r.render(OWNER, [gyre, kafka, pinned], NS, settings)
    images = {
        m["metadata"]["name"]: container(m)["image"] for m in manifests if "template" in m.get("spec", {})
    }
    assert images == {
        "clicks-broker": "registry.local/gyre-runtime:dev",
        "clicks-kafka": "mirror.local/kafka:4.4.0",
        "clicks-pinned": "example.org/tool:1",  # a workload's own image is left alone
    }
    for m in manifests:
        if "template" in m.get("spec", {}):
            pod = m["spec"]["template"]["spec"]
            assert pod["serviceAccountName"] == "workloads"
            assert pod["imagePullSecrets"] == [{"name": "regcred"}]
            assert container(m)["imagePullPolicy"] == "Always"
    # Without settings: the images as written, the namespace's default account.
    plain = one(r.render(OWNER, [gyre], NS), "Deployment")
    assert container(plain)["image"] == gyre.image
    assert "serviceAccountName" not in plain["spec"]["template"]["spec"]


def test_the_operator_reads_the_charts_settings_from_its_environment() -> None:
    from gyre.operator.main import render_settings

    settings = render_settings(
        {
            "GYRE_RUNTIME_IMAGE": "r/runtime:t1",
            "GYRE_RUNTIME_IMAGE_PULL_POLICY": "Always",
            "GYRE_RUNTIME_IMAGE_PULL_SECRETS": "regcred,other",
            "GYRE_RUNTIME_SERVICE_ACCOUNT": "",
            "GYRE_KAFKA_IMAGE_REPOSITORY": "mirror/kafka",
        }
    )
    assert settings == r.RenderSettings(
        runtime_image="r/runtime:t1",
        pull_policy="Always",
        pull_secrets=("regcred", "other"),
        service_account=None,
        repositories={"apache/kafka": "mirror/kafka"},
    )
    assert render_settings({}) == r.RenderSettings()


STARTED = {"name": "main", "containerID": "containerd://ab12", "state": {"running": {}}}


@pytest.mark.parametrize(
    ("status", "serving"),
    [
        # what a kubelet reports for a started container
        ({"phase": "Running", "containerStatuses": [STARTED]}, True),
        # what kwok's fake nodes report: Running, but no container was ever started
        ({"phase": "Running", "containerStatuses": [{"name": "main", "state": {"running": {}}}]}, False),
        ({"phase": "Pending", "containerStatuses": []}, False),
        ({"phase": "Running", "containerStatuses": [{**STARTED, "state": {"waiting": {}}}]}, False),
    ],
)  # fmt: skip
def test_status_is_read_only_from_pods_with_a_started_container(
    status: dict[str, Any], serving: bool
) -> None:
    from gyre.runtimes.kubernetes import _serving

    assert _serving({"metadata": {"name": "p"}, "status": status}) is serving


def test_requests_are_counted_as_the_api_server_names_them() -> None:
    from gyre.runtimes.kube_api import _resource_of

    apply = [("fieldManager", "gyre"), ("force", "true")]
    assert _resource_of("PATCH", "/apis/batch/v1/namespaces/ns/jobs/x", apply) == ("APPLY", "jobs")
    assert _resource_of("PATCH", "/apis/gyre.dev/v1alpha1/namespaces/ns/streams/s/status", []) == (
        "PATCH",
        "streams/status",
    )
    assert _resource_of("GET", "/api/v1/namespaces/ns/pods", [("labelSelector", "a=b")]) == ("LIST", "pods")
    assert _resource_of("GET", "/api/v1/pods", [("watch", "true")]) == ("WATCH", "pods")
    assert _resource_of("GET", "/api/v1/namespaces/ns/pods/p:8080/proxy/status", []) == ("GET", "pods/proxy")
    assert _resource_of("GET", "/apis/widgets.example.dev/v1", []) == ("GET", "(none)")  # discovery


@pytest.mark.parametrize(
    ("scale", "metric"),
    [
        (
            Autoscale(2, 5, 70, resource="cpu"),
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
            },
        ),
        (
            Autoscale(0, 4, 2.5, pods_metric="gyre_model_inflight_requests"),
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "gyre_model_inflight_requests"},
                    "target": {"type": "AverageValue", "averageValue": "2500m"},
                },
            },
        ),
    ],
)
def test_an_autoscaled_service_gets_an_autoscaler_that_owns_its_replicas(
    scale: Autoscale, metric: dict[str, Any]
) -> None:
    manifests = r.render(OWNER, [workload(replicas=3, autoscale=scale)], NS)
    assert [m["kind"] for m in manifests][-2:] == ["Deployment", "HorizontalPodAutoscaler"]
    deployment, hpa = one(manifests, "Deployment"), one(manifests, "HorizontalPodAutoscaler")
    assert "replicas" not in deployment["spec"], "an apply naming replicas would undo the autoscaler"
    assert hpa["metadata"]["name"] == deployment["metadata"]["name"]
    assert hpa["metadata"]["ownerReferences"] == deployment["metadata"]["ownerReferences"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        max(1, scale.min_replicas),
        5 if scale.resource else 4,
    )
    assert hpa["spec"]["metrics"] == [metric]
    fixed = one(r.render(OWNER, [workload(replicas=3)], NS), "Deployment")
    assert fixed["spec"]["replicas"] == 3
    assert by_kind(r.render(OWNER, [workload(replicas=3)], NS), "HorizontalPodAutoscaler") == []


def test_only_a_service_autoscales() -> None:
    batch = workload(kind=WorkloadKind.BATCH, autoscale=Autoscale(1, 3, 50, resource="cpu"))
    with pytest.raises(ValueError, match="cannot autoscale"):
        r.render(OWNER, [batch], NS)
