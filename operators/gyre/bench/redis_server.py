"""A real redis-server for the benchmarks that read an online store (Debian's package)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from gyre.controlplane.procs import free_port


def start_redis_server(workdir: Path, timeout_s: float = 20.0) -> tuple[subprocess.Popen[bytes], int] | None:
    """A redis-server on a free loopback port, answering PING, with nothing saved to disk;
    None when it is not installed. The caller stops it."""
    if shutil.which("redis-server") is None:
        return None
    import redis

    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return proc, port
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(
                    f"redis-server did not answer on port {port} within {timeout_s:g} s"
                ) from None
            time.sleep(0.1)
