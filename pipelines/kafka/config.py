"""The broker node's configuration: a frozen dataclass from ``$GYRE_CONFIG`` and the environment.

The JSON file (written by the Stream builder) holds the cluster-wide settings; the runtime
supplies the per-node ones through the environment:

* ``GYRE_REPLICA_INDEX`` → node id, ``GYRE_REPLICAS`` → number of nodes,
* ``GYRE_PORT_KAFKA`` / ``GYRE_PORT_CONTROLLER`` → the client and controller listener ports,
* ``GYRE_KAFKA_DATA_DIR`` → the data directory (a persistent volume on Kubernetes),
* ``GYRE_KAFKA_LIBS`` → a directory of broker jars to use instead of the Maven cache
  (``/opt/kafka/libs`` in the ``apache/kafka`` image),
* ``GYRE_KAFKA_ADVERTISED`` → ``host[:port]`` clients are told to use (the host part),
* ``GYRE_KAFKA_LISTEN_HOST`` → the address the listeners bind,
* ``GYRE_KAFKA_PEERS`` → ``host:port`` of every node of this workload in index order (this
  node advertises its own entry's host),
* ``GYRE_KAFKA_VOTERS`` → ``host:port`` of the controller listener of every voter, in id order
  (ids from ``GYRE_KAFKA_VOTER_ID_BASE``, default 0),
* ``GYRE_KAFKA_ROLES`` → ``broker`` or ``controller`` for a node with one role only, and
  ``GYRE_KAFKA_NODE_ID_BASE`` → added to the replica index to make the node id (dedicated
  controllers and brokers are separate workloads whose ids must not collide).
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from gyre.pipelines._common.env import (
    ConfigError,
    JsonConfig,
    build_config,
    env_int,
    load_config_json,
    string_map,
)
from gyre.pipelines.kafka.fetch import KAFKA_VERSION

ROLE_COMBINED = "broker,controller"


def cluster_id_for(name: str) -> str:
    """A stable Kafka cluster id (base64url of a UUID, 22 chars) derived from ``name``.

    Builders call this with something stable for the Stream (its namespace/name or uid) so a
    restarted node formats and joins the same cluster.
    """
    salt = 0
    while True:
        raw = uuid.uuid5(uuid.NAMESPACE_URL, f"gyre.dev/kafka/{name}/{salt}").bytes
        cid = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka's tools read a leading dash as an option
            return cid
        salt += 1


@dataclass(frozen=True)
class BrokerConfig(JsonConfig):
    """One KRaft node.

    Fields (JSON keys of the config file are the same names):

    * ``cluster_id``: the Kafka cluster id (`cluster_id_for`); the same for every node and
      across restarts, since storage is formatted with it once.
    * ``node_id``: this node's id; default ``$GYRE_REPLICA_INDEX`` (0).
    * ``nodes``: number of nodes in the cluster; default ``$GYRE_REPLICAS`` (1).
    * ``controllers``: how many nodes (ids ``0..controllers-1``) run the controller role as well
      as the broker role; default all nodes up to 3. The others are brokers only.
    * ``controller_quorum_voters``: ``["0@host:port", ...]``; default: ``voter_addresses``
      numbered from ``voter_id_base``, else one entry per controller from ``advertised_host``
      and ``controller_port`` (a single node votes for itself).
    * ``roles``: ``broker``, ``controller`` or ``broker,controller``; default: by ``controllers``.
    * ``node_id_base``: the id of replica 0 (``node_id`` counts from it).
    * ``data_dir``: where the node keeps its log dirs and generated config; kept across
      restarts (storage is formatted only when it holds no ``meta.properties``).
    * ``listen_host``: the address the listeners bind (``0.0.0.0`` in a pod).
    * ``advertised_host``: the host clients are told to use; ``{index}`` is replaced by the
      node id (``gyre-kafka-{index}.gyre-kafka`` for a StatefulSet).
    * ``kafka_port`` / ``controller_port``: listener ports (``GYRE_PORT_KAFKA`` /
      ``GYRE_PORT_CONTROLLER`` override).
    * ``version``: Kafka version whose jars are used; ``libs_dir`` overrides the jar cache.
    * ``heap``: the JVM's ``-Xmx`` (and half of it as ``-Xms``).
    * ``properties``: extra ``server.properties`` entries; they win over generated ones.
    """

    cluster_id: str
    node_id: int = 0
    nodes: int = 1
    controllers: int | None = None
    controller_quorum_voters: tuple[str, ...] = ()
    voter_addresses: tuple[str, ...] = ()
    voter_id_base: int = 0
    roles: str | None = None
    node_id_base: int = 0
    data_dir: str = "kafka-data"
    listen_host: str = "127.0.0.1"
    advertised_host: str = "127.0.0.1"
    kafka_port: int = 9092
    controller_port: int = 9093
    version: str = KAFKA_VERSION
    libs_dir: str | None = None
    heap: str = "512m"
    properties: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.cluster_id) != 22:
            raise ConfigError("cluster_id must be a 22-character base64 UUID (cluster_id_for)")
        last = self.node_id_base + max(self.nodes, 1) - 1
        if not self.node_id_base <= self.node_id <= last:
            raise ConfigError(f"node_id {self.node_id} is outside {self.node_id_base}..{last}")
        if self.roles not in (None, "broker", "controller", ROLE_COMBINED):
            raise ConfigError(f"roles must be broker, controller or {ROLE_COMBINED}, not {self.roles!r}")
        if self.controllers is not None and not 1 <= self.controllers <= self.nodes:
            raise ConfigError(f"controllers must be within 1..{self.nodes}")

    @property
    def controller_count(self) -> int:
        return self.controllers if self.controllers is not None else min(self.nodes, 3)

    @property
    def process_roles(self) -> str:
        if self.roles:
            return self.roles
        return ROLE_COMBINED if self.node_id - self.node_id_base < self.controller_count else "broker"

    def host_of(self, node_id: int) -> str:
        return self.advertised_host.replace("{index}", str(node_id))

    @property
    def voters(self) -> tuple[str, ...]:
        if self.controller_quorum_voters:
            return self.controller_quorum_voters
        if self.voter_addresses:
            # Combined nodes: only the first `controller_count` of the workload's nodes vote.
            addresses = self.voter_addresses if self.roles else self.voter_addresses[: self.controller_count]
            return tuple(f"{self.voter_id_base + i}@{a}" for i, a in enumerate(addresses))
        return tuple(f"{i}@{self.host_of(i)}:{self.controller_port}" for i in range(self.controller_count))

    @property
    def bootstrap(self) -> str:
        """``host:port`` at which clients reach this node."""
        return f"{self.host_of(self.node_id)}:{self.kafka_port}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = asdict(self)
        d["controller_quorum_voters"] = list(self.controller_quorum_voters)
        d["voter_addresses"] = list(self.voter_addresses)
        d["properties"] = dict(self.properties)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BrokerConfig:
        return build_config(
            cls,
            data,
            "broker config",
            required=("cluster_id",),
            convert={
                "controller_quorum_voters": lambda v: tuple(v or ()),
                "voter_addresses": lambda v: tuple(v or ()),
                "properties": string_map,
            },
        )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> BrokerConfig:
        """The file at ``$GYRE_CONFIG`` overridden by the runtime's environment."""
        env = os.environ if env is None else env
        d = load_config_json(env)
        d.setdefault("cluster_id", env.get("GYRE_KAFKA_CLUSTER_ID") or cluster_id_for("default"))
        d["node_id_base"] = env_int(env, "GYRE_KAFKA_NODE_ID_BASE", int(d.get("node_id_base", 0)))
        index = env_int(
            env, "GYRE_REPLICA_INDEX", int(d.get("node_id", d["node_id_base"])) - d["node_id_base"]
        )
        d["node_id"] = d["node_id_base"] + index
        d["nodes"] = env_int(env, "GYRE_REPLICAS", int(d.get("nodes", 1)))
        d["kafka_port"] = env_int(env, "GYRE_PORT_KAFKA", int(d.get("kafka_port", 9092)))
        d["controller_port"] = env_int(env, "GYRE_PORT_CONTROLLER", int(d.get("controller_port", 9093)))
        if env.get("GYRE_KAFKA_DATA_DIR"):
            d["data_dir"] = env["GYRE_KAFKA_DATA_DIR"]
        if env.get("GYRE_KAFKA_LIBS"):
            d["libs_dir"] = env["GYRE_KAFKA_LIBS"]
        # host[:port] at which clients reach this node, as the runtime resolves it (loopback
        # locally, the headless Service's name on Kubernetes); only the host is used.
        if env.get("GYRE_KAFKA_ADVERTISED"):
            d["advertised_host"] = env["GYRE_KAFKA_ADVERTISED"].rsplit(":", 1)[0]
        if env.get("GYRE_KAFKA_LISTEN_HOST"):
            d["listen_host"] = env["GYRE_KAFKA_LISTEN_HOST"]
        peers = [p for p in env.get("GYRE_KAFKA_PEERS", "").split(",") if p]
        if peers:
            if index >= len(peers):
                raise ConfigError(f"GYRE_KAFKA_PEERS has {len(peers)} entries; this is replica {index}")
            d["advertised_host"] = peers[index].rsplit(":", 1)[0]
        voters = [v for v in env.get("GYRE_KAFKA_VOTERS", "").split(",") if v]
        if voters:
            d["voter_addresses"] = voters
            d["voter_id_base"] = env_int(env, "GYRE_KAFKA_VOTER_ID_BASE", int(d.get("voter_id_base", 0)))
        if env.get("GYRE_KAFKA_ROLES"):
            d["roles"] = env["GYRE_KAFKA_ROLES"]
        return cls.from_dict(d)
