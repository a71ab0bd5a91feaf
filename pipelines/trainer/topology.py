"""Where each worker sits in the job: ranks, hosts, the launcher's address, and the gang protocol.

Pure functions derive a worker's Horovod slot (rank, local and cross ranks) from
``GYRE_REPLICA_INDEX`` / ``GYRE_REPLICAS`` and the placement (all workers on one host for the
local runtime, one per pod on Kubernetes), the way ``horovodrun`` assigns slots to hosts. The
launcher uses the same functions for the host assignment it hands to the rendezvous server,
so both sides agree without talking.

The gang protocol (HTTP on the launcher's rendezvous port, under ``/gyre/``):

* ``PUT /gyre/join/<rank>``: a worker announces itself; answers the gang state.
* ``GET /gyre/state``: ``{"phase": "gathering"|"running"|"failed"|"succeeded", "message",
  "joined", "store_port"}``; training starts when the phase is ``running``.
* ``PUT /gyre/beat/<rank>``: heartbeat while training; answers the gang state, so a worker
  learns within a beat that the gang failed and exits instead of hanging in a collective.
* ``PUT /gyre/done/<rank>`` / ``PUT /gyre/fail/<rank>`` (body: the reason).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("gyre.trainer.topology")

REPLICA_INDEX_ENV = "GYRE_REPLICA_INDEX"
REPLICAS_ENV = "GYRE_REPLICAS"
LAUNCHER_ADDR_ENV = "GYRE_LAUNCHER_ADDR"


class GangError(RuntimeError):
    """The gang could not form or broke apart; the message says why."""


@dataclass(frozen=True)
class Slot:
    """One worker's place in the job, as Horovod names it."""

    hostname: str
    rank: int
    size: int
    local_rank: int
    local_size: int
    cross_rank: int
    cross_size: int


def host_name(index: int, workers_per_host: int) -> str:
    """The logical host of a worker: Horovod scopes its local rendezvous by this name."""
    return "localhost" if workers_per_host <= 0 else f"host-{index // workers_per_host}"


def build_slots(size: int, workers_per_host: int) -> list[Slot]:
    """Every worker's slot, rank order; ``workers_per_host <= 0`` puts all on one host."""
    per_host = size if workers_per_host <= 0 else workers_per_host
    hosts = (size + per_host - 1) // per_host
    slots = []
    for rank in range(size):
        host, local = divmod(rank, per_host)
        local_size = min(per_host, size - host * per_host)
        # cross ranks group the workers that share a local rank across hosts
        cross_size = sum(1 for h in range(hosts) if local < min(per_host, size - h * per_host))
        slots.append(
            Slot(
                hostname=host_name(rank, workers_per_host),
                rank=rank,
                size=size,
                local_rank=local,
                local_size=local_size,
                cross_rank=host,
                cross_size=cross_size,
            )
        )
    return slots


def build_horovod_env(
    slot: Slot, launcher_host: str, launcher_port: int, iface: str | None
) -> dict[str, str]:
    """The environment ``horovodrun --gloo`` would give this slot's process."""
    env = {
        "HOROVOD_HOSTNAME": slot.hostname,
        "HOROVOD_RANK": str(slot.rank),
        "HOROVOD_SIZE": str(slot.size),
        "HOROVOD_LOCAL_RANK": str(slot.local_rank),
        "HOROVOD_LOCAL_SIZE": str(slot.local_size),
        "HOROVOD_CROSS_RANK": str(slot.cross_rank),
        "HOROVOD_CROSS_SIZE": str(slot.cross_size),
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": launcher_host,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(launcher_port),
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
    }
    if iface:
        env["HOROVOD_GLOO_IFACE"] = iface
        env["NCCL_SOCKET_IFNAME"] = iface
    return env


def build_torch_env(slot: Slot, launcher_host: str, store_port: int, iface: str | None) -> dict[str, str]:
    """``torchrun``-style env; the launcher hosts the TCPStore, as torchrun's agent does."""
    env = {
        "MASTER_ADDR": launcher_host,
        "MASTER_PORT": str(store_port),
        "RANK": str(slot.rank),
        "WORLD_SIZE": str(slot.size),
        "LOCAL_RANK": str(slot.local_rank),
        "LOCAL_WORLD_SIZE": str(slot.local_size),
        "GROUP_RANK": str(slot.cross_rank),
        # every rank is a client of the launcher's store (none hosts one itself)
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RESTART_COUNT": "0",
    }
    if iface:
        env["GLOO_SOCKET_IFNAME"] = iface
        env["NCCL_SOCKET_IFNAME"] = iface
    return env


