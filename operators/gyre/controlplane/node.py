"""The local plane's real node: containerd and a kubelet on this host, beside the kwok nodes.

Everything the node owns is private to the plane's state directory or named after it, so
that `clean_up` can remove exactly that and nothing of anyone else's: containerd's root,
state and socket, the kubelet's root and pod logs, a CNI bridge and network named
``gyre<hash>``, a /24 of its own, and a cgroup root ``/gyre-<hash>`` holding the
``kubepods`` tree (cgroupfs driver; this host's cgroups are v1). The builders here are pure;
the plane starts the two daemons with them and calls `clean_up` after stopping them.

The API server reaches the kubelet by the node's host name, which resolves to loopback
here, so the kubelet serves on 127.0.0.1 only. It accepts client certificates of the
plane's CA and nothing else (no anonymous access, no webhook: every holder of such a
certificate is one of the plane's own components or its admin).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gyre.controlplane.images import PAUSE_IMAGE
from gyre.controlplane.procs import Proc, processes

CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
CGROUP_FS = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
# Created by containerd 1.6 and the kubelet whatever their configured directories say.
HOST_DIRS = (
    Path("/run/containerd"),
    Path("/var/lib/kubelet"),
    Path("/var/lib/cni"),
    Path("/var/lib/containers"),
    Path("/var/log/containers"),
    Path("/var/log/pods"),
)
NODE_COMPONENTS = ("containerd", "kubelet", "coredns", "kube-proxy")
DNS_PORT = 53  # a pod's resolv.conf names a server, not a port
# The portmap plugin's chains, shared by every CNI network on the host (DNAT first).
PORTMAP_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")


@dataclass(frozen=True)
class NodeSettings:
    """What one plane's real node is called, where it keeps its files, what it listens on."""

    name: str  # the host name: the API server dials the kubelet by it
    ip: str  # the host's address, the node's InternalIP (the kubelet refuses loopback)
    root: str  # <state dir>/node
    network: str  # CNI network name; the bridge has the same name
    subnet: str  # the pods' /24
    cgroup_root: str
    kubelet_port: int
    healthz_port: int
    dns_health_port: int = 0  # CoreDNS's /health, on loopback
    proxy_healthz_port: int = 0  # kube-proxy's /healthz and /metrics, on loopback
    proxy_metrics_port: int = 0
    created_host_dirs: tuple[str, ...] = ()
    created_portmap_chains: bool = False  # portmap's shared chains did not exist before
    created_kube_chains: bool = False  # no kube-proxy chains (KUBE-*) existed before

    @property
    def containerd_socket(self) -> str:
        return f"{self.root}/containerd/containerd.sock"

    @property
    def bridge(self) -> str:
        return self.network

    def path(self, *parts: str) -> Path:
        return Path(self.root, *parts)

    def dump(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> NodeSettings | None:
        try:
            raw = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        raw["created_host_dirs"] = tuple(raw.get("created_host_dirs", ()))
        return cls(**raw)


def host_address() -> str:
    """The first global IPv4 address of this host (read from the interfaces; nothing is sent)."""
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "scope", "global"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for link in json.loads(out):
        for addr in link.get("addr_info", []):
            if addr.get("local"):
                return str(addr["local"])
    raise RuntimeError("this host has no global IPv4 address for the node")


def build_settings(
    state_dir: Path,
    kubelet_port: int,
    healthz_port: int,
    dns_health_port: int = 0,
    proxy_ports: tuple[int, int] = (0, 0),
) -> NodeSettings:
    """Names derived from the state directory, so two planes' nodes never share one."""
    tag = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
    return NodeSettings(
        name=socket.gethostname(),
        ip=host_address(),
        root=str(state_dir / "node"),
        network=f"gyre{tag}",
        subnet=f"10.245.{int(tag, 16) % 250}.0/24",
        cgroup_root=f"/gyre-{tag}",
        kubelet_port=kubelet_port,
        healthz_port=healthz_port,
        dns_health_port=dns_health_port,
        proxy_healthz_port=proxy_ports[0],
        proxy_metrics_port=proxy_ports[1],
        created_host_dirs=tuple(str(d) for d in (*HOST_DIRS, NETNS_DIR) if not d.exists()),
        created_portmap_chains=not any(
            ln.startswith(f":{PORTMAP_CHAINS[0]} ") for ln in _iptables_save("nat")
        ),
        created_kube_chains=not _kube_proxy_chains(),
    )


def build_containerd_config(s: NodeSettings) -> str:
    """containerd 1.6's config (version 2): private directories, runc on cgroupfs, CNI."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{s.path("containerd", "root")}"
state = "{s.path("containerd", "state")}"

[grpc]
  address = "{s.containerd_socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{s.path("containerd", "opt")}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which this host withholds.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{s.path("runc")}"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{s.path("cni", "net.d")}"
"""


def build_cni_config(s: NodeSettings) -> dict[str, Any]:
    """A bridge with its own /24 (host-local IPAM on a private data dir) and port mappings."""
    return {
        "cniVersion": "1.0.0",
        "name": s.network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": s.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(s.path("cni", "ipam")),
                    "ranges": [[{"subnet": s.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def build_kubelet_config(s: NodeSettings, *, ca: Path, cert: Path, key: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": s.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": s.healthz_port,
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{s.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": s.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "makeIPTablesUtilChains": False,
        "podLogsDir": str(s.path("pod-logs")),
        # Images are imported, not pulled: collecting one would lose it for good.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "maxPods": 30,
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": CLUSTER_DOMAIN,
        # The node's CoreDNS (`build_corefile`) on the host's address: pods resolve Services
        # and a StatefulSet's pods by name, as on any cluster.
        "clusterDNS": [s.ip],
    }


CLUSTER_DOMAIN = "cluster.local"


def build_corefile(s: NodeSettings, *, kubeconfig: Path) -> str:
    """The cluster DNS of the node's pods: Services, headless Services' pods and pod names
    of the plane (the kubernetes plugin watches the API server), every other name forwarded
    to this host's resolvers. It listens on the host's address only, where pods reach it
    through their bridge's gateway and host-network pods directly."""
    return f"""{CLUSTER_DOMAIN}:{DNS_PORT} in-addr.arpa:{DNS_PORT} ip6.arpa:{DNS_PORT} {{
    bind {s.ip}
    errors
    health 127.0.0.1:{s.dns_health_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    forward . /etc/resolv.conf
    cache 5
}}
.:{DNS_PORT} {{
    bind {s.ip}
    errors
    forward . /etc/resolv.conf
    cache 30
}}
"""


LOCAL_VOLUMES = 12  # the node's PersistentVolumes, one per claim (a Stream's broker has one)
LOCAL_VOLUME_CAPACITY = "100Gi"  # what a claim may ask for; the host's disk is what it gets


def local_volume_dirs(s: NodeSettings) -> list[Path]:
    """The directories behind the node's local PersistentVolumes, in volume order."""
    return [s.path("volumes", str(i)) for i in range(LOCAL_VOLUMES)]


def local_volume_manifests(s: NodeSettings, storage_class: str) -> list[dict[str, Any]]:
    """Local PersistentVolumes on the node, directories under its root, as a static local
    provisioner publishes them. The kubelet gives their files the pod's fsGroup (the pods run
    as a non-root user), which it does not for hostPath volumes."""
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{s.network}-local-{i}"},
            "spec": {
                "capacity": {"storage": LOCAL_VOLUME_CAPACITY},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": storage_class,
                "volumeMode": "Filesystem",
                "local": {"path": str(path)},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [s.name]}
                                ]
                            }
                        ]
                    }
                },
            },
        }
        for i, path in enumerate(local_volume_dirs(s))
    ]


