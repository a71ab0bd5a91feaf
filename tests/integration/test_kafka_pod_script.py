"""The start script a Kafka pod runs on Kubernetes, run here as a pod would run it.

The kubernetes runtime gives each node of a managed cluster the ``apache/kafka`` image, a
shell script and the cluster's properties in a ConfigMap. This test renders the StatefulSet
and ConfigMap the operator applies, then runs the script under ``/bin/sh`` with the pod's
environment (the ConfigMap's files in a directory, the pod index, a data directory), against a
``KAFKA_HOME`` whose ``bin/`` scripts start the real Kafka classes from the Maven Central jars
(as the image's ``kafka-run-class.sh`` does). Ports are moved off 9092/9093 so the test can run
beside anything else. It proves the script's id, host and voter substitution, the one-time
format, and that the broker it starts serves clients, restarts on the same data, and is the
node the properties name.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from gyre.api.stream import ManagedKafka
from gyre.builders.stream import KAFKA_DATA, build_kafka_cluster
from gyre.core.workload import Owner
from gyre.pipelines.kafka.fetch import KAFKA_VERSION, ensure_kafka_libs
from gyre.runtimes import k8s_render as r
from gyre.runtimes.k8s_render import CONFIG_DIR

from tests.support import eventually, free_port

pytestmark = pytest.mark.integration

NS = "ml"


def _bin(home: Path, name: str, main_class: str, libs: Path) -> None:
    script = home / "bin" / name
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        f'#!/bin/sh\nexec java ${{KAFKA_HEAP_OPTS:-"-Xmx512m"}} -cp "{libs}/*" {main_class} "$@"\n'
    )
    script.chmod(0o755)


@pytest.fixture
def kafka_home(tmp_path: Path) -> Path:
    libs = ensure_kafka_libs(KAFKA_VERSION)
    home = tmp_path / "kafka-home"
    _bin(home, "kafka-storage.sh", "kafka.tools.StorageTool", libs)
    _bin(home, "kafka-server-start.sh", "kafka.Kafka", libs)
    return home


def pod_env(manifest: dict[str, Any], index: int, files: Path, data: Path) -> dict[str, str]:
    """The container env as the kubelet would set it (downward API, mounted paths moved)."""
    env: dict[str, str] = {}
    for entry in manifest["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "valueFrom" in entry:  # the pod index from the downward API
            env[entry["name"]] = str(index)
            continue
        value = str(entry["value"]).replace(CONFIG_DIR, str(files)).replace(KAFKA_DATA, str(data))
        env[entry["name"]] = value
    return env


def test_the_pod_script_formats_once_and_starts_a_broker_that_serves_and_restarts(
    tmp_path: Path, kafka_home: Path
) -> None:
    (workload,) = build_kafka_cluster(ManagedKafka(replicas=1), NS, "events")
    manifests = r.render(Owner("KafkaCluster", NS, "events", ""), [workload], NS)
    sts = next(m for m in manifests if m["kind"] == "StatefulSet")
    config_map = next(m for m in manifests if m["kind"] == "ConfigMap")
    kafka_port, controller_port = free_port(), free_port()
    files, data = tmp_path / "config", tmp_path / "data"
    files.mkdir()
    for name, text in config_map["data"].items():
        text = text.replace(":9092", f":{kafka_port}").replace(":9093", f":{controller_port}")
        (files / name).write_text(text.replace(KAFKA_DATA, str(data)))
    env = pod_env(sts, 0, files, data)
    assert env["GYRE_KAFKA_PEERS"] == f"events-kafka-0.events-kafka.{NS}.svc:9092"
    # The pod's DNS name does not resolve here: the node advertises loopback instead.
    env["GYRE_KAFKA_PEERS"] = f"127.0.0.1:{kafka_port}"
    env["GYRE_KAFKA_VOTERS"] = f"127.0.0.1:{controller_port}"
    env.update(KAFKA_HOME=str(kafka_home), PATH=os.environ["PATH"], HOME=str(tmp_path))
    command = sts["spec"]["template"]["spec"]["containers"][0]["command"]
    bootstrap = f"127.0.0.1:{kafka_port}"
    log_path = tmp_path / "pod.log"

    with log_path.open("ab") as log:
        for attempt in range(2):  # a first start, then a restart on the same volume
            proc = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                admin = AdminClient({"bootstrap.servers": bootstrap})

                def serving(proc: subprocess.Popen[bytes] = proc, admin: AdminClient = admin) -> bool:
                    assert proc.poll() is None, "the broker exited:\n" + log_path.read_text()[-3000:]
                    try:
                        return len(admin.list_topics(timeout=2).brokers) == 1
                    except KafkaException:
                        return False  # not listening yet

                eventually(serving, timeout=120, interval=0.5, what="the broker to answer")
                if attempt == 0:
                    admin.create_topics([NewTopic("t", num_partitions=2, replication_factor=1)])["t"].result(
                        30
                    )
                else:
                    assert len(admin.list_topics("t", timeout=10).topics["t"].partitions) == 2
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    props = dict(
        line.split("=", 1)
        for line in (data / "config" / "server.properties").read_text().splitlines()
        if "=" in line
    )
    assert props["node.id"] == "0"
    assert props["controller.quorum.voters"] == f"0@{env['GYRE_KAFKA_VOTERS']}"
    assert props["advertised.listeners"].startswith(f"PLAINTEXT://{bootstrap},")
    meta = (data / "kraft" / "meta.properties").read_text()
    assert f"cluster.id={env['GYRE_KAFKA_CLUSTER_ID']}" in meta
    log = log_path.read_text()
    assert log.count("Formatting metadata directory") == 1  # on the first start only
    assert "already formatted" in log
