"""Specification tests for the Helm chart `charts/gyre`, in the style of helm-unittest.

Each test renders the chart with `helm template` under some values and asserts on the
manifests that come out. helm is found as `$GYRE_HELM`, in the control-plane binary cache
(`~/.cache/gyre/bin/*/helm`, built by `operators/gyre/controlplane/build-binaries.sh`) or on
`PATH`; the tests skip only when none of these has it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "gyre"
HELM_VERSION = "v3.19.0"
RELEASE = "gyre"
NAMESPACE = "gyre-system"
GYRE_KINDS = ("streams", "featurejobs", "experiments", "trainingjobs", "inferenceservices")
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"

Manifest = dict[str, Any]


def find_helm() -> str | None:
    """helm from $GYRE_HELM, the control-plane binary cache, or PATH (in that order)."""
    if explicit := os.environ.get("GYRE_HELM"):
        return explicit
    cache = Path(os.environ.get("GYRE_CACHE", Path.home() / ".cache" / "gyre")) / "bin"
    cached = sorted(cache.glob(f"*-helm-{HELM_VERSION}/helm")) + sorted(cache.glob("*/helm"))
    for candidate in cached:
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("helm")


HELM = find_helm()
pytestmark = pytest.mark.skipif(
    HELM is None,
    reason="helm not found: set GYRE_HELM, run operators/gyre/controlplane/build-binaries.sh, "
    "or put helm on PATH",
)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=False, timeout=60)


def render(
    values: dict[str, Any] | None = None,
    *,
    api_versions: Iterable[str] = (),
    release: str = RELEASE,
    include_crds: bool = False,
) -> list[Manifest]:
    """The chart's manifests under `values` (merged over values.yaml), as parsed objects."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as overrides:
        json.dump(values or {}, overrides)  # JSON is YAML
        overrides.flush()
        args = ["template", release, str(CHART), "--namespace", NAMESPACE, "-f", overrides.name]
        args += [f"--api-versions={api}" for api in api_versions]
        if include_crds:
            args.append("--include-crds")
        result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(values: dict[str, Any]) -> str:
    """helm's error message for values the chart must reject."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as overrides:
        json.dump(values, overrides)
        overrides.flush()
        result = helm("template", RELEASE, str(CHART), "-f", overrides.name)
    assert result.returncode != 0, f"helm accepted {values}"
    return result.stderr


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in of_kind(manifests, kind) if name is None or m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def operator_container(manifests: list[Manifest]) -> dict[str, Any]:
    deployment = one(manifests, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return dict(containers[0])


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def rules_of(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return [rule for role in of_kind(manifests, "ClusterRole") for rule in role["rules"]]


def grants(manifests: list[Manifest], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and verb in rule.get("verbs", [])
        for rule in rules_of(manifests)
    )


@pytest.fixture(scope="module")
def defaults() -> list[Manifest]:
    return render()


class TestChart:
    def test_should_pass_helm_lint_strict_with_defaults(self) -> None:
        result = helm("lint", "--strict", str(CHART))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "[WARNING]" not in result.stdout
        assert "[ERROR]" not in result.stdout

    def test_should_pass_helm_lint_strict_with_every_component_enabled(self) -> None:
        every = [
            "metrics.serviceMonitor.enabled=true",
            "integrations.spark.enabled=true",
            "integrations.kserve.enabled=true",
            "operator.watchNamespaces={team-a,team-b}",
        ]
        args = [arg for value in every for arg in ("--set", value)]
        result = helm("lint", "--strict", str(CHART), *args)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_should_label_every_object_with_the_standard_labels(self, defaults: list[Manifest]) -> None:
        for manifest in defaults:
            labels = manifest["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "gyre"
            assert labels["app.kubernetes.io/instance"] == RELEASE
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            assert labels["app.kubernetes.io/part-of"] == "gyre"
            assert labels["helm.sh/chart"].startswith("gyre-")

    def test_should_put_namespaced_objects_in_the_release_namespace(self, defaults: list[Manifest]) -> None:
        cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
        for manifest in defaults:
            if manifest["kind"] in cluster_scoped:
                assert "namespace" not in manifest["metadata"]
            else:
                assert manifest["metadata"]["namespace"] == NAMESPACE

    def test_should_add_common_labels_and_annotations_everywhere(self) -> None:
        manifests = render({"commonLabels": {"team": "ml"}, "commonAnnotations": {"owner": "ml-platform"}})
        for manifest in manifests:
            assert manifest["metadata"]["labels"]["team"] == "ml"
            assert manifest["metadata"]["annotations"]["owner"] == "ml-platform"

    def test_should_keep_names_within_63_characters_for_long_release_names(self) -> None:
        release = "a-release-name-as-long-as-helm-allows-53-characters-x"[:53]
        manifests = render(release=release)
        for manifest in manifests:
            assert len(manifest["metadata"]["name"]) <= 63
        roles = [m["metadata"]["name"] for m in of_kind(manifests, "ClusterRole")]
        assert len(set(roles)) == len(roles) == 2

    def test_should_not_repeat_the_chart_name_when_the_release_contains_it(self) -> None:
        deployment = one(render(release="gyre-prod"), "Deployment")
        assert deployment["metadata"]["name"] == "gyre-prod-operator"

    def test_should_honour_fullname_override(self) -> None:
        deployment = one(render({"fullnameOverride": "platform"}), "Deployment")
        assert deployment["metadata"]["name"] == "platform-operator"

    def test_should_ship_a_crd_for_each_kind(self) -> None:
        crds = of_kind(render(include_crds=True), "CustomResourceDefinition")
        assert sorted(crd["spec"]["names"]["plural"] for crd in crds) == sorted(GYRE_KINDS)
        for crd in crds:
            assert crd["spec"]["group"] == "gyre.dev"
            assert "gyre" in crd["spec"]["names"].get("categories", [])
            path = CHART / "crds" / f"gyre.dev_{crd['spec']['names']['plural']}.yaml"
            assert path.exists(), f"{path} missing"


class TestValuesSchema:
    @pytest.mark.parametrize(
        ("values", "complaint"),
        [
            ({"operator": {"replicaCount": 2}}, "replicaCount"),
            ({"operator": {"logFormat": "xml"}}, "logFormat"),
            ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "watchNamespaces"),
            ({"operator": {"podSecurityContext": {"runAsNonRoot": False}}}, "runAsNonRoot"),
            (
                {"operator": {"containerSecurityContext": {"allowPrivilegeEscalation": True}}},
                "allowPrivilegeEscalation",
            ),
            ({"operator": {"containerSecurityContext": {"privileged": True}}}, "privileged"),
            ({"operator": {"metrics": {"port": 70000}}}, "port"),
            ({"operator": {"image": {"digest": "latest"}}}, "digest"),
            ({"metrics": {"service": {"type": "Bogus"}}}, "type"),
            ({"integrations": {"kserve": {"enabled": "yes"}}}, "enabled"),
            ({"unknownComponent": {"enabled": True}}, "unknownComponent"),
        ],
    )
    def test_should_reject_invalid_values(self, values: dict[str, Any], complaint: str) -> None:
        assert complaint in render_error(values)


class TestOperatorDeployment:
    def test_should_run_the_kubernetes_runtime_across_all_namespaces_by_default(
        self, defaults: list[Manifest]
    ) -> None:
        container = operator_container(defaults)
        assert "command" not in container, "the image's entrypoint is `gyre operator`"
        assert container["args"] == [
            "--runtime",
            "kubernetes",
            "--metrics-port",
            "8080",
            "--health-port",
            "8081",
            "--log-format",
            "json",
        ]
        assert env_of(container)["GYRE_WATCH_NAMESPACES"] == ""

    def test_should_pass_one_namespace_flag_per_watched_namespace(self) -> None:
        container = operator_container(render({"operator": {"watchNamespaces": ["a", "b"]}}))
        assert container["args"][:6] == [
            "--runtime",
            "kubernetes",
            "--namespace",
            "a",
            "--namespace",
            "b",
        ]
        assert env_of(container)["GYRE_WATCH_NAMESPACES"] == "a,b"

    def test_should_log_verbosely_in_the_chosen_format_when_asked(self) -> None:
        container = operator_container(render({"operator": {"verbose": True, "logFormat": "text"}}))
        assert container["args"][-3:] == ["--log-format", "text", "--verbose"]

    def test_should_append_extra_args_and_env(self) -> None:
        container = operator_container(
            render(
                {
                    "operator": {
                        "extraArgs": ["--verbose"],
                        "extraEnv": [{"name": "EXTRA", "value": "1"}],
                    }
                }
            )
        )
        assert container["args"][-1] == "--verbose"
        assert env_of(container)["EXTRA"] == "1"

    def test_should_run_a_single_replica_with_recreate_rollouts(self, defaults: list[Manifest]) -> None:
        spec = one(defaults, "Deployment")["spec"]
        assert spec["replicas"] == 1
        assert spec["strategy"] == {"type": "Recreate"}

    def test_should_run_as_non_root_uid_65532_with_runtime_default_seccomp(
        self, defaults: list[Manifest]
    ) -> None:
        pod = one(defaults, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 65532
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = operator_container(defaults)["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 65532
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}

    def test_should_drop_all_capabilities_and_forbid_privilege_escalation(
        self, defaults: list[Manifest]
    ) -> None:
        security = operator_container(defaults)["securityContext"]
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["allowPrivilegeEscalation"] is False
        assert security["privileged"] is False

    def test_should_mount_a_read_only_root_with_an_empty_dir_at_tmp(self, defaults: list[Manifest]) -> None:
        pod = one(defaults, "Deployment")["spec"]["template"]["spec"]
        container = operator_container(defaults)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert volumes[mounts["/tmp"]]["emptyDir"]["sizeLimit"] == "64Mi"

    def test_should_probe_the_health_endpoint_for_liveness_and_readiness(
        self, defaults: list[Manifest]
    ) -> None:
        container = operator_container(defaults)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http-metrics": 8080, "http-health": 8081}
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http-health"}

    def test_should_follow_the_configured_ports(self) -> None:
        container = operator_container(
            render({"operator": {"metrics": {"port": 9090}, "health": {"port": 9091}}})
        )
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http-metrics": 9090, "http-health": 9091}
        args = container["args"]
        assert args[args.index("--metrics-port") + 1] == "9090"
        assert args[args.index("--health-port") + 1] == "9091"

    def test_should_omit_probes_when_disabled(self) -> None:
        container = operator_container(
            render(
                {
                    "operator": {
                        "livenessProbe": {"enabled": False},
                        "readinessProbe": {"enabled": False},
                    }
                }
            )
        )
        assert "livenessProbe" not in container
        assert "readinessProbe" not in container

    def test_should_set_resources(self, defaults: list[Manifest]) -> None:
        resources = operator_container(defaults)["resources"]
        assert resources["requests"] == {"cpu": "100m", "memory": "256Mi"}
        assert resources["limits"]["memory"] == "512Mi"

    def test_should_default_the_image_tag_to_the_app_version(self, defaults: list[Manifest]) -> None:
        app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        container = operator_container(defaults)
        assert container["image"] == f"ghcr.io/gyre-ml/gyre-operator:{app_version}"
        assert env_of(container)["GYRE_RUNTIME_IMAGE"] == (f"ghcr.io/gyre-ml/gyre-runtime:{app_version}")

    def test_should_prefer_the_digest_over_the_tag(self) -> None:
        digest = "sha256:" + "a" * 64
        image = {"repository": "registry.example/gyre", "tag": "1.2.3", "digest": digest}
        container = operator_container(render({"operator": {"image": image}}))
        assert container["image"] == f"registry.example/gyre@{digest}"

    def test_should_hand_the_runtime_settings_to_the_operator(self) -> None:
        env = env_of(
            operator_container(
                render(
                    {
                        "runtime": {
                            "image": {
                                "repository": "r/runtime",
                                "tag": "t1",
                                "pullPolicy": "Always",
                            },
                            "imagePullSecrets": ["regcred", "other"],
                            "serviceAccountName": "workloads",
                        }
                    }
                )
            )
        )
        assert env["GYRE_RUNTIME_IMAGE"] == "r/runtime:t1"
        assert env["GYRE_RUNTIME_IMAGE_PULL_POLICY"] == "Always"
        assert env["GYRE_RUNTIME_IMAGE_PULL_SECRETS"] == "regcred,other"
        assert env["GYRE_RUNTIME_SERVICE_ACCOUNT"] == "workloads"

    def test_should_tell_the_operator_which_integrations_are_enabled(self, defaults: list[Manifest]) -> None:
        env = env_of(operator_container(defaults))
        assert env["GYRE_KAFKA_ENABLED"] == "true"
        assert env["GYRE_KAFKA_IMAGE_REPOSITORY"] == "apache/kafka"
        assert env["GYRE_SPARK_ENABLED"] == "false"
        assert env["GYRE_KSERVE_ENABLED"] == "false"
        enabled = {"integrations": {"spark": {"enabled": True}, "kserve": {"enabled": True}}}
        env = env_of(operator_container(render(enabled)))
        assert (env["GYRE_SPARK_ENABLED"], env["GYRE_KSERVE_ENABLED"]) == ("true", "true")

    def test_should_run_as_the_charts_service_account(self, defaults: list[Manifest]) -> None:
        pod = one(defaults, "Deployment")["spec"]["template"]["spec"]
        account = one(defaults, "ServiceAccount")
        assert pod["serviceAccountName"] == account["metadata"]["name"] == "gyre-operator"

    def test_should_use_an_existing_service_account_when_not_creating_one(self) -> None:
        manifests = render({"serviceAccount": {"create": False, "name": "ops"}})
        assert not of_kind(manifests, "ServiceAccount")
        pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "ops"
        subjects = [s for b in of_kind(manifests, "ClusterRoleBinding") for s in b["subjects"]]
        assert {s["name"] for s in subjects} == {"ops"}

    def test_should_pass_scheduling_settings_through(self) -> None:
        toleration = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
        pod = one(
            render(
                {
                    "operator": {
                        "nodeSelector": {"pool": "system"},
                        "tolerations": [toleration],
                        "priorityClassName": "system-cluster-critical",
                        "imagePullSecrets": ["regcred"],
                    }
                }
            ),
            "Deployment",
        )["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"pool": "system"}
        assert pod["tolerations"] == [toleration]
        assert pod["priorityClassName"] == "system-cluster-critical"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]

    def test_should_render_only_the_dashboards_when_the_operator_is_disabled(self) -> None:
        kinds = {m["kind"] for m in render({"operator": {"enabled": False}})}
        assert kinds == {"ConfigMap"}


class TestRBAC:
    @pytest.mark.parametrize(
        "values",
        [
            {},
            {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
            {"integrations": {"spark": {"enabled": True}, "kserve": {"enabled": True}}},
        ],
        ids=["defaults", "watched-namespaces", "all-integrations"],
    )
    def test_should_grant_no_wildcard_verbs_resources_or_groups(self, values: dict[str, Any]) -> None:
        manifests = render(values)
        roles = of_kind(manifests, "ClusterRole") + of_kind(manifests, "Role")
        assert roles
        for role in roles:
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert not any("*" in item for item in rule.get(field, [])), (
                        f"{role['metadata']['name']} grants a wildcard in {field}: {rule}"
                    )
                assert "nonResourceURLs" not in rule
                assert rule["verbs"]
                assert rule["resources"]

    def test_should_grant_kopf_discovery_cluster_wide(self, defaults: list[Manifest]) -> None:
        for verb in ("get", "list", "watch"):
            assert grants(defaults, "apiextensions.k8s.io", "customresourcedefinitions", verb)
        for verb in ("list", "watch"):
            assert grants(defaults, "", "namespaces", verb)
        binding = one(defaults, "ClusterRoleBinding", "gyre-operator-cluster")
        assert binding["roleRef"]["name"] == "gyre-operator-cluster"

    def test_should_let_the_operator_watch_and_patch_every_gyre_kind_and_its_status(
        self, defaults: list[Manifest]
    ) -> None:
        for plural in GYRE_KINDS:
            for verb in ("get", "list", "watch", "patch"):
                assert grants(defaults, "gyre.dev", plural, verb), (plural, verb)
            assert grants(defaults, "gyre.dev", f"{plural}/status", "patch")
            assert grants(defaults, "gyre.dev", f"{plural}/finalizers", "update")

    def test_should_let_experiments_create_and_delete_trials_only(self, defaults: list[Manifest]) -> None:
        for plural in GYRE_KINDS:
            expected = plural == "trainingjobs"
            assert grants(defaults, "gyre.dev", plural, "create") is expected, plural
            assert grants(defaults, "gyre.dev", plural, "delete") is expected, plural

    @pytest.mark.parametrize(
        ("group", "resource"),
        [
            ("apps", "deployments"),
            ("apps", "statefulsets"),
            ("batch", "jobs"),
            ("autoscaling", "horizontalpodautoscalers"),
            ("", "services"),
            ("", "configmaps"),
        ],
    )
    def test_should_let_the_operator_apply_and_prune_workloads(
        self, defaults: list[Manifest], group: str, resource: str
    ) -> None:
        for verb in ("get", "list", "watch", "create", "patch", "delete"):
            assert grants(defaults, group, resource, verb), (resource, verb)

    def test_should_only_read_pods_and_secrets(self, defaults: list[Manifest]) -> None:
        for verb in ("create", "update", "patch", "delete"):
            assert not grants(defaults, "", "pods", verb)
            assert not grants(defaults, "", "secrets", verb)
        assert grants(defaults, "", "pods", "watch")
        assert grants(defaults, "", "secrets", "get")
        assert not grants(defaults, "", "secrets", "list"), "secrets are read by name only"
        assert not grants(defaults, "", "pods/exec", "create")

    def test_should_let_the_operator_post_events(self, defaults: list[Manifest]) -> None:
        assert grants(defaults, "", "events", "create")
        assert grants(defaults, "events.k8s.io", "events", "create")

    def test_should_grant_no_peering_resources_because_kopf_runs_standalone(
        self, defaults: list[Manifest]
    ) -> None:
        groups = {g for rule in rules_of(defaults) for g in rule["apiGroups"]}
        assert "kopf.dev" not in groups
        assert "zalando.org" not in groups

    def test_should_omit_kserve_and_spark_rules_by_default(self, defaults: list[Manifest]) -> None:
        groups = {g for rule in rules_of(defaults) for g in rule["apiGroups"]}
        assert "serving.kserve.io" not in groups
        assert "sparkoperator.k8s.io" not in groups

    def test_should_grant_kserve_inference_services_when_kserve_is_enabled(self) -> None:
        manifests = render({"integrations": {"kserve": {"enabled": True}}})
        for verb in ("get", "list", "watch", "create", "patch", "delete"):
            assert grants(manifests, "serving.kserve.io", "inferenceservices", verb)
        assert not grants(manifests, "sparkoperator.k8s.io", "sparkapplications", "get")

    def test_should_grant_spark_applications_when_spark_is_enabled(self) -> None:
        manifests = render({"integrations": {"spark": {"enabled": True}}})
        for resource in ("sparkapplications", "scheduledsparkapplications"):
            for verb in ("get", "list", "watch", "create", "patch", "delete"):
                assert grants(manifests, "sparkoperator.k8s.io", resource, verb)
        assert not grants(manifests, "serving.kserve.io", "inferenceservices", "get")

    def test_should_bind_the_workload_role_cluster_wide_when_watching_every_namespace(
        self, defaults: list[Manifest]
    ) -> None:
        binding = one(defaults, "ClusterRoleBinding", "gyre-operator")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "gyre-operator",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "gyre-operator", "namespace": NAMESPACE}
        ]
        assert not of_kind(defaults, "RoleBinding")

    def test_should_bind_the_workload_role_per_watched_namespace_only(self) -> None:
        manifests = render({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
        bindings = of_kind(manifests, "RoleBinding")
        assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
        for binding in bindings:
            assert binding["roleRef"]["name"] == "gyre-operator"
            assert binding["subjects"][0]["namespace"] == NAMESPACE
        cluster_bindings = {b["roleRef"]["name"] for b in of_kind(manifests, "ClusterRoleBinding")}
        assert cluster_bindings == {"gyre-operator-cluster"}

    def test_should_omit_rbac_when_rbac_create_is_false(self) -> None:
        kinds = {m["kind"] for m in render({"rbac": {"create": False}})}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
        assert "Deployment" in kinds


class TestMetrics:
    def test_should_expose_the_metrics_port_through_a_service(self, defaults: list[Manifest]) -> None:
        service = one(defaults, "Service", "gyre-operator-metrics")
        pod_labels = one(defaults, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"] == [
            {"name": "http-metrics", "port": 8080, "targetPort": "http-metrics", "protocol": "TCP"}
        ]

    def test_should_omit_the_metrics_service_when_disabled(self) -> None:
        assert not of_kind(render({"metrics": {"enabled": False}}), "Service")

    def test_should_omit_the_service_monitor_when_disabled(self) -> None:
        manifests = render(api_versions=[SERVICE_MONITOR_API])
        assert not of_kind(manifests, "ServiceMonitor")

    def test_should_omit_the_service_monitor_where_the_cluster_lacks_its_crd(self) -> None:
        manifests = render({"metrics": {"serviceMonitor": {"enabled": True}}})
        assert not of_kind(manifests, "ServiceMonitor")

    def test_should_scrape_the_metrics_service_when_the_service_monitor_is_enabled(self) -> None:
        manifests = render(
            {
                "metrics": {
                    "serviceMonitor": {
                        "enabled": True,
                        "labels": {"release": "prometheus"},
                        "interval": "15s",
                    }
                }
            },
            api_versions=[SERVICE_MONITOR_API],
        )
        monitor = one(manifests, "ServiceMonitor")
        service = one(manifests, "Service", "gyre-operator-metrics")
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= (service["metadata"]["labels"].items())
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        endpoint = monitor["spec"]["endpoints"][0]
        assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == (
            "http-metrics",
            "/metrics",
            "15s",
        )


class TestDashboards:
    def test_should_render_each_dashboard_as_a_configmap_for_the_grafana_sidecar(
        self, defaults: list[Manifest]
    ) -> None:
        sources = sorted(p.name for p in (CHART / "files" / "dashboards").glob("*.json"))
        assert sources
        configmaps = of_kind(defaults, "ConfigMap")
        assert sorted(key for cm in configmaps for key in cm["data"]) == sources
        for configmap in configmaps:
            assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
            for name, text in configmap["data"].items():
                assert json.loads(text) == json.loads((CHART / "files" / "dashboards" / name).read_text())

    def test_should_use_the_configured_sidecar_label_and_namespace(self) -> None:
        dashboards = {
            "label": "grafana_dashboard_gyre",
            "labelValue": "yes",
            "namespace": "monitoring",
            "annotations": {"grafana_folder": "Gyre"},
        }
        for configmap in of_kind(render({"grafana": {"dashboards": dashboards}}), "ConfigMap"):
            assert configmap["metadata"]["labels"]["grafana_dashboard_gyre"] == "yes"
            assert "grafana_dashboard" not in configmap["metadata"]["labels"]
            assert configmap["metadata"]["namespace"] == "monitoring"
            assert configmap["metadata"]["annotations"]["grafana_folder"] == "Gyre"

    def test_should_omit_the_dashboards_when_disabled(self) -> None:
        manifests = render({"grafana": {"dashboards": {"enabled": False}}})
        assert not of_kind(manifests, "ConfigMap")
