"""A real redis-server (Debian's package, installed by make setup) on a loopback port."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from gyre.controlplane.procs import free_port

from tests.support import eventually


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is installed by scripts/setup.sh (make setup)")
    redis = pytest.importorskip("redis", reason="redis-py is in the features extra")
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        eventually(
            lambda: redis.Redis.from_url(url).ping(),
            timeout=20,
            interval=0.1,
            what="redis-server",
            retry_on=(AssertionError, redis.exceptions.ConnectionError),
        )
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
