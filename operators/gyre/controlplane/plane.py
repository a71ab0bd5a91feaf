"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller manager,
scheduler and kwok (fake nodes that run pods through their lifecycle without containers),
and with ``kubelet=True`` a real node beside them: containerd and a kubelet on this host
(`gyre.controlplane.node`).

`ControlPlane.up` starts the components as daemons with logs and pid files in a state
directory, waits until the API server is ready, the nodes are Ready and the default
ServiceAccount exists, and writes an admin kubeconfig. Calling it again finds a plane that
is already running and reuses it; a stopped one restarts on its kept etcd data and
certificates in seconds. `ControlPlane.down` stops every component it started (SIGTERM,
then SIGKILL) and leaves no process behind.

State directory layout::

    pki/            CA, serving and client certificates, service-account keys
    kubeconfigs/    one kubeconfig per component
    etcd/           etcd data
    logs/<c>.log    each component's output
    run/<c>.pid     pid of each running component
    state.json      the ports in use
    kubeconfig      admin kubeconfig (system:masters)
    node.json       the real node's names and ports, while it exists
    node/           the real node's containerd, kubelet and CNI files
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import http.client
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import config as kube_config
from kubernetes.client import ApiClient

from gyre.controlplane import node as nodemod
from gyre.controlplane import pki as pkimod
from gyre.controlplane.images import PAUSE, ensure_image
from gyre.controlplane.procs import Proc, free_port, log_tail, processes

log = logging.getLogger("gyre.controlplane")

K8S_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.7.0"
HELM_VERSION = "v3.19.0"
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
    "helm",
)

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service: first address of SERVICE_CIDR
POD_CIDR = "10.244.0.1/16"  # kwok hands out pod IPs from here
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_STORAGE_CLASS = "standard"

# Start order; `down` stops in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
NODE_COMPONENTS = nodemod.NODE_COMPONENTS  # the real node's, started after the plane's
KUBELET_BINARY = "kubelet"
COREDNS_BINARY = "coredns"
KUBE_PROXY_BINARY = "kube-proxy"

T = TypeVar("T")


@dataclass(frozen=True)
class FakeNode:
    name: str
    cpu: str = "16"
    memory: str = "64Gi"
    gpus: int = 0
    pods: int = 110


DEFAULT_NODES = (
    FakeNode("kwok-node-0"),
    FakeNode("kwok-node-1"),
    FakeNode("kwok-node-2", gpus=8),
)


class ControlPlaneError(RuntimeError):
    pass


class ComponentExitedError(ControlPlaneError):
    """A component died while starting: not worth waiting for (`eventually` does not retry)."""


# -- locations --------------------------------------------------------------------------------


def cache_root() -> Path:
    return Path(os.environ.get("GYRE_CACHE", Path.home() / ".cache" / "gyre"))


def default_state_dir() -> Path:
    """``$GYRE_STATE_DIR``, else ``~/.cache/gyre/cluster``."""
    env = os.environ.get("GYRE_STATE_DIR")
    return Path(env) if env else cache_root() / "cluster"


def default_bin_dir() -> Path:
    return (
        cache_root()
        / "bin"
        / f"k8s-{K8S_VERSION}-etcd-{ETCD_VERSION}-kwok-{KWOK_VERSION}-helm-{HELM_VERSION}"
    )


def build_script() -> Path:
    return Path(__file__).with_name("build-binaries.sh")


def ensure_binaries(extra: Sequence[str] = ()) -> Path:
    """The directory holding the binaries: ``$GYRE_BIN_DIR``, or the cache, built if missing.

    ``extra`` names binaries wanted beyond the plane's own (the kubelet for a real node). The
    first build compiles Kubernetes from the Go module proxy (tens of minutes on two cores);
    later calls find the cache and return at once.
    """
    override = os.environ.get("GYRE_BIN_DIR")
    bin_dir = Path(override) if override else default_bin_dir()
    wanted = (*BINARIES, *extra)
    if all(os.access(bin_dir / b, os.X_OK) for b in wanted):
        return bin_dir
    if override:
        raise ControlPlaneError(f"GYRE_BIN_DIR={override} lacks some of {', '.join(wanted)}")
    log.info("Building control plane binaries into %s (first time only)", bin_dir)
    env = {
        **os.environ,
        "GYRE_K8S_VERSION": K8S_VERSION,
        "GYRE_ETCD_VERSION": ETCD_VERSION,
        "GYRE_KWOK_VERSION": KWOK_VERSION,
        "GYRE_HELM_VERSION": HELM_VERSION,
        "GYRE_CACHE": str(cache_root()),
    }
    out = subprocess.run(
        ["bash", str(build_script())], env=env, check=True, stdout=subprocess.PIPE, text=True
    )
    built = Path(out.stdout.strip().splitlines()[-1])
    if built != bin_dir:
        raise ControlPlaneError(f"build-binaries.sh built into {built}, expected {bin_dir}")
    return bin_dir


