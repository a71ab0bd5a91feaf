"""Where the operator's service-account login sends its requests inside a pod."""

from __future__ import annotations

from gyre.operator.main import in_cluster_server


def test_the_pods_service_host_and_port_name_the_api_server() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert in_cluster_server(env) == "https://127.0.0.1:6443"


def test_an_ipv6_service_host_is_bracketed() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_server(env) == "https://[fd00::1]:443"


def test_without_them_kopfs_default_stays() -> None:
    assert in_cluster_server({}) is None
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) is None
