"""Loopback ports for the local runtime's workloads.

A port is handed out once and held until released, so two workloads never get the same port,
and a workload keeps its port across restarts of its process. Ports come from outside the
kernel's ephemeral range: a port the kernel may pick as the source port of any outgoing
connection could be taken while a workload restarts, and the workload would then fail to bind.
"""

from __future__ import annotations

import errno
import random
import socket
import threading

LOOPBACK = "127.0.0.1"
_EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_LOWEST = 10000  # below are the ports people configure by hand (8080, 9092, 6379, ...)
_ATTEMPTS = 500


def default_port_range() -> tuple[int, int]:
    """The widest range ``[low, high]`` that avoids the ephemeral range and well-known ports."""
    try:
        with open(_EPHEMERAL_RANGE_FILE) as f:
            eph_low, eph_high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        eph_low, eph_high = 32768, 60999  # Linux's default
    below = (_LOWEST, eph_low - 1)
    above = (eph_high + 1, 65535)
    best = max(below, above, key=lambda r: r[1] - r[0])
    return best if best[1] - best[0] >= 100 else (_LOWEST, 65535)


def can_bind(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could listen on the port now.

    With SO_REUSEADDR, as servers bind: connections of a previous run that linger in TIME_WAIT
    do not make the port look taken, a listening socket does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


class PortAllocator:
    """Hands out free loopback ports; thread-safe, shared by every runtime in the process."""

    def __init__(
        self,
        host: str = LOOPBACK,
        port_range: tuple[int, int] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.low, self.high = port_range or default_port_range()
        self._rng = rng or random.Random()
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def allocate(self) -> int:
        """A port nobody holds; random, so that separate operator processes rarely collide."""
        with self._lock:
            for _ in range(_ATTEMPTS):
                port = self._rng.randint(self.low, self.high)
                if port not in self._held and can_bind(port, self.host):
                    self._held.add(port)
                    return port
        raise RuntimeError(f"no free port in {self.low}-{self.high} on {self.host}")

    def claim(self, port: int) -> bool:
        """Take a particular port (one remembered from before a restart) if it is still free."""
        with self._lock:
            if port in self._held or not can_bind(port, self.host):
                return False
            self._held.add(port)
            return True

    def release(self, port: int) -> None:
        with self._lock:
            self._held.discard(port)


_shared: PortAllocator | None = None


def shared_allocator() -> PortAllocator:
    global _shared
    if _shared is None:
        _shared = PortAllocator()
    return _shared