def build_kube_proxy_config(s: NodeSettings, *, kubeconfig: Path) -> dict[str, Any]:
    """kube-proxy in iptables mode: Services' ClusterIPs route to their pods, from pods and
    from the host.

    Every packet to a ClusterIP is masqueraded (``masqueradeAll``): a pod's answer to another
    pod on the same bridge would otherwise skip the host's conntrack (bridged frames are not
    seen by iptables without br_netfilter, which this host cannot load). The settings that
    would write host sysctls this session may not write are off: conntrack sizes and timeouts
    (0: leave them as they are) and node ports on localhost (``route_localnet``).
    """
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": s.name,
        "mode": "iptables",
        "clusterCIDR": s.subnet,
        "healthzBindAddress": f"127.0.0.1:{s.proxy_healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{s.proxy_metrics_port}",
        "nodePortAddresses": [f"{s.ip}/32"],
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False, "minSyncPeriod": "1s"},
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def kube_proxy_args(s: NodeSettings, *, binary: Path, config: Path) -> list[str]:
    return [str(binary), f"--config={config}", "--v=1"]


def coredns_args(s: NodeSettings, *, binary: Path, corefile: Path) -> list[str]:
    return [str(binary), "-conf", str(corefile), "-quiet"]


def kubelet_args(s: NodeSettings, *, binary: Path, config: Path, kubeconfig: Path) -> list[str]:
    return [
        str(binary),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={s.path('kubelet')}",
        f"--hostname-override={s.name}",
        f"--node-ip={s.ip}",
        "--v=1",
    ]


