"""Running one KRaft node: render ``server.properties``, format storage once, exec the JVM.

`build_server_properties` is pure; `prepare` does the file-system work (config files, the
one-time ``StorageTool format``); `exec_broker` replaces this process with the broker so the
process a runtime supervises (and signals) is the broker itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from gyre.pipelines.kafka.config import BrokerConfig
from gyre.pipelines.kafka.fetch import ensure_kafka_libs

# One logging configuration for every node: the local runtime writes it beside the node's
# config, the Kafka image (images/kafka) copies it to /opt/kafka/config.
LOG4J2_PROPERTIES = Path(__file__).with_name("log4j2.properties")


def build_server_properties(cfg: BrokerConfig) -> dict[str, str]:
    """The node's ``server.properties`` as a dict (pure)."""
    roles = cfg.process_roles
    data = Path(cfg.data_dir).absolute()
    brokers = cfg.nodes
    host = cfg.host_of(cfg.node_id - cfg.node_id_base)
    listeners, advertised = [], []
    if "broker" in roles:
        listeners.append(f"PLAINTEXT://{cfg.listen_host}:{cfg.kafka_port}")
        advertised.append(f"PLAINTEXT://{host}:{cfg.kafka_port}")
    if "controller" in roles:
        listeners.append(f"CONTROLLER://{cfg.listen_host}:{cfg.controller_port}")
        advertised.append(f"CONTROLLER://{host}:{cfg.controller_port}")
    props = {
        "process.roles": roles,
        "node.id": str(cfg.node_id),
        "controller.quorum.voters": ",".join(cfg.voters),
        "controller.listener.names": "CONTROLLER",
        "listeners": ",".join(listeners),
        "advertised.listeners": ",".join(advertised),
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data / "kraft"),
        "num.partitions": "1",
        "default.replication.factor": str(min(brokers, 3)),
        "min.insync.replicas": str(min(brokers, 2) if brokers >= 3 else 1),
        "offsets.topic.replication.factor": str(min(brokers, 3)),
        "transaction.state.log.replication.factor": str(min(brokers, 3)),
        "transaction.state.log.min.isr": str(min(brokers, 2)),
        "share.coordinator.state.topic.replication.factor": str(min(brokers, 3)),
        "share.coordinator.state.topic.min.isr": str(min(brokers, 2)),
        # Topics are converged by the operator (gyre.controllers.topics); a typo in a
        # client's topic name must fail, not create a stray topic.
        "auto.create.topics.enable": "false",
        "log.retention.check.interval.ms": "60000",
    }
    if "broker" in roles:
        props["inter.broker.listener.name"] = "PLAINTEXT"
    if brokers == 1:
        # One node is a development cluster: no peers to wait for before the first rebalance,
        # and a small offsets topic keeps the first consumer group quick to create.
        props["group.initial.rebalance.delay.ms"] = "0"
        props["offsets.topic.num.partitions"] = "10"
    props.update(cfg.properties)
    return props


def server_properties_template(cfg: BrokerConfig, log_dirs: str) -> str:
    """The properties of any node of ``cfg``'s workload, with ``@NODE_ID@``, ``@HOST@`` and
    ``@VOTERS@`` left for the node to fill in at start (a vendor image's start script)."""
    props = build_server_properties(
        replace(cfg, advertised_host="@HOST@", controller_quorum_voters=("@VOTERS@",))
    )
    props["node.id"] = "@NODE_ID@"
    props["log.dirs"] = log_dirs
    return render_properties(props)


def render_properties(props: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in sorted(props.items()))


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise RuntimeError("java (17+) is needed to run the Kafka broker")
    return found


def _log(cfg: BrokerConfig, msg: str) -> None:
    print(f"gyre-kafka node {cfg.node_id}: {msg}", file=sys.stderr, flush=True)


def prepare(cfg: BrokerConfig) -> tuple[Path, Path, Path]:
    """Write the config files and format storage if needed; (libs, properties, log4j2)."""
    libs = Path(cfg.libs_dir) if cfg.libs_dir else ensure_kafka_libs(cfg.version)
    data = Path(cfg.data_dir).absolute()
    conf = data / "config"
    conf.mkdir(parents=True, exist_ok=True)
    props_path = conf / "server.properties"
    props_path.write_text(render_properties(build_server_properties(cfg)))
    log4j_path = conf / "log4j2.properties"
    log4j_path.write_text(LOG4J2_PROPERTIES.read_text())
    if not (data / "kraft" / "meta.properties").exists():
        cmd = [
            _java(), "-Xmx256m", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
            f"-Dlog4j2.configurationFile={log4j_path}",
            "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
            f"--cluster-id={cfg.cluster_id}", f"--config={props_path}", "--ignore-formatted",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"formatting storage failed:\n{proc.stdout}{proc.stderr}")
        _log(cfg, f"formatted storage in {data / 'kraft'} for cluster {cfg.cluster_id}")
    return libs, props_path, log4j_path


def broker_command(cfg: BrokerConfig, libs: Path, props: Path, log4j: Path) -> list[str]:
    heap = cfg.heap
    return [
        _java(),
        f"-Xmx{heap}",
        f"-Xms{_half(heap)}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        *os.environ.get("GYRE_KAFKA_JVM_OPTS", "").split(),
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(props),
    ]


def _half(heap: str) -> str:
    unit = heap[-1] if heap[-1].isalpha() else ""
    number = heap[:-1] if unit else heap
    try:
        return f"{max(int(number) // 2, 1)}{unit}"
    except ValueError:
        return heap


def exec_broker(cfg: BrokerConfig) -> None:
    """Prepare the node, then replace this process with the broker JVM (never returns)."""
    libs, props, log4j = prepare(cfg)
    cmd = broker_command(cfg, libs, props, log4j)
    _log(cfg, f"starting Kafka {cfg.version} ({cfg.process_roles}) on {cfg.bootstrap}")
    os.execv(cmd[0], cmd)
