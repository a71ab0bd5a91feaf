"""The ``local`` runtime: a reconcile's workloads run as processes on this host.

Each replica of a workload is one process running the very command a pod would run (a leading
``python`` becomes this interpreter), with loopback ports allocated here, the environment a pod
would see (references resolved, ``$(VAR)`` expanded in the arguments), persistent volume
directories, its output appended to a log file, a restart policy with exponential backoff, and
TCP or HTTP readiness probes.

No process outlives the runtime: every replica is started through ``_reaper`` (see there), a
small supervisor in a session of its own that dies with the operator, even on SIGKILL, and
takes the replica's whole process tree with it.

``state_dir`` layout, per owner ``<namespace>/<kind>-<name>/`` (kind in lower case)::

    ports.json                      the owner's ports, reused after an operator restart
    logs/<workload>-<replica>.log   stdout and stderr of the replica, appended across restarts
    config/<workload>/              the workload's ``config_files``, written before it starts
                                    (and rewritten in place for one that ``reloads_config``)
    <workload>-<replica>/           working directory of the replica
    <workload>-<replica>/<volume>/  a volume; kept across restarts of the replica and operator

Beyond the ``GYRE_REPLICA_INDEX`` and ``GYRE_REPLICAS`` every runtime sets, each replica gets
``GYRE_WORKLOAD``, ``GYRE_OWNER`` (the owner's name) and ``GYRE_PORT_<NAME>`` for each of its
ports. An `EndpointRef` to another workload resolves to that workload's replica 0; one to the
workload itself resolves to the replica's own port (what a process advertises as its address).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from gyre.core.workload import (
    ConfigDirRef,
    EndpointRef,
    EnvValue,
    Owner,
    PeersRef,
    RestartPolicy,
    VolumePathRef,
    Workload,
    WorkloadPhase,
    WorkloadStatus,
    port_env,
)
from gyre.pipelines._common.env import expand_vars
from gyre.pipelines._common.status import STATUS_PATH
from gyre.runtimes import _reaper
from gyre.runtimes._http import fetch_json
from gyre.runtimes._ports import LOOPBACK, PortAllocator, shared_allocator
from gyre.runtimes.base import OwnerListener
from gyre.runtimes.k8s_render import label_value
from gyre.runtimes.shapes import shape_of

log = logging.getLogger(__name__)

_REAPER = str(Path(_reaper.__file__).resolve())
_PYTHON = re.compile(r"python(3(\.\d+)?)?")
_FILE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_LOG_TAIL_LINES = 12
_LOG_TAIL_BYTES = 8192
_PROBE_FAILURE_THRESHOLD = 3  # as Kubernetes' default failureThreshold
_PROBE_TIMEOUT_S = 1.0
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
_STOP_MARGIN_S = 3.0  # beyond the reaper's own grace period, before the runtime SIGKILLs


class _SpecError(Exception):
    """The workload cannot run as specified; it is reported as Failed, never raised."""


class _State(enum.Enum):
    WAITING = "waiting"  # not started yet, or backing off before a restart
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # past its restart budget, or could not be started
    STOPPED = "stopped"  # stopped by the runtime


@dataclass(eq=False)
class _Replica:
    index: int
    state: _State = _State.WAITING
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    started: bool = False
    restarts: int = 0
    exit_code: int | None = None
    gpus: tuple[str, ...] = ()
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Run:
    """One applied version of a workload; a changed spec replaces it with a new one (new
    contents of the config files of a workload that ``reloads_config`` do not: they update
    ``workload`` in place)."""

    workload: Workload
    spec_hash: str
    replicas: list[_Replica]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None  # cannot run as specified: Failed
    unschedulable: str | None = None  # waits for resources (GPUs): Pending


@dataclass(eq=False)
class _OwnerState:
    owner: Owner
    root: Path
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    runs: dict[str, _Run] = field(default_factory=dict)
    # workload -> port name -> the port of each replica; all claimed from the allocator
    ports: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    # what ports.json held when the state was loaded: preferred, but not yet claimed
    remembered: dict[str, dict[str, list[int]]] = field(default_factory=dict)


class LocalRuntime:
    """Runs workloads as local processes; see the module docstring."""

    name = "local"

    def __init__(
        self,
        state_dir: Path,
        *,
        grace_period_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 10.0,
        backoff_reset_s: float = 60.0,
        gpus: Sequence[str] | None = None,
        ports: PortAllocator | None = None,
    ) -> None:
        """``gpus``: the device ids to hand out; None detects them with ``nvidia-smi -L``."""
        self.state_dir = Path(state_dir)
        self.grace_period_s = grace_period_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.backoff_reset_s = backoff_reset_s
        self._gpus: list[str] | None = None if gpus is None else list(gpus)
        self._gpu_holders: dict[str, _Replica] = {}
        self._ports = ports or shared_allocator()
        self._owners: dict[str, _OwnerState] = {}
        self._closed = False
        self._listeners: list[OwnerListener] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- Runtime protocol ---------------------------------------------------------------------

    async def apply(self, owner: Owner, workloads: Sequence[Workload]) -> None:
        if self._closed:
            raise RuntimeError("the local runtime is closed")
        wanted: dict[str, Workload] = {}
        for w in workloads:
            if w.name in wanted:
                raise ValueError(f"{owner.key}: two workloads named {w.name!r}")
            wanted[w.name] = w
        st = self._owner_state(owner)
        async with st.lock:
            gone = [name for name in st.runs if name not in wanted]
            await asyncio.gather(*(self._stop_run(st.runs[name]) for name in gone))
            for name in gone:
                del st.runs[name]
                log.info("Pruned workload %s of %s", name, owner.key)
            for name in [n for n in st.ports if n not in wanted]:
                self._release_ports(st, name)
            for w in workloads:
                self._ensure_ports(st, w)
            self._save_ports(st)

            replaced: list[_Run] = []
            launch: list[_Run] = []
            for w in workloads:
                spec_hash = self._spec_hash(st, w)
                current = st.runs.get(w.name)
                if current is not None and current.spec_hash == spec_hash:
                    if current.error is None and current.workload.config_files != w.config_files:
                        self._update_config_files(st, current, w)
                    if current.unschedulable is not None:
                        launch.append(current)  # resources may have been freed since
                    continue
                if current is not None:
                    replaced.append(current)
                run = _Run(w, spec_hash, [_Replica(i) for i in range(w.replicas)])
                st.runs[w.name] = run
                launch.append(run)
            await asyncio.gather(*(self._stop_run(run) for run in replaced))
            for run in launch:
                await self._launch(st, run)

    async def observe(self, owner: Owner) -> dict[str, WorkloadStatus]:
        st = self._owners.get(owner.key)
        if st is None:
            return {}
        return {name: self._status(st, run) for name, run in st.runs.items()}

    async def delete(self, owner: Owner) -> None:
        st = self._owners.get(owner.key)
        if st is not None:
            async with st.lock:
                await asyncio.gather(*(self._stop_run(run) for run in st.runs.values()))
                st.runs.clear()
                for name in list(st.ports):
                    self._release_ports(st, name)
                self._owners.pop(owner.key, None)
            log.info("Deleted the workloads of %s", owner.key)
        # The resource is gone: its ports need not be remembered (its data is kept).
        (self.owner_dir(owner) / "ports.json").unlink(missing_ok=True)

    async def read_status(self, owner: Owner, workload: Workload) -> list[dict[str, Any]]:
        """GET each replica's ``/status`` on its loopback port."""
        st = self._owners.get(owner.key)
        if st is None or workload.status_port is None:
            return []
        numbers = st.ports.get(workload.name, {}).get(workload.status_port) or []
        bodies = await asyncio.gather(
            *(asyncio.to_thread(fetch_json, f"http://{LOOPBACK}:{n}{STATUS_PATH}") for n in numbers)
        )
        return [b for b in bodies if b is not None]

    def subscribe(self, listener: OwnerListener) -> None:
        self._listeners.append(listener)

    def _changed(self, owner: Owner) -> None:
        """A replica of ``owner`` started, became ready or not, or exited."""
        for listener in self._listeners:
            listener(owner.namespace, label_value(owner.kind), label_value(owner.name))

    def endpoint(self, owner: Owner, workload: str, port: str) -> str | None:
        st = self._owners.get(owner.key)
        ports = st.ports.get(workload, {}).get(port) if st is not None else None
        return f"{LOOPBACK}:{ports[0]}" if ports else None

    async def close(self) -> None:
        self._closed = True
        states = list(self._owners.values())

        async def stop_owner(st: _OwnerState) -> None:
            async with st.lock:
                await asyncio.gather(*(self._stop_run(run) for run in st.runs.values()))
                for name in list(st.ports):
                    self._release_ports(st, name)

        await asyncio.gather(*(stop_owner(st) for st in states))
        self._owners.clear()

    # -- paths --------------------------------------------------------------------------------

    def owner_dir(self, owner: Owner) -> Path:
        return self.state_dir / owner.namespace / f"{owner.kind.lower()}-{owner.name}"

    def log_path(self, owner: Owner, workload: str, replica: int = 0) -> Path:
        """The file to which the replica's stdout and stderr are appended."""
        return self.owner_dir(owner) / "logs" / f"{workload}-{replica}.log"

    def replica_dir(self, owner: Owner, workload: str, replica: int = 0) -> Path:
        """The replica's working directory; its volumes are directories in it."""
        return self.owner_dir(owner) / f"{workload}-{replica}"

    def volume_path(self, owner: Owner, workload: str, volume: str, replica: int = 0) -> Path:
        return self.replica_dir(owner, workload, replica) / volume

    def config_dir(self, owner: Owner, workload: str) -> Path:
        return self.owner_dir(owner) / "config" / workload

    # -- owner state and ports ----------------------------------------------------------------

    def _owner_state(self, owner: Owner) -> _OwnerState:
        st = self._owners.get(owner.key)
        if st is None:
            st = _OwnerState(owner, self.owner_dir(owner))
            st.remembered = _load_ports(st.root / "ports.json")
            self._owners[owner.key] = st
        return st

    def _ensure_ports(self, st: _OwnerState, w: Workload) -> None:
        """Give every port of every replica a port, keeping those already given."""
        held = st.ports.get(w.name, {})
        remembered = st.remembered.get(w.name, {})
        ports: dict[str, list[int]] = {}
        for p in w.ports:
            mine = held.get(p.name, [])
            before = remembered.get(p.name, [])
            numbers: list[int] = []
            for i in range(w.replicas):
                if i < len(mine):
                    numbers.append(mine[i])
                elif i < len(before) and self._ports.claim(before[i]):
                    numbers.append(before[i])
                else:
                    numbers.append(self._ports.allocate())
            ports[p.name] = numbers
        for name, numbers in held.items():
            kept = len(ports.get(name, []))  # replicas 0..kept-1 kept their ports above
            for number in numbers[kept:]:
                self._ports.release(number)
        st.ports[w.name] = ports

    def _release_ports(self, st: _OwnerState, workload: str) -> None:
        for numbers in st.ports.pop(workload, {}).values():
            for number in numbers:
                self._ports.release(number)
        st.remembered.pop(workload, None)

    def _save_ports(self, st: _OwnerState) -> None:
        st.root.mkdir(parents=True, exist_ok=True)
        tmp = st.root / "ports.json.tmp"
        tmp.write_text(json.dumps(st.ports, indent=1, sort_keys=True))
        tmp.replace(st.root / "ports.json")

    # -- spec ---------------------------------------------------------------------------------

    def _spec_hash(self, st: _OwnerState, w: Workload) -> str:
        """Changes when the workload or an address it was started with changes; for a workload
        that rereads its config files, not when only their contents change."""
        peers: dict[str, str] = {}
        for var, value in w.env.items():
            if isinstance(value, EndpointRef | PeersRef) and value.workload not in (None, w.name):
                try:
                    peers[var] = self._resolve_env_value(st, w, 0, value)
                except _SpecError as exc:
                    peers[var] = f"error: {exc}"
        if w.reloads_config:
            w = dataclasses.replace(w, config_files=dict.fromkeys(w.config_files, ""))
        doc = {"workload": _canonical(w), "peers": peers}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def _resolve_env_value(self, st: _OwnerState, w: Workload, replica: int, v: EnvValue) -> str:
        match v:
            case str():
                return v
            case EndpointRef(port=port, workload=None) | EndpointRef(port=port, workload=w.name):
                numbers = st.ports.get(w.name, {}).get(port)
                if not numbers:
                    raise _SpecError(f"workload {w.name} has no port {port!r}")
                return f"{LOOPBACK}:{numbers[replica]}"
            case EndpointRef(port=port, workload=str(target)):
                if target not in st.ports:
                    raise _SpecError(f"no workload {target!r} in {st.owner.key}")
                numbers = st.ports[target].get(port)
                if not numbers:
                    raise _SpecError(f"workload {target} has no port {port!r}")
                return f"{LOOPBACK}:{numbers[0]}"
            case PeersRef(port=port, workload=target):
                name = w.name if target is None else target
                numbers = st.ports.get(name, {}).get(port)
                if not numbers:
                    raise _SpecError(f"workload {name} has no port {port!r} in {st.owner.key}")
                return ",".join(f"{LOOPBACK}:{n}" for n in numbers)
            case VolumePathRef(volume=volume):
                if volume not in {vol.name for vol in w.volumes}:
                    raise _SpecError(f"workload {w.name} has no volume {volume!r}")
                return str(self.volume_path(st.owner, w.name, volume, replica))
            case ConfigDirRef(file=str(name)):
                return str(self.config_dir(st.owner, w.name) / name)
            case ConfigDirRef():
                return str(self.config_dir(st.owner, w.name))
        raise _SpecError(f"unsupported env value {v!r}")

    def _command(self, st: _OwnerState, w: Workload, replica: _Replica) -> tuple[list[str], dict[str, str]]:
        """The argv and the full environment of one replica, as a pod would get them."""
        own: dict[str, str] = {}
        for var, value in w.env.items():
            own[var] = self._resolve_env_value(st, w, replica.index, value)
        own["GYRE_OWNER"] = st.owner.name
        own["GYRE_WORKLOAD"] = w.name
        own["GYRE_REPLICA_INDEX"] = str(replica.index)
        own["GYRE_REPLICAS"] = str(w.replicas)
        for p in w.ports:
            own[port_env(p.name)] = str(st.ports[w.name][p.name][replica.index])
        if replica.gpus:
            own["CUDA_VISIBLE_DEVICES"] = ",".join(replica.gpus)
        # Kubernetes expands $(VAR) from the container's declared env, not from the image's.
        argv = [expand_vars(arg, own) for arg in w.command]
        if argv and _PYTHON.fullmatch(argv[0]):
            argv[0] = sys.executable
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")  # logs must show what a crash printed
        env.update(own)
        return argv, env

    def _check(self, st: _OwnerState, run: _Run) -> None:
        """Everything that would make every start of this workload fail, as a _SpecError."""
        w = run.workload
        if not w.command:
            raise _SpecError("the workload has no command")
        if w.secrets:
            names = ", ".join(f"{s.secret}/{s.key}" for s in w.secrets)
            raise _SpecError(
                f"it mounts Secret keys ({names}); Secrets exist only on the kubernetes runtime "
                "(locally, give the value as a file instead)"
            )
        if w.readiness is not None and w.readiness.port not in {p.name for p in w.ports}:
            raise _SpecError(f"readiness probes port {w.readiness.port!r}, which is not declared")
        for name in w.config_files:
            if not _FILE_NAME.fullmatch(name) or name in (".", ".."):
                raise _SpecError(f"config file name {name!r} is not a plain file name")
        for volume in w.volumes:
            if not _FILE_NAME.fullmatch(volume.name) or volume.name in (".", ".."):
                raise _SpecError(f"volume name {volume.name!r} is not a plain file name")
        for replica in run.replicas:
            argv, env = self._command(st, w, replica)
            cwd = self.replica_dir(st.owner, w.name, replica.index)
            if _find_executable(argv[0], env.get("PATH", os.defpath), cwd) is None:
                raise _SpecError(f"cannot start: executable {argv[0]!r} not found on PATH")

    # -- lifecycle ----------------------------------------------------------------------------

    async def _launch(self, st: _OwnerState, run: _Run) -> None:
        """Start the replicas of a new run (or retry one waiting for GPUs); never raises."""
        w = run.workload
        try:
            self._check(st, run)
        except _SpecError as exc:
            run.error = str(exc)
            log.warning("Workload %s of %s cannot run: %s", w.name, st.owner.key, exc)
            return
        if w.resources.gpu > 0 and w.replicas > 0:
            run.unschedulable = await self._assign_gpus(st, run)
            if run.unschedulable is not None:
                log.info("Workload %s of %s is pending: %s", w.name, st.owner.key, run.unschedulable)
                return
        try:
            self._write_config_files(st, w)
        except OSError as exc:
            run.error = f"cannot write config files: {exc}"
            self._free_gpus(run.replicas)
            return
        for replica in run.replicas:
            replica.task = asyncio.create_task(
                self._supervise(st, run, replica), name=f"gyre-local {w.name}-{replica.index}"
            )

    def _write_config_files(self, st: _OwnerState, w: Workload) -> None:
        """Exactly ``w.config_files`` in its config directory, each file replaced atomically:
        a workload that rereads them never sees one half written."""
        config_dir = self.config_dir(st.owner, w.name)
        config_dir.mkdir(parents=True, exist_ok=True)
        for entry in config_dir.iterdir():  # only files this runtime wrote
            if entry.name not in w.config_files:
                entry.unlink()
        for name, content in w.config_files.items():
            tmp = config_dir / f".{name}.tmp"
            tmp.write_text(content)
            tmp.replace(config_dir / name)

    def _update_config_files(self, st: _OwnerState, run: _Run, w: Workload) -> None:
        """New contents of the config files of a running workload that rereads them."""
        try:
            self._write_config_files(st, w)
        except OSError as exc:
            # Left as they were; the next apply tries again (the run keeps its old spec).
            log.warning("Could not update the config files of %s of %s: %s", w.name, st.owner.key, exc)
            return
        run.workload = w
        log.info("Updated the config files of %s of %s in place", w.name, st.owner.key)

    async def _supervise(self, st: _OwnerState, run: _Run, replica: _Replica) -> None:
        """Run one replica, restarting it as its policy says, until it is done or stopped."""
        try:
            await self._supervise_loop(st, run, replica)
        except Exception as exc:  # a task's error would otherwise be lost silently
            log.exception("Supervising %s-%d of %s failed", run.workload.name, replica.index, st.owner.key)
            replica.state = _State.FAILED
            run.error = run.error or f"internal error supervising replica {replica.index}: {exc}"
        finally:
            if replica.proc is not None and replica.proc.returncode is None:
                _signal_group(replica.proc.pid, signal.SIGKILL)
            self._free_gpus([replica])

    async def _supervise_loop(self, st: _OwnerState, run: _Run, replica: _Replica) -> None:
        w = run.workload
        crashes_in_a_row = 0
        while not run.stop.is_set():
            started = time.monotonic()
            try:
                proc = await self._spawn(st, run, replica)
            except (OSError, _SpecError) as exc:
                replica.state = _State.FAILED
                run.error = run.error or f"replica {replica.index} could not be started: {exc}"
                log.warning("Workload %s of %s: %s", w.name, st.owner.key, run.error)
                return
            replica.proc, replica.state, replica.started = proc, _State.RUNNING, True
            self._changed(st.owner)
            log.info("Started %s-%d of %s (pid %d)", w.name, replica.index, st.owner.key, proc.pid)
            if run.stop.is_set():  # stopped while it was being spawned
                _signal(proc.pid, signal.SIGTERM)
            probe = None
            if w.readiness is not None:
                port = st.ports[w.name][w.readiness.port][replica.index]
                probe = asyncio.create_task(self._probe_loop(st.owner, run, replica, port))
            try:
                returncode = await proc.wait()
            finally:
                if probe is not None:
                    probe.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await probe
            # asyncio reports death by signal N as -N; a shell (and Kubernetes) says 128+N.
            code = returncode if returncode >= 0 else 128 - returncode
            replica.proc, replica.ready, replica.exit_code = None, False, code
            self._changed(st.owner)
            # The reaper kills what the command left; this catches the rest if it was killed.
            _reaper.kill_session(proc.pid)
            _note(self.log_path(st.owner, w.name, replica.index), f"exited with code {code}")
            if run.stop.is_set():
                replica.state = _State.STOPPED
                return
            if code == 0 and (shape_of(w).completes or w.restart_policy is not RestartPolicy.ALWAYS):
                replica.state = _State.SUCCEEDED
                log.info("%s-%d of %s succeeded", w.name, replica.index, st.owner.key)
                return
            if w.restart_policy is RestartPolicy.NEVER or (
                w.restart_policy is RestartPolicy.ON_FAILURE and replica.restarts >= w.backoff_limit
            ):
                replica.state = _State.FAILED
                log.warning(
                    "%s-%d of %s failed with exit code %d after %d restart(s)",
                    w.name,
                    replica.index,
                    st.owner.key,
                    code,
                    replica.restarts,
                )
                if shape_of(w).completes:
                    self._abort(run)  # like a failed Job: the other replicas are stopped
                return
            ran_for = time.monotonic() - started
            crashes_in_a_row = 1 if ran_for >= self.backoff_reset_s else crashes_in_a_row + 1
            delay = min(self.backoff_base_s * 2 ** (crashes_in_a_row - 1), self.backoff_max_s)
            replica.state = _State.WAITING
            log.info(
                "%s-%d of %s exited with code %d; restarting in %.1f s",
                w.name,
                replica.index,
                st.owner.key,
                code,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.stop.wait(), delay)
            if run.stop.is_set():
                replica.state = _State.STOPPED
                return
            replica.restarts += 1

    async def _spawn(self, st: _OwnerState, run: _Run, replica: _Replica) -> asyncio.subprocess.Process:
        w = run.workload
        argv, env = self._command(st, w, replica)
        cwd = self.replica_dir(st.owner, w.name, replica.index)
        cwd.mkdir(parents=True, exist_ok=True)
        for volume in w.volumes:
            (cwd / volume.name).mkdir(exist_ok=True)
        log_path = self.log_path(st.owner, w.name, replica.index)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        attempt = f" (restart {replica.restarts})" if replica.restarts else ""
        _note(log_path, f"starting{attempt}: {shlex.join(argv)}")
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            return await asyncio.create_subprocess_exec(
                *(sys.executable, "-I", "-S", _REAPER, str(os.getpid()), repr(self.grace_period_s)),
                *("--", *argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                cwd=cwd,
                env=env,
                start_new_session=True,  # a session of its own, which the whole replica shares
            )
        finally:
            os.close(fd)

    def _abort(self, run: _Run) -> None:
        run.stop.set()
        for replica in run.replicas:
            if replica.proc is not None and replica.proc.returncode is None:
                _signal(replica.proc.pid, signal.SIGTERM)

    async def _stop_run(self, run: _Run) -> None:
        """Stop every replica: SIGTERM, and SIGKILL for the whole tree after the grace period."""
        self._abort(run)
        tasks = [r.task for r in run.replicas if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.grace_period_s + _STOP_MARGIN_S)
            if pending:
                for replica in run.replicas:
                    if replica.proc is not None:
                        _signal_group(replica.proc.pid, signal.SIGKILL)
                        _reaper.kill_session(replica.proc.pid)
                _, pending = await asyncio.wait(pending, timeout=_STOP_MARGIN_S)
                for task in pending:
                    task.cancel()
        self._free_gpus(run.replicas)

    async def _probe_loop(self, owner: Owner, run: _Run, replica: _Replica, port: int) -> None:
        readiness = run.workload.readiness
        assert readiness is not None
        await asyncio.sleep(readiness.initial_delay_s)
        failures = 0
        while True:
            was_ready = replica.ready
            if await probe_once(port, readiness.http_path):
                replica.ready, failures = True, 0
            else:
                failures += 1
                if failures >= _PROBE_FAILURE_THRESHOLD:
                    replica.ready = False
            if replica.ready != was_ready:
                self._changed(owner)
            await asyncio.sleep(max(readiness.period_s, 0.01))

    # -- GPUs ---------------------------------------------------------------------------------

    async def _assign_gpus(self, st: _OwnerState, run: _Run) -> str | None:
        """Give each replica its GPUs, all or none; the reason it must wait, if it must."""
        if self._gpus is None:
            self._gpus = await detect_gpus()
        per_replica = run.workload.resources.gpu
        if not self._gpus:
            return f"requests {per_replica} GPU(s); this host has none"
        free = [d for d in self._gpus if d not in self._gpu_holders]
        needed = per_replica * len(run.replicas)
        if needed > len(free):
            return (
                f"requests {per_replica} GPU(s) for each of {len(run.replicas)} replica(s); "
                f"{len(free)} of the host's {len(self._gpus)} are free"
            )
        for replica in run.replicas:
            replica.gpus = tuple(free[:per_replica])
            del free[:per_replica]
            for device in replica.gpus:
                self._gpu_holders[device] = replica
        return None

    def _free_gpus(self, replicas: Sequence[_Replica]) -> None:
        for replica in replicas:
            for device in replica.gpus:
                if self._gpu_holders.get(device) is replica:
                    del self._gpu_holders[device]

    # -- status -------------------------------------------------------------------------------

    def _status(self, st: _OwnerState, run: _Run) -> WorkloadStatus:
        w = run.workload
        reps = run.replicas
        probed = w.readiness is not None

        def is_ready(r: _Replica) -> bool:
            return r.state is _State.RUNNING and (r.ready or not probed)

        def count(state: _State) -> int:
            return sum(1 for r in reps if r.state is state)

        message = ""
        failed = [r for r in reps if r.state is _State.FAILED]
        if run.error is not None:
            phase, message = WorkloadPhase.FAILED, run.error
            if failed and failed[0].started:
                message += self._log_tail(st, w, failed[0])
        elif run.unschedulable is not None:
            phase, message = WorkloadPhase.PENDING, run.unschedulable
        elif failed:
            r = failed[0]
            phase = WorkloadPhase.FAILED
            message = (
                f"replica {r.index} exited with code {r.exit_code} after {r.restarts} restart(s)"
                + self._log_tail(st, w, r)
            )
        elif not reps:
            phase = WorkloadPhase.SUCCEEDED if shape_of(w).completes else WorkloadPhase.READY
            message = "no replicas"
        elif count(_State.SUCCEEDED) == len(reps):
            phase = WorkloadPhase.SUCCEEDED
        elif not any(r.started for r in reps):
            phase, message = WorkloadPhase.PENDING, "starting"
        elif all(is_ready(r) or r.state is _State.SUCCEEDED for r in reps) and (
            probed or not shape_of(w).completes
        ):
            phase = WorkloadPhase.READY
        else:
            phase = WorkloadPhase.RUNNING
            waiting = [r for r in reps if r.state is _State.WAITING and r.exit_code is not None]
            if waiting:
                r = waiting[0]
                message = (
                    f"replica {r.index} exited with code {r.exit_code}; restarting "
                    f"(restart {r.restarts + 1})" + self._log_tail(st, w, r)
                )
        return WorkloadStatus(
            name=w.name,
            phase=phase,
            replicas=w.replicas,
            ready_replicas=sum(1 for r in reps if is_ready(r)),
            succeeded=count(_State.SUCCEEDED),
            failed=len(failed),
            restarts=sum(r.restarts for r in reps),
            message=message,
            exit_codes=tuple(r.exit_code for r in reps),
        )

    def _log_tail(self, st: _OwnerState, w: Workload, replica: _Replica) -> str:
        lines = tail(self.log_path(st.owner, w.name, replica.index), _LOG_TAIL_LINES)
        return "; last log lines:\n" + "\n".join(lines) if lines else ""


# -- helpers ----------------------------------------------------------------------------------


async def probe_once(port: int, http_path: str | None, host: str = LOOPBACK) -> bool:
    """TCP: the port accepts a connection. HTTP: a GET of the path answers 2xx."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            if http_path is None:
                return True
            path = http_path if http_path.startswith("/") else "/" + http_path
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: gyre-probe\r\n"
                "Accept: */*\r\nConnection: close\r\n\r\n".encode()
            )
            status = (await reader.readline()).split()
            return len(status) >= 2 and status[1].isdigit() and 200 <= int(status[1]) < 300
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            # Reset rather than close: probes leave no TIME_WAIT behind on the workload's port.
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def detect_gpus() -> list[str]:
    """The GPU ids this host can hand out: ``nvidia-smi -L``, narrowed by CUDA_VISIBLE_DEVICES."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = await asyncio.create_subprocess_exec(
            exe, "-L", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError:
        return []
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return []
    if proc.returncode != 0:
        return []
    count = sum(1 for line in out.decode(errors="replace").splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [d.strip() for d in visible.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - _LOG_TAIL_BYTES, 0))
            data = f.read()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-lines:]


def _canonical(value: object) -> object:
    """A JSON-able form of a workload in which equal workloads are equal documents."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        doc: dict[str, object] = {"@": type(value).__name__}
        for f in dataclasses.fields(value):
            doc[f.name] = _canonical(getattr(value, f.name))
        return doc
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _find_executable(command: str, path: str, cwd: Path) -> str | None:
    if "/" in command:
        candidate = command if os.path.isabs(command) else str(cwd / command)
        return candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
    return shutil.which(command, path=path)


def _note(log_path: Path, text: str) -> None:
    """A line from the runtime itself in a replica's log."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        with open(log_path, "a") as f:
            f.write(f"[gyre-local {stamp}] {text}\n")
    except OSError:
        pass


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)


def _load_ports(path: Path) -> dict[str, dict[str, list[int]]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    ports: dict[str, dict[str, list[int]]] = {}
    for workload, by_name in raw.items():
        if isinstance(by_name, dict):
            ports[str(workload)] = {
                str(name): [int(n) for n in numbers if isinstance(n, int)]
                for name, numbers in by_name.items()
                if isinstance(numbers, list)
            }
    return ports