def prepare(s: NodeSettings) -> None:
    """Directories and the cgroup root the kubelet expects to exist before it starts."""
    for d in ("containerd", "kubelet", "pod-logs", "runc", "cni/net.d", "cni/ipam"):
        s.path(d).mkdir(parents=True, exist_ok=True)
    for volume in local_volume_dirs(s):
        volume.mkdir(parents=True, exist_ok=True)
    for hierarchy in _cgroup_v1_hierarchies():
        root = hierarchy / s.cgroup_root.lstrip("/")
        root.mkdir(exist_ok=True)
        if (hierarchy / "cpuset.cpus").exists():
            # A new cpuset cgroup starts with no CPUs and no memory nodes: nothing could join.
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (root / f).read_text().strip():
                    (root / f).write_text((hierarchy / f).read_text())


# -- what the node leaves on the host, and removing it --------------------------------------------


@dataclass(frozen=True)
class Leftovers:
    """Everything of one node still on the host; empty after a clean `clean_up`."""

    processes: tuple[int, ...]
    mounts: tuple[str, ...]
    bridge: bool
    chains: tuple[tuple[str, str], ...]  # (table, chain)
    cgroups: tuple[str, ...]
    directories: tuple[str, ...]

    def empty(self) -> bool:
        return not (
            self.processes or self.mounts or self.bridge or self.chains or self.cgroups or self.directories
        )


def _cgroup_v1_hierarchies() -> list[Path]:
    """Mount points of the v1 hierarchies (controllers and named ones like name=systemd)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype == "cgroup":
            found.append(Path(fields[4]))
    return found


def _cgroup_hierarchies() -> list[Path]:
    """v1 hierarchies and the unified one (runc also places containers there in hybrid mode)."""
    unified = CGROUP_FS / "unified"
    return _cgroup_v1_hierarchies() + ([unified] if (unified / "cgroup.procs").exists() else [])


def _cgroup_dirs(s: NodeSettings) -> list[Path]:
    """The node's cgroup directories, deepest first."""
    dirs: list[Path] = []
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / s.cgroup_root.lstrip("/")
        if root.is_dir():
            dirs.extend(Path(p) for p, _, _ in os.walk(root))
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def _node_processes(s: NodeSettings) -> list[int]:
    """containerd, its shims, the kubelet (by their command lines) and every process in the
    node's cgroups (the containers)."""
    in_cgroups: set[int] = set()
    for d in _cgroup_dirs(s):
        with contextlib.suppress(OSError):
            in_cgroups.update(int(p) for p in (d / "cgroup.procs").read_text().split())

    def ours(p: Proc) -> bool:
        if p.pid in in_cgroups:
            return True
        args = p.cmdline()
        return any(s.root in a for a in args)

    return sorted(processes(ours))


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Octal escapes (\040 for a space) as the kernel writes them.
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]))
    return points