# -- processes --------------------------------------------------------------------------------

# Children started by this interpreter, so that `down` can reap them (no zombies left in /proc).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: take SIGTERM when the parent dies (test mode)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _proc_state(pid: int) -> str | None:
    """The one-letter state of a process from /proc, None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot), None when there is no such process.

    Fixed at fork and unique together with the pid, so it identifies a process from the moment
    `Popen` returns, unlike its command line, which is the parent's until the child's `exec`
    (and briefly empty while the kernel sets up the new image).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 22; the fields after the command name (which may hold spaces) start at field 3.
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class PidRecord:
    """What a pid file holds: the pid and the process's start time."""

    pid: int
    start_time: int | None  # None: a pid file written before start times were recorded

    @classmethod
    def of(cls, pid: int) -> PidRecord:
        return cls(pid, _start_time(pid))

    def dump(self) -> str:
        return f"{self.pid} {self.start_time}\n" if self.start_time is not None else f"{self.pid}\n"

    @classmethod
    def parse(cls, text: str) -> PidRecord | None:
        fields = text.split()
        try:
            if len(fields) == 1:
                return cls(int(fields[0]), None)
            if len(fields) == 2:
                return cls(int(fields[0]), int(fields[1]))
        except ValueError:
            pass
        return None


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pid: int) -> bool:
    _reap(pid)
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As Go's listeners do: a port whose old connections linger in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def eventually(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something other than None/False; fail at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result is not None and result is not False:
                return result
        except ComponentExitedError:
            raise
        except (OSError, ControlPlaneError, http.client.HTTPException) as e:
            last_error = e
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


