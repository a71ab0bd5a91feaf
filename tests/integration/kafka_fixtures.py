"""Fixtures for the stream data plane's integration tests: a real KRaft broker and workloads.

Load with ``pytest_plugins = ["tests.integration.kafka_fixtures"]`` in a test module. `LocalKafka`
runs ``python -m gyre.pipelines.kafka`` (the workload entrypoint) in a temp dir on free loopback
ports; the session-scoped `kafka_broker` is one of them, stopped after the session; `Workload` runs the
collector and lake sink entrypoints as child processes, the way the local runtime does.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Message
from confluent_kafka.admin import AdminClient
from gyre.controlplane import procs
from gyre.pipelines._common.schema import StreamSchema
from gyre.pipelines.kafka.config import BrokerConfig, cluster_id_for
from gyre.pipelines.kafka.fetch import ensure_kafka_libs

from tests.support import eventually, free_port


class LocalKafka:
    """One combined broker+controller KRaft node under ``workdir`` (kept across `start` calls).

    Runs exactly what a runtime runs (``python -m gyre.pipelines.kafka``) with a config file in
    the work directory and free loopback ports, waits until the broker answers metadata
    requests, and stops it (SIGTERM, then SIGKILL) on `stop` or at exit.
    """

    def __init__(
        self, workdir: Path, *, properties: Mapping[str, str] | None = None, heap: str = "512m"
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
        self.log_path = self.workdir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def pid(self) -> int:
        """The broker's process id (the launcher execs the JVM, so it is the JVM's)."""
        if self.proc is None:
            raise RuntimeError("the broker is not running")
        return self.proc.pid

    def start(self, timeout_s: float = 120.0) -> None:
        ensure_kafka_libs(self.config.version)  # fetch outside the start deadline
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.workdir / "broker.json"
        cfg_path.write_text(self.config.to_json())
        env = {
            **os.environ,
            "GYRE_CONFIG": str(cfg_path),
            "GYRE_PORT_KAFKA": str(self.kafka_port),
            "GYRE_PORT_CONTROLLER": str(self.controller_port),
            "GYRE_REPLICA_INDEX": "0",
            "GYRE_REPLICAS": "1",
        }
        # A test process that dies before stop() must not leave a broker behind (it runs in
        # its own session, so it would outlive us).
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

    def wait_ready(self, timeout_s: float) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "socket.timeout.ms": 2000,
            "logger": logging.getLogger("tests.kafka"),  # not stderr while it starts
        }
        admin = AdminClient(conf)

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log_tail()}")
            return bool(admin.list_topics(timeout=2).brokers)

        eventually(answers, timeout_s, 0.2, f"the broker at {self.bootstrap}", retry_on=(KafkaException,))

    def log_tail(self, lines: int = 40) -> str:
        return procs.log_tail(self.log_path, lines)

    def stop(self, timeout_s: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        procs.stop(proc, timeout_s)

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


CLICK_SCHEMA = StreamSchema.from_dict(
    {
        "fields": [
            {"name": "event_id", "type": "long", "required": True},
            {"name": "user_id", "type": "string", "required": True},
            {"name": "ts", "type": "timestamp", "required": True},
            {"name": "kind", "type": "string", "required": True, "enum": ["click", "view"]},
            {"name": "page", "type": "string"},
            {"name": "dwell_ms", "type": "int"},
            {"name": "price", "type": "double"},
            {"name": "score", "type": "float"},
            {"name": "is_bot", "type": "boolean"},
        ],
        "key_field": "user_id",
        "timestamp_field": "ts",
    }
)


class Workload:
    """A workload entrypoint run as a child process with a config file, like the runtime."""

    def __init__(self, module: str, config_json: str, workdir: Path, env: dict[str, str]) -> None:
        self.module = module
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{module.rsplit('.', 1)[-1]}.json"
        self.config_path.write_text(config_json)
        self.log_path = workdir / f"{module.rsplit('.', 1)[-1]}.log"
        self.port = free_port()
        self.env = {
            **os.environ,
            "GYRE_CONFIG": str(self.config_path),
            "GYRE_PORT_HTTP": str(self.port),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Workload:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> Workload:
        def ready() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log_tail()
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        eventually(ready, timeout_s, 0.1, f"{self.module} ready\n{self.log_tail()}")
        return self

    def kill(self) -> None:
        """SIGKILL: no flush, no cleanup, the process just stops."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        procs.stop(proc, timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        return procs.log_tail(self.log_path, lines)

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())


def consume(broker: LocalKafka, topic: str, count: int, timeout_s: float = 30) -> list[Message]:
    """At least ``count`` records of ``topic`` from its start, read by a consumer group of its own
    (which commits nothing); fails after ``timeout_s``."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[Message] = []
    try:

        def enough() -> bool:
            for m in consumer.consume(num_messages=1000, timeout=0.5):
                assert m.error() is None, m.error()
                out.append(m)
            return len(out) >= count

        eventually(enough, timeout_s, 0, f"{count} records in {topic}")
    finally:
        consumer.close()
    return out


def post_events(
    url: str, events: Any, token: str | None = None, query: str = "", timeout_s: float = 60.0
) -> tuple[int, dict[str, str], Any]:
    """POST a JSON body to ``/v1/events``; (status, headers, decoded body)."""
    body = events if isinstance(events, bytes) else json.dumps(events).encode()
    req = urllib.request.Request(url + "/v1/events" + query, data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            decoded: Any = json.loads(raw)
        except ValueError:
            decoded = raw.decode(errors="replace")
        return e.code, dict(e.headers), decoded


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def make_event(i: int, *, day_span: int = 3) -> dict[str, Any]:
    """A valid click event with a unique ``event_id``; timestamps spread over a few days."""
    return {
        "event_id": i,
        "user_id": f"user-{i % 97}",
        "ts": 1_714_521_600_000 + (i % day_span) * 86_400_000 + i % 1000,
        "kind": "click" if i % 3 else "view",
        "page": f"/p/{i % 13}",
        "dwell_ms": i % 5000,
        "price": (i % 100) / 4,
        "score": 0.5,
        "is_bot": i % 11 == 0,
    }