def _netns_in_use() -> set[int]:
    inodes = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                inodes.add(os.stat(f"/proc/{entry}/ns/net").st_ino)
    return inodes


def _node_mounts(s: NodeSettings) -> list[str]:
    """Mounts under the node's root, deepest first, and the pod network namespaces (CRI's
    ``cni-*``) that no process lives in any more: the node's, once its containers are gone."""
    points = _mount_points()
    mine = [m for m in points if m == s.root or m.startswith(s.root + "/")]
    if NETNS_DIR.is_dir():
        in_use = _netns_in_use()
        for ns in NETNS_DIR.glob("cni-*"):
            with contextlib.suppress(OSError):
                if ns.stat().st_ino not in in_use and str(ns) in points:
                    mine.append(str(ns))
    return sorted(set(mine), key=lambda m: m.count("/"), reverse=True)


def _iptables_save(table: str, tool: str = "iptables") -> list[str]:
    if shutil.which(f"{tool}-save") is None:
        return []
    out = subprocess.run([f"{tool}-save", "-t", table], capture_output=True, text=True, check=False).stdout
    return out.splitlines()


KUBE_CHAIN = re.compile(r" -j (KUBE-\S+)")


def _kube_proxy_chains() -> list[tuple[str, str, list[str], list[str]]]:
    """(tool, table, chains, jumps): kube-proxy's chains (``KUBE-*``) in each table of IPv4 and
    IPv6, and the rules of other chains that jump to them (kube-proxy writes both families
    where the host has IPv6)."""
    found = []
    for tool in ("iptables", "ip6tables"):
        for table in ("nat", "filter", "mangle"):
            lines = _iptables_save(table, tool)
            chains = sorted(ln[1:].split()[0] for ln in lines if ln.startswith(":KUBE-"))
            jumps = [
                ln
                for ln in lines
                if ln.startswith("-A ") and not ln.split()[1].startswith("KUBE-") and KUBE_CHAIN.search(ln)
            ]
            if chains or jumps:
                found.append((tool, table, chains, jumps))
    return found


def _node_chains(s: NodeSettings, *, host_wide: bool) -> list[tuple[str, str, list[str]]]:
    """(table, chain, rules that jump to it) for the node's CNI chains, in removal order.

    The bridge and portmap plugins name their per-pod chains by a hash, but comment each
    jump to them with the network's name, which is this node's own. With ``host_wide`` (no
    other kubelet or containerd on the host) also portmap's shared ``CNI-HOSTPORT-*`` chains,
    when this node created them and they now serve only it. The kubelet adds none of its own
    (``makeIPTablesUtilChains: false``).
    """
    found: list[tuple[str, str, list[str]]] = []
    marker = f'name: \\"{s.network}\\"'
    for table in ("nat", "filter", "mangle"):
        lines = _iptables_save(table)
        chains = {ln[1:].split()[0] for ln in lines if ln.startswith(":")}
        rules = [ln for ln in lines if ln.startswith("-A ")]
        targets: dict[str, list[str]] = {}
        for ln in rules:
            if marker in ln and " -j " in ln:
                target = ln.rsplit(" -j ", 1)[1].split()[0]
                if target.startswith("CNI-") and target not in PORTMAP_CHAINS:
                    targets.setdefault(target, []).append(ln)
        dnat = [ln for ln in rules if ln.startswith(f"-A {PORTMAP_CHAINS[0]} ")]
        only_ours = all(marker in ln for ln in dnat)
        shared = PORTMAP_CHAINS if host_wide and s.created_portmap_chains and only_ours else ()
        for chain in shared:
            if chain in chains:
                targets.setdefault(chain, []).extend(
                    ln for ln in rules if ln.endswith(f" -j {chain}") or f" -j {chain} " in ln
                )
        found.extend((table, chain, jumps) for chain, jumps in targets.items() if chain in chains)
    return found