# -- API access (stdlib only: the control plane does not need the client library) -------------


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class ApiServer:
    """Minimal HTTPS access to the API server with the admin client certificate."""

    def __init__(self, port: int, pki: pkimod.Pki) -> None:
        self.port = port
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(pki.client_cert(pkimod.ADMIN), pki.client_key(pkimod.ADMIN))
        self._ctx = ctx

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | Sequence[Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> Response:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self._ctx, timeout=timeout)
        try:
            headers = {"Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = content_type
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return Response(resp.status, resp.read())
        finally:
            conn.close()

    def create(self, path: str, body: Mapping[str, Any]) -> None:
        """POST ``body``; an object that already exists is left as it is."""
        resp = self.request("POST", path, body)
        if resp.status not in (200, 201, 409):
            raise ControlPlaneError(f"POST {path}: HTTP {resp.status}: {resp.body[:500]!r}")


# -- the control plane ------------------------------------------------------------------------


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    log: Path


@dataclass
class ControlPlaneStatus:
    state_dir: Path
    kubeconfig: Path
    server: str | None
    components: list[ComponentStatus] = field(default_factory=list)
    ready: bool = False  # /readyz answered ok

    @property
    def running(self) -> bool:
        return bool(self.components) and all(c.running for c in self.components)


class ControlPlane:
    """A local control plane rooted at ``state_dir``.

    ``daemon=True`` (the CLI) leaves the components running after this process exits;
    ``daemon=False`` (tests) also makes them die with this process if it is killed before
    `down` runs. ``kubelet=True`` adds the real node; `down` stops it whether or not this
    instance was asked for it.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        apiserver_port: int | None = None,
        kubeconfig: Path | str | None = None,
        nodes: Sequence[FakeNode] = DEFAULT_NODES,
        daemon: bool = True,
        bin_dir: Path | str | None = None,
        kubelet: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.state_dir = self.state_dir.expanduser().resolve()
        env_port = os.environ.get("GYRE_APISERVER_PORT")
        self.requested_port = apiserver_port or (int(env_port) if env_port else None)
        self.kubeconfig = (
            Path(kubeconfig).expanduser().resolve()
            if kubeconfig is not None
            else self.state_dir / "kubeconfig"
        )
        self.nodes = tuple(nodes)
        self.daemon = daemon
        self.kubelet = kubelet
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self.pki = pkimod.Pki(self.state_dir / "pki")

    # -- paths and state

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries()
        return self._bin_dir

    def _pid_file(self, component: str) -> Path:
        return self.state_dir / "run" / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    def _component_kubeconfig(self, who: pkimod.ClientIdentity) -> Path:
        return self.state_dir / "kubeconfigs" / f"{who.file_stem}.kubeconfig"

    @property
    def _node_file(self) -> Path:
        return self.state_dir / "node.json"

    def node_settings(self) -> nodemod.NodeSettings | None:
        """The real node's settings while it exists (started, or stopped but not cleaned up)."""
        return nodemod.NodeSettings.load(self._node_file)

    def _load_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return state

    def _save_state(self, state: Mapping[str, Any]) -> None:
        (self.state_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    @property
    def port(self) -> int | None:
        port = self._load_state().get("apiserver_port")
        return int(port) if port is not None else None

    @property
    def server(self) -> str | None:
        port = self.port
        return f"https://127.0.0.1:{port}" if port is not None else None

    @property
    def env(self) -> dict[str, str]:
        """Environment for kubectl/helm subprocesses: this plane's kubeconfig and binaries."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def pid(self, component: str) -> int | None:
        """The pid of a running component of this plane (checked against /proc), else None."""
        try:
            record = PidRecord.parse(self._pid_file(component).read_text())
        except FileNotFoundError:
            return None
        if record is None or not _alive(record.pid):
            return None
        # Guards against a recycled pid: the process must be the one that was started.
        if record.start_time is not None:
            return record.pid if _start_time(record.pid) == record.start_time else None
        # A pid file without a start time (an older plane, started before they were
        # recorded) is checked by its command line: our binary, for this state dir.
        args = Proc(record.pid).cmdline()
        if not args or Path(args[0]).name != component or not any(str(self.state_dir) in a for a in args):
            return None
        return record.pid

    def _record_pid(self, component: str, pid: int) -> None:
        self._pid_file(component).write_text(PidRecord.of(pid).dump())

    def api(self) -> ApiServer:
        port = self.port
        if port is None:
            raise ControlPlaneError(f"no control plane state in {self.state_dir}")
        return ApiServer(port, self.pki)

    def api_client(self) -> ApiClient:
        """A client of the official Kubernetes library for this plane, as its admin."""
        client: ApiClient = kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        return client

    def status(self) -> ControlPlaneStatus:
        st = ControlPlaneStatus(self.state_dir, self.kubeconfig, self.server)
        node = self.kubelet or self._node_file.exists()
        for c in (*COMPONENTS, *(NODE_COMPONENTS if node else ())):
            pid = self.pid(c)
            st.components.append(ComponentStatus(c, pid, pid is not None, self.log_file(c)))
        if self.port is not None and self.pid("kube-apiserver") is not None:
            with contextlib.suppress(OSError, http.client.HTTPException):
                st.ready = self.api().request("GET", "/readyz", timeout=3).status == 200
        return st

    def is_running(self) -> bool:
        """The plane's own components run and the API server is ready (the node aside)."""
        st = self.status()
        plane = [c for c in st.components if c.name in COMPONENTS]
        return all(c.running for c in plane) and st.ready

    def node_running(self) -> bool:
        return self._node_file.exists() and all(self.pid(c) is not None for c in NODE_COMPONENTS)

    def load_image(self, archive: Path) -> None:
        """Import an OCI or Docker archive into the real node's containerd (``k8s.io``)."""
        settings = self.node_settings()
        if settings is None:
            raise ControlPlaneError(f"no real node in {self.state_dir} (start it with kubelet=True)")
        out = subprocess.run(
            ["ctr", "-a", settings.containerd_socket, "-n", "k8s.io", "images", "import", str(archive)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise ControlPlaneError(f"ctr images import {archive}: {out.stderr.strip()}")
        log.info("Imported %s into the real node", archive.name)

    # -- up

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serializes `up` and `down` of one state dir across processes."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / ".lock").open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def up(self, timeout: float = 180.0) -> ControlPlane:
        """Start the plane (or find it running) and wait until pods can be scheduled."""
        with self._locked():
            return self._up(timeout)

    def _up(self, timeout: float) -> ControlPlane:
        t0 = time.monotonic()
        for d in ("run", "logs", "kubeconfigs"):
            (self.state_dir / d).mkdir(parents=True, exist_ok=True)
        # etcd wants its data private to its user.
        (self.state_dir / "etcd").mkdir(mode=0o700, exist_ok=True)
        (self.state_dir / "etcd").chmod(0o700)
        if self.is_running():
            log.info("Control plane in %s is already running", self.state_dir)
            self._write_kubeconfigs(self._require_port())
            if self.kubelet and not self.node_running():
                self._down_node(20.0)
                try:
                    self._start_node(self._require_port(), timeout)
                except BaseException:
                    self._down_node(5.0)
                    raise
            self._bootstrap(timeout)
            return self
        # Half a plane is no use: stop what is left of it and start afresh on the same data.
        self._down(20.0)
        try:
            self._start(t0, timeout)
        except BaseException:
            # A failed start (a component that died, a timeout, Ctrl-C) leaves nothing running.
            log.info("Start failed; stopping the components started so far")
            self._down(5.0)
            raise
        log.info(
            "Control plane is up in %.1fs: %s, %d kwok nodes%s",
            time.monotonic() - t0,
            self.server,
            len(self.nodes),
            " and a real node" if self.kubelet else "",
        )
        return self

    def _start(self, t0: float, timeout: float) -> None:
        bin_dir = self.bin_dir
        pki = pkimod.ensure_pki(self.pki.directory, SERVICE_IP)
        state = self._choose_ports()
        self._save_state(state)
        self._write_kubeconfigs(state["apiserver_port"])
        (self.state_dir / "kwok.yaml").write_text(
            "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n"
        )

        etcd_url = f"http://127.0.0.1:{state['etcd_client_port']}"
        peer_url = f"http://127.0.0.1:{state['etcd_peer_port']}"
        self._spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=gyre",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=gyre={peer_url}",
                # A disposable development store on a shared disk: fsync costs more than
                # the durability is worth here.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        eventually(lambda: _http_ok(f"{etcd_url}/health"), timeout=30, what="etcd to become healthy")
        log.info("Started etcd on %s", etcd_url)

        port = state["apiserver_port"]
        self._spawn(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={pki.directory}",
                f"--tls-cert-file={pki.apiserver_cert}",
                f"--tls-private-key-file={pki.apiserver_key}",
                f"--client-ca-file={pki.ca_cert}",
                # For logs, exec and port-forward on the real node; its kubelet trusts the CA.
                f"--kubelet-client-certificate={pki.client_cert(pkimod.APISERVER_KUBELET_CLIENT)}",
                f"--kubelet-client-key={pki.client_key(pkimod.APISERVER_KUBELET_CLIENT)}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                # Endpoints may not point at loopback; nothing in-cluster calls the API
                # server through the `kubernetes` Service here (there is no pod network).
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        api = ApiServer(port, pki)
        eventually(
            lambda: (
                _guard_alive(self, "kube-apiserver")
                and api.request("GET", "/readyz", timeout=3).status == 200
            ),
            timeout=max(30.0, timeout - (time.monotonic() - t0)),
            what="kube-apiserver /readyz",
        )
        log.info("Started kube-apiserver on https://127.0.0.1:%d", port)

        cm = self._component_kubeconfig(pkimod.CONTROLLER_MANAGER)
        self._spawn(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={cm}",
                "--bind-address=127.0.0.1",
                f"--secure-port={state['controller_manager_port']}",
                f"--cert-dir={pki.directory / 'controller-manager-serving'}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                # Each controller acts as its own ServiceAccount, as in a real cluster.
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                "--leader-elect=false",
                # Gives PersistentVolumeClaims something to bind to (directories under /tmp):
                # StatefulSets with volumes schedule as they would on a cluster.
                "--enable-hostpath-provisioner=true",
                "--profiling=false",
            ],
        )
        sched = self._component_kubeconfig(pkimod.SCHEDULER)
        self._spawn(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={sched}",
                "--bind-address=127.0.0.1",
                f"--secure-port={state['scheduler_port']}",
                f"--cert-dir={pki.directory / 'scheduler-serving'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        self._spawn(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={self._component_kubeconfig(pkimod.KWOK)}",
                f"--config={self.state_dir / 'kwok.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                "--node-lease-duration-seconds=40",
            ],
        )
        if self.kubelet:
            self._start_node(port, max(30.0, timeout - (time.monotonic() - t0)))
        self._bootstrap(max(30.0, timeout - (time.monotonic() - t0)))

    def _start_node(self, port: int, timeout: float) -> None:
        """containerd with the pause image imported, then the kubelet registering as this host.

        node.json is written first: a start that fails halfway is cleaned up by `down`.
        """
        bin_dir = ensure_binaries((KUBELET_BINARY, COREDNS_BINARY, KUBE_PROXY_BINARY))
        kubelet_bin = bin_dir / KUBELET_BINARY
        pause = ensure_image(PAUSE)
        s = nodemod.build_settings(
            self.state_dir, free_port(), free_port(), free_port(), (free_port(), free_port())
        )
        self._node_file.write_text(s.dump())
        nodemod.prepare(s)
        pkimod.ensure_node_pki(self.pki, s.name, ("127.0.0.1", s.ip))

        containerd_config = s.path("containerd.toml")
        containerd_config.write_text(nodemod.build_containerd_config(s))
        s.path("cni", "net.d", "10-gyre.conflist").write_text(
            json.dumps(nodemod.build_cni_config(s), indent=2) + "\n"
        )
        self._spawn("containerd", ["containerd", f"--config={containerd_config}"])
        eventually(
            lambda: (
                _guard_alive(self, "containerd")
                and subprocess.run(
                    ["ctr", "-a", s.containerd_socket, "version"], capture_output=True, check=False
                ).returncode
                == 0
            ),
            timeout=timeout,
            what="containerd to answer on its socket",
        )
        self.load_image(pause)

        who = pkimod.node_identity(s.name)
        kubeconfig = self._component_kubeconfig(who)
        self._write_kubeconfig(kubeconfig, port, who)
        config = s.path("kubelet.yaml")
        config.write_text(
            json.dumps(
                nodemod.build_kubelet_config(
                    s,
                    ca=self.pki.ca_cert,
                    cert=self.pki.kubelet_serving_cert,
                    key=self.pki.kubelet_serving_key,
                ),
                indent=2,
            )
            + "\n"
        )
        self._spawn(
            "kubelet",
            nodemod.kubelet_args(s, binary=kubelet_bin, config=config, kubeconfig=kubeconfig),
        )
        corefile = s.path("Corefile")
        # The kubernetes plugin lists and watches Services, EndpointSlices and Namespaces
        # cluster-wide; the plane's admin is the one identity here that may (as kubeadm's
        # CoreDNS has its ClusterRole).
        corefile.write_text(nodemod.build_corefile(s, kubeconfig=self.kubeconfig))
        self._spawn("coredns", nodemod.coredns_args(s, binary=bin_dir / COREDNS_BINARY, corefile=corefile))
        eventually(
            lambda: (
                _guard_alive(self, "coredns") and _http_ok(f"http://127.0.0.1:{s.dns_health_port}/health")
            ),
            timeout=timeout,
            what="the node's CoreDNS to answer on /health",
        )
        proxy_config = s.path("kube-proxy.yaml")
        proxy_kubeconfig = self._component_kubeconfig(pkimod.KUBE_PROXY)
        proxy_config.write_text(
            json.dumps(nodemod.build_kube_proxy_config(s, kubeconfig=proxy_kubeconfig), indent=2) + "\n"
        )
        self._spawn(
            "kube-proxy",
            nodemod.kube_proxy_args(s, binary=bin_dir / KUBE_PROXY_BINARY, config=proxy_config),
        )
        eventually(
            lambda: (
                _guard_alive(self, "kube-proxy")
                and _http_ok(f"http://127.0.0.1:{s.proxy_healthz_port}/healthz")
            ),
            timeout=timeout,
            what="the node's kube-proxy to answer on /healthz",
        )
        log.info("Started containerd, a kubelet, CoreDNS (%s:53) and kube-proxy for node %s", s.ip, s.name)

    def _require_port(self) -> int:
        port = self.port
        if port is None:
            raise ControlPlaneError(f"no control plane state in {self.state_dir}")
        return port

    def _choose_ports(self) -> dict[str, int]:
        """Reuse the previous ports where free, so existing kubeconfigs keep working."""
        previous = self._load_state()
        state: dict[str, int] = {}
        taken: set[int] = set()
        for key in (
            "apiserver_port",
            "etcd_client_port",
            "etcd_peer_port",
            "controller_manager_port",
            "scheduler_port",
        ):
            want = self.requested_port if key == "apiserver_port" else None
            if want is not None:
                if not _port_free(want):
                    raise ControlPlaneError(f"port {want} for kube-apiserver is in use")
                port = want
            else:
                old = previous.get(key)
                port = old if isinstance(old, int) and old not in taken and _port_free(old) else 0
                while port == 0 or port in taken:
                    port = free_port()
            taken.add(port)
            state[key] = port
        return state

    def _write_kubeconfigs(self, port: int) -> None:
        for who in pkimod.CLIENTS:
            self._write_kubeconfig(self._component_kubeconfig(who), port, who)
            if who is pkimod.ADMIN:
                self._write_kubeconfig(self.kubeconfig, port, who)
        settings = self.node_settings()
        if settings is not None:
            who = pkimod.node_identity(settings.name)
            self._write_kubeconfig(self._component_kubeconfig(who), port, who)

    def _write_kubeconfig(self, path: Path, port: int, who: pkimod.ClientIdentity) -> None:
        server = f"https://127.0.0.1:{port}"
        ca = base64.b64encode(self.pki.ca_cert.read_bytes()).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "gyre",
                    "cluster": {"server": server, "certificate-authority-data": ca},
                }
            ],
            "users": [
                {
                    "name": who.common_name,
                    "user": {
                        "client-certificate-data": base64.b64encode(
                            self.pki.client_cert(who).read_bytes()
                        ).decode(),
                        "client-key-data": base64.b64encode(self.pki.client_key(who).read_bytes()).decode(),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "gyre",
                    "context": {
                        "cluster": "gyre",
                        "user": who.common_name,
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "gyre",
        }
        # JSON is YAML; kubectl, helm and the client libraries read it as a kubeconfig.
        text = json.dumps(cfg, indent=2) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _spawn(self, component: str, args: list[str]) -> int:
        logf = self.log_file(component)
        with logf.open("ab") as out:
            out.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(args)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                # Own session: a Ctrl-C in the terminal that ran `gyre cluster up` does not
                # reach the daemons.
                start_new_session=True,
                preexec_fn=None if self.daemon else _die_with_parent,
            )
        _CHILDREN[proc.pid] = proc
        self._record_pid(component, proc.pid)
        return proc.pid

    def _bootstrap(self, timeout: float) -> None:
        """Nodes, the default StorageClass; then wait until pods can be admitted and scheduled."""
        api = self.api()
        for node in self.nodes:
            api.create("/api/v1/nodes", fake_node_manifest(node))
        settings = self.node_settings() if self.kubelet else None
        storage_class = storage_class_manifest(local=settings is not None)
        api.create("/apis/storage.k8s.io/v1/storageclasses", storage_class)
        names = {n.name for n in self.nodes}
        if settings is not None:
            for pv in nodemod.local_volume_manifests(settings, DEFAULT_STORAGE_CLASS):
                api.create("/api/v1/persistentvolumes", pv)
            names.add(settings.name)

        def nodes_ready() -> bool:
            for c in (*COMPONENTS, *(NODE_COMPONENTS if settings is not None else ())):
                _guard_alive(self, c)
            resp = api.request("GET", "/api/v1/nodes")
            if resp.status != 200:
                return False
            ready = set()
            for item in resp.json()["items"]:
                conds = item.get("status", {}).get("conditions") or []
                taints = item.get("spec", {}).get("taints") or []
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conds) and not any(
                    t["key"].startswith("node.kubernetes.io/") for t in taints
                ):
                    ready.add(item["metadata"]["name"])
            return names <= ready

        eventually(nodes_ready, timeout=timeout, what=f"nodes {sorted(names)} to become Ready")
        # Pods are rejected until the controller manager has created the namespace's
        # default ServiceAccount.
        eventually(
            lambda: api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default").status == 200,
            timeout=timeout,
            what="the default ServiceAccount",
        )

    # -- down

    def down(self, timeout: float = 20.0) -> None:
        """Stop every component (SIGTERM, SIGKILL after ``timeout``); keep the state dir."""
        if not self.state_dir.exists():
            return
        with self._locked():
            self._down(timeout)

    def _down(self, timeout: float) -> None:
        # What the node could not remove is reported once the plane itself has stopped.
        node_error: ControlPlaneError | None = None
        try:
            self._down_node(timeout)
        except ControlPlaneError as e:
            node_error = e
        stopped = []
        # Nodes' simulator, scheduler and controllers first, then the API server, then etcd.
        for group in (
            ("kwok", "kube-scheduler", "kube-controller-manager"),
            ("kube-apiserver",),
            ("etcd",),
        ):
            pids = {c: self.pid(c) for c in group}
            for pid in pids.values():
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            for c, pid in pids.items():
                if pid is not None:
                    _wait_exit(pid, timeout)
                    stopped.append(c)
                self._pid_file(c).unlink(missing_ok=True)
        if stopped:
            log.info("Stopped %s", ", ".join(stopped))
        if node_error is not None:
            raise node_error

    def _down_node(self, timeout: float) -> None:
        """Stop the kubelet, then containerd, then remove all the node left on the host.

        Pods are not deleted through the API: like a rebooted machine, the node runs them
        again when it comes back.
        """
        settings = self.node_settings()
        if settings is None:
            return
        for c in ("kube-proxy", "kubelet", "containerd", "coredns"):
            pid = self.pid(c)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                _wait_exit(pid, timeout)
            self._pid_file(c).unlink(missing_ok=True)
        left = nodemod.clean_up(settings)
        if not left.empty():
            raise ControlPlaneError(f"the real node left behind: {'; '.join(nodemod.describe(left))}")
        self._node_file.unlink(missing_ok=True)
        log.info("Stopped the real node %s and removed what it left on the host", settings.name)

    def __enter__(self) -> ControlPlane:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


def _wait_exit(pid: int, timeout: float) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.05)


def _guard_alive(plane: ControlPlane, component: str) -> bool:
    if plane.pid(component) is None:
        tail = _tail(plane.log_file(component))
        raise ComponentExitedError(f"{component} exited; last lines of its log:\n{tail}")
    return True


def _tail(path: Path, lines: int = 30) -> str:
    return log_tail(path, lines)


def _http_ok(url: str) -> bool:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("GET", "/" + url.split("//", 1)[1].split("/", 1)[1])
        return conn.getresponse().status == 200
    finally:
        conn.close()


def fake_node_manifest(node: FakeNode) -> dict[str, Any]:
    capacity: dict[str, str] = {"cpu": node.cpu, "memory": node.memory, "pods": str(node.pods)}
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/role": "agent",
        "node-role.kubernetes.io/agent": "",
        "type": "kwok",
    }
    if node.gpus:
        capacity[GPU_RESOURCE] = str(node.gpus)
        labels["nvidia.com/gpu.present"] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": labels,
        },
        # Status set at creation is kept; kwok's node stages take the capacity from it.
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def storage_class_manifest(*, local: bool = False) -> dict[str, Any]:
    """The default StorageClass: directories under /tmp made by the controller manager's
    hostpath provisioner; with a real node (``local``), that node's local volumes, which a
    claim binds once its pod is scheduled there (`gyre.controlplane.node.local_volume_manifests`)."""
    provisioner, reclaim, binding = (
        ("kubernetes.io/no-provisioner", "Retain", "WaitForFirstConsumer")
        if local
        else ("kubernetes.io/host-path", "Delete", "Immediate")
    )
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": DEFAULT_STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": provisioner,
        "reclaimPolicy": reclaim,
        "volumeBindingMode": binding,
    }


# -- functional API -----------------------------------------------------------------------------


def up(
    state_dir: Path | str | None = None, *, apiserver_port: int | None = None, timeout: float = 180
) -> ControlPlane:
    return ControlPlane(state_dir, apiserver_port=apiserver_port).up(timeout)


def down(state_dir: Path | str | None = None) -> None:
    ControlPlane(state_dir).down()


def status(state_dir: Path | str | None = None) -> ControlPlaneStatus:
    return ControlPlane(state_dir).status()


def running_pids(state_dir: Path | str) -> Iterator[int]:
    """Every process on this host whose command line names ``state_dir`` (for leak checks)."""
    needle = str(Path(state_dir).expanduser().resolve())
    yield from processes(lambda p: any(needle in a for a in p.cmdline()) and _alive(p.pid))