def default_iface(launcher_host: str, configured: str | None) -> str | None:
    """Gloo binds to one NIC: loopback when the launcher is on loopback (local runtime)."""
    if configured:
        return configured
    if launcher_host in ("localhost", "::1") or launcher_host.startswith("127."):
        return "lo"
    return None


@dataclass(frozen=True)
class WorkerIdentity:
    index: int
    replicas: int
    launcher_host: str
    launcher_port: int


def identity_from_env(env: Mapping[str, str] | None = None) -> WorkerIdentity:
    env = os.environ if env is None else env
    try:
        index = int(env.get(REPLICA_INDEX_ENV, "0"))
        replicas = int(env.get(REPLICAS_ENV, "1"))
    except ValueError as e:
        raise GangError(f"{REPLICA_INDEX_ENV}/{REPLICAS_ENV} must be integers: {e}") from e
    addr = env.get(LAUNCHER_ADDR_ENV)
    if not addr:
        raise GangError(f"${LAUNCHER_ADDR_ENV} (host:port of the launcher) is not set")
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise GangError(f"${LAUNCHER_ADDR_ENV}={addr!r} is not host:port")
    if not 0 <= index < replicas:
        raise GangError(f"replica index {index} out of range for {replicas} replicas")
    return WorkerIdentity(index, replicas, host.strip("[]"), int(port))


class GangClient:
    """A worker's side of the gang protocol."""

    def __init__(self, host: str, port: int, rank: int) -> None:
        self._base = f"http://{host}:{port}/gyre"
        self.rank = rank

    def _call(self, method: str, path: str, body: str = "") -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self._base}/{path}", data=body.encode() if method == "PUT" else None, method=method
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            result: dict[str, Any] = json.loads(resp.read() or b"{}")
            return result

    def state(self) -> dict[str, Any]:
        return self._call("GET", "state")

    def join(self, deadline_s: float) -> dict[str, Any]:
        """Announce this worker, retrying until the launcher answers or the deadline passes."""
        end = time.monotonic() + deadline_s
        last: Exception | None = None
        while time.monotonic() < end:
            try:
                return self._call("PUT", f"join/{self.rank}", str(os.getpid()))
            except (OSError, urllib.error.URLError) as e:
                last = e
                time.sleep(0.2)
        raise GangError(f"launcher at {self._base} unreachable for {deadline_s:.0f}s: {last}")

    def wait_running(self, deadline_s: float) -> dict[str, Any]:
        """Block until every worker joined (phase running); raise if the gang failed."""
        end = time.monotonic() + deadline_s
        while True:
            try:
                st = self.state()
            except (OSError, urllib.error.URLError) as e:
                st = {"phase": "unreachable", "message": str(e)}
            if st.get("phase") == "running":
                return st
            if st.get("phase") == "failed":
                raise GangError(f"gang failed: {st.get('message')}")
            if time.monotonic() > end:
                raise GangError(
                    f"gang did not start within {deadline_s:.0f}s "
                    f"(last state: {st.get('phase')}: {st.get('message', '')})"
                )
            time.sleep(0.1)

    def beat(self) -> dict[str, Any]:
        return self._call("PUT", f"beat/{self.rank}")

    def done(self) -> None:
        self._call("PUT", f"done/{self.rank}")

    def progress(self, body: str) -> None:
        """Send rank 0's progress (a `TrainerProgress` document) to the launcher's /status.

        Best effort: a launcher that does not answer must not stop training (it is then
        restarting the gang, and this worker learns it at its next heartbeat)."""
        try:
            self._call("PUT", f"progress/{self.rank}", body)
        except (OSError, urllib.error.URLError) as e:
            log.debug("Progress not delivered to the launcher: %s", e)

    def fail(self, reason: str) -> None:
        self._call("PUT", f"fail/{self.rank}", reason[:2000])