def _other_kubelets(s: NodeSettings) -> bool:
    """Whether some other kubelet or containerd runs on this host (it shares the host's dirs)."""

    def other(p: Proc) -> bool:
        args = p.cmdline()
        return bool(args) and Path(args[0]).name in NODE_COMPONENTS and not any(s.root in a for a in args)

    return bool(processes(other))


def leftovers(s: NodeSettings) -> Leftovers:
    host_wide = not _other_kubelets(s)
    return Leftovers(
        processes=tuple(_node_processes(s)),
        mounts=tuple(_node_mounts(s)),
        bridge=Path(f"/sys/class/net/{s.bridge}").exists(),
        chains=(
            *((t, c) for t, c, _ in _node_chains(s, host_wide=host_wide)),
            *(
                (table if tool == "iptables" else f"{tool} {table}", c)
                for tool, table, chains, _ in (
                    _kube_proxy_chains() if host_wide and s.created_kube_chains else ()
                )
                for c in chains
            ),
        ),
        cgroups=tuple(str(d) for d in _cgroup_dirs(s)),
        directories=tuple(
            d
            for d in (s.root, *(s.created_host_dirs if host_wide else ()))
            if Path(d).exists() and not (d == str(NETNS_DIR) and any(NETNS_DIR.iterdir()))
        ),
    )


def _kill_all(pids: list[int], timeout: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)


def clean_up(s: NodeSettings, *, timeout: float = 10.0) -> Leftovers:
    """Remove what the stopped node left: its containers and shims, mounts, bridge, iptables
    chains, cgroups and directories. Returns what could not be removed (empty when all went).
    """
    _kill_all(_node_processes(s), timeout)
    for point in _node_mounts(s):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        if point.startswith(str(NETNS_DIR) + "/"):
            Path(point).unlink(missing_ok=True)
    if Path(f"/sys/class/net/{s.bridge}").exists():
        subprocess.run(["ip", "link", "del", s.bridge], capture_output=True, check=False)
    # The host's shared directories and chains only when no other kubelet may still use them.
    host_wide = not _other_kubelets(s)
    for table, chain, rules in _node_chains(s, host_wide=host_wide):
        for rule in rules:
            subprocess.run(
                ["iptables", "-t", table, "-D", *shlex.split(rule[3:])], capture_output=True, check=False
            )
        subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True, check=False)
        subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True, check=False)
    if host_wide and s.created_kube_chains:
        # All jumps into them first, then every rule of them, then the chains: they jump to
        # each other.
        found = _kube_proxy_chains()
        for tool, table, _, jumps in found:
            for rule in jumps:
                subprocess.run(
                    [tool, "-t", table, "-D", *shlex.split(rule[3:])], capture_output=True, check=False
                )
        for op in ("-F", "-X"):
            for tool, table, chains, _ in found:
                for chain in chains:
                    subprocess.run([tool, "-t", table, op, chain], capture_output=True, check=False)
    for cgroup in _cgroup_dirs(s):
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    shutil.rmtree(s.root, ignore_errors=True)
    if host_wide:
        for d in s.created_host_dirs:
            if d != str(NETNS_DIR):
                shutil.rmtree(d, ignore_errors=True)
    if str(NETNS_DIR) in s.created_host_dirs:
        # Only when empty: other runtimes' namespaces may be mounted there.
        with contextlib.suppress(OSError):
            NETNS_DIR.rmdir()
    return leftovers(s)


def describe(left: Leftovers) -> Iterator[str]:
    """One line per kind of leftover, for the error that `down` raises."""
    for field, value in asdict(left).items():
        if value:
            yield f"{field}: {value}"
