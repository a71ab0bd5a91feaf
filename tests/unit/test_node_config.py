"""The real node's builders: the OCI archive of a static image, containerd's, the CNI and the
kubelet's configuration (pure; the running node is tested in tests/controlplane)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tomllib
from pathlib import Path

from gyre.controlplane import node
from gyre.controlplane.images import PAUSE_IMAGE, build_oci_archive

SETTINGS = node.NodeSettings(
    name="host-a",
    ip="192.0.2.10",
    root="/state/node",
    network="gyre0123abcd",
    subnet="10.245.7.0/24",
    cgroup_root="/gyre-0123abcd",
    kubelet_port=40001,
    healthz_port=40002,
    proxy_healthz_port=40003,
    proxy_metrics_port=40004,
)


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_oci_archive_names_the_image_and_holds_every_blob_it_refers_to() -> None:
    archive = build_oci_archive("gyre.local/x:1", "x", b"\x7fELF binary")
    files = _members(archive)
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "gyre.local/x:1"
    manifest = json.loads(files[f"blobs/sha256/{entry['digest'].split(':')[1]}"])
    for desc in (manifest["config"], *manifest["layers"]):
        blob = files[f"blobs/sha256/{desc['digest'].split(':')[1]}"]
        assert (len(blob), f"sha256:{hashlib.sha256(blob).hexdigest()}") == (desc["size"], desc["digest"])
    layer = _members(files[f"blobs/sha256/{manifest['layers'][0]['digest'].split(':')[1]}"])
    assert layer == {"x": b"\x7fELF binary"}
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"])
    assert config["config"]["Entrypoint"] == ["/x"]
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    # Deterministic: the same binary gives the same archive, so the cache key holds.
    assert build_oci_archive("gyre.local/x:1", "x", b"\x7fELF binary") == archive


def test_containerd_keeps_everything_under_the_node_root_and_restricts_oom_score() -> None:
    cfg = tomllib.loads(node.build_containerd_config(SETTINGS))
    assert (cfg["root"], cfg["state"]) == ("/state/node/containerd/root", "/state/node/containerd/state")
    assert cfg["grpc"]["address"] == SETTINGS.containerd_socket
    cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == PAUSE_IMAGE
    assert cri["restrict_oom_score_adj"] is True
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": "/state/node/cni/net.d"}
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False


def test_cni_bridge_is_named_after_the_node_with_private_ipam() -> None:
    bridge, portmap = node.build_cni_config(SETTINGS)["plugins"]
    assert bridge["bridge"] == SETTINGS.network
    assert bridge["ipam"]["dataDir"] == "/state/node/cni/ipam"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.245.7.0/24"}]]
    assert portmap["type"] == "portmap"


def test_kubelet_serves_loopback_to_the_plane_ca_only() -> None:
    cfg = node.build_kubelet_config(SETTINGS, ca=Path("/ca"), cert=Path("/c"), key=Path("/k"))
    assert (cfg["address"], cfg["readOnlyPort"]) == ("127.0.0.1", 0)
    assert cfg["authentication"]["anonymous"] == {"enabled": False}
    assert cfg["authentication"]["x509"] == {"clientCAFile": "/ca"}
    assert (cfg["cgroupDriver"], cfg["cgroupRoot"]) == ("cgroupfs", "/gyre-0123abcd")
    assert cfg["imageGCHighThresholdPercent"] == 100


def test_pods_resolve_through_the_nodes_coredns_on_the_host_address() -> None:
    cfg = node.build_kubelet_config(SETTINGS, ca=Path("/ca"), cert=Path("/c"), key=Path("/k"))
    assert (cfg["clusterDNS"], cfg["clusterDomain"]) == (["192.0.2.10"], "cluster.local")
    corefile = node.build_corefile(SETTINGS, kubeconfig=Path("/state/kubeconfig"))
    cluster_block, rest_block = corefile.split("\n.:53 {")
    assert cluster_block.startswith("cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {")
    for block in (cluster_block, rest_block):
        assert "bind 192.0.2.10\n" in block  # never loopback or every address: only the node's
        assert "forward . /etc/resolv.conf" in block
    assert "kubeconfig /state/kubeconfig\n" in cluster_block
    assert "kubernetes" not in rest_block


def test_local_volumes_are_directories_of_the_node_bound_to_it() -> None:
    pvs = node.local_volume_manifests(SETTINGS, "standard")
    assert len(pvs) == node.LOCAL_VOLUMES
    assert len({pv["spec"]["local"]["path"] for pv in pvs}) == len(pvs)
    for pv in pvs:
        spec = pv["spec"]
        assert spec["local"]["path"].startswith("/state/node/volumes/")
        assert (spec["storageClassName"], spec["persistentVolumeReclaimPolicy"]) == ("standard", "Retain")
        (term,) = spec["nodeAffinity"]["required"]["nodeSelectorTerms"]
        assert term["matchExpressions"] == [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["host-a"]}
        ]


def test_kube_proxy_routes_cluster_ips_without_touching_host_sysctls() -> None:
    cfg = node.build_kube_proxy_config(SETTINGS, kubeconfig=Path("/state/kubeconfigs/kube-proxy.kubeconfig"))
    assert cfg["kind"] == "KubeProxyConfiguration"
    assert cfg["mode"] == "iptables"
    assert cfg["hostnameOverride"] == "host-a"
    assert cfg["clusterCIDR"] == SETTINGS.subnet
    assert cfg["clientConnection"]["kubeconfig"] == "/state/kubeconfigs/kube-proxy.kubeconfig"
    # Pod to pod through a ClusterIP on one bridge answers through the host only when masqueraded.
    assert cfg["iptables"]["masqueradeAll"] is True
    # No conntrack sysctl and no route_localnet: this session may not write them.
    assert cfg["conntrack"] == {
        "maxPerCore": 0,
        "min": 0,
        "tcpEstablishedTimeout": "0s",
        "tcpCloseWaitTimeout": "0s",
    }
    assert cfg["iptables"]["localhostNodePorts"] is False
    assert cfg["healthzBindAddress"] == "127.0.0.1:40003"
    assert cfg["metricsBindAddress"] == "127.0.0.1:40004"
    assert cfg["nodePortAddresses"] == ["192.0.2.10/32"]
