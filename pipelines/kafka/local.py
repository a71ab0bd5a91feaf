"""A KRaft node on loopback as a child process, for tests and benchmarks.

Runs exactly what a runtime runs (``python -m gyre.pipelines.kafka``) with a config file in a
work directory and free loopback ports, waits until the broker answers metadata requests, and
stops it (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka.admin import AdminClient
from gyre.controlplane import procs
from gyre.pipelines.kafka.config import BrokerConfig, cluster_id_for
from gyre.pipelines.kafka.fetch import ensure_kafka_libs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalKafka:
    """One combined broker+controller node under ``workdir`` (kept across `start` calls)."""

    def __init__(
        self,
        workdir: Path,
        *,
        properties: Mapping[str, str] | None = None,
        heap: str = "512m",
        jvm_opts: str = "",
    ) -> None:
        self.workdir = Path(workdir)
        self.kafka_port = free_port()
        self.controller_port = free_port()
        self.config = BrokerConfig(
            cluster_id=cluster_id_for(str(self.workdir)),
            data_dir=str(self.workdir / "data"),
            heap=heap,
            properties=dict(properties or {}),
        )
        self.jvm_opts = jvm_opts
        self.log_path = self.workdir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def start(self, timeout_s: float = 120.0) -> None:
        ensure_kafka_libs(self.config.version)  # fetch outside the start deadline
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.workdir / "broker.json"
        cfg_path.write_text(self.config.to_json())
        env = dict(os.environ)
        env.update(
            GYRE_CONFIG=str(cfg_path),
            GYRE_PORT_KAFKA=str(self.kafka_port),
            GYRE_PORT_CONTROLLER=str(self.controller_port),
            GYRE_REPLICA_INDEX="0",
            GYRE_REPLICAS="1",
            GYRE_KAFKA_JVM_OPTS=self.jvm_opts,
        )
        # A script that dies before stop() must not leave a broker behind (it runs in its
        # own session, so it would outlive us).
        atexit.register(self.stop)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gyre.pipelines.kafka"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(timeout_s)

    @property
    def pid(self) -> int:
        """The broker's process id (the launcher execs the JVM, so it is the JVM's)."""
        if self.proc is None:
            raise RuntimeError("the broker is not running")
        return self.proc.pid

    def wait_ready(self, timeout_s: float) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "socket.timeout.ms": 2000,
            "logger": logging.getLogger("gyre.kafka.local"),  # not stderr while it starts
        }
        admin = AdminClient(conf)
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if admin.list_topics(timeout=2).brokers:
                    return
            except Exception as e:  # not listening yet
                last_error = e
            if time.monotonic() > deadline:
                raise TimeoutError(f"broker not ready after {timeout_s}s ({last_error}):\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        return procs.log_tail(self.log_path, lines)

    def stop(self, timeout_s: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        procs.stop(proc, timeout_s)

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
