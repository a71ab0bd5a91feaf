"""Pure checks of the stream workloads' configuration: broker properties, config round trips,
event validation. No services needed (they live beside the integration tests they support)."""

from __future__ import annotations

from typing import Any

import pytest
from gyre.pipelines._common.env import ConfigError
from gyre.pipelines._common.schema import StreamSchema
from gyre.pipelines.collector.config import CollectorConfig
from gyre.pipelines.collector.validate import compile_validator, parse_timestamp_ms
from gyre.pipelines.kafka.broker import build_server_properties, server_properties_template
from gyre.pipelines.kafka.config import BrokerConfig, cluster_id_for
from gyre.pipelines.lakesink.arrow import lake_schema
from gyre.pipelines.lakesink.config import LakeSinkConfig

from tests.integration.kafka_fixtures import CLICK_SCHEMA


def test_cluster_id_is_stable_and_valid() -> None:
    a = cluster_id_for("default/clicks")
    assert a == cluster_id_for("default/clicks")
    assert a != cluster_id_for("default/views")
    assert len(a) == 22
    assert not any(cluster_id_for(f"s{i}").startswith("-") for i in range(200))


def test_single_node_is_a_combined_broker_and_controller() -> None:
    cfg = BrokerConfig.load(
        {"GYRE_PORT_KAFKA": "19092", "GYRE_PORT_CONTROLLER": "19093", "GYRE_KAFKA_DATA_DIR": "/d"}
    )
    props = build_server_properties(cfg)
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "0@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["log.dirs"] == "/d/kraft"
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"


@pytest.mark.parametrize(
    ("index", "roles"), [(0, "broker,controller"), (2, "broker,controller"), (3, "broker")]
)
def test_larger_clusters_have_three_controllers_and_brokers(index: int, roles: str) -> None:
    cfg = BrokerConfig.from_dict(
        {
            "cluster_id": cluster_id_for("x"),
            "nodes": 5,
            "node_id": index,
            "advertised_host": "kafka-{index}.kafka.ns.svc",
            "listen_host": "0.0.0.0",
            "properties": {"num.network.threads": "2"},
        }
    )
    props = build_server_properties(cfg)
    assert props["process.roles"] == roles
    assert props["controller.quorum.voters"] == ",".join(f"{i}@kafka-{i}.kafka.ns.svc:9093" for i in range(3))
    assert props["advertised.listeners"].startswith(f"PLAINTEXT://kafka-{index}.kafka.ns.svc:9092")
    assert ("CONTROLLER://" in props["listeners"]) == (roles != "broker")
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["num.network.threads"] == "2"
    assert BrokerConfig.from_json(cfg.to_json()) == cfg


def test_broker_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="cluster_id"):
        BrokerConfig.from_dict({"cluster_id": "short"})
    with pytest.raises(ConfigError, match="unknown fields"):
        BrokerConfig.from_dict({"cluster_id": cluster_id_for("x"), "replicas": 3})


def test_workload_configs_round_trip_through_json() -> None:
    c = CollectorConfig(
        topic="clicks", schema=CLICK_SCHEMA, dead_letter_topic="clicks.dlq",
        auth_token_file="/var/run/secrets/token", producer_config={"batch.size": "65536"},
    )  # fmt: skip
    assert CollectorConfig.from_json(c.to_json()) == c
    s = LakeSinkConfig(topic="clicks", schema=CLICK_SCHEMA, lake_uri="s3://lake/clicks")
    assert LakeSinkConfig.from_json(s.to_json()) == s


def test_env_overrides_runtime_values(tmp_path: Any) -> None:
    path = tmp_path / "sink.json"
    path.write_text(LakeSinkConfig(topic="clicks", schema=CLICK_SCHEMA, lake_uri="/lake").to_json())
    cfg = LakeSinkConfig.load(
        {
            "GYRE_CONFIG": str(path),
            "GYRE_KAFKA_BOOTSTRAP": "10.0.0.1:9092",
            "GYRE_PORT_HTTP": "8099",
            "GYRE_REPLICA_INDEX": "1",
            "GYRE_REPLICAS": "2",
        }
    )
    assert (cfg.bootstrap_servers, cfg.port, cfg.replica_index, cfg.replicas) == (
        "10.0.0.1:9092", 8099, 1, 2,
    )  # fmt: skip


def test_idempotence_cannot_be_configured_away() -> None:
    c = CollectorConfig(
        topic="t", schema=CLICK_SCHEMA, producer_config={"acks": "1", "enable.idempotence": "false"}
    )
    settings = c.producer_settings()
    assert (settings["acks"], settings["enable.idempotence"]) == ("all", "true")


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"fields": [], "key_field": "a", "timestamp_field": "t"}, "at least one field"),
        (
            {"fields": [{"name": "a", "type": "string"}], "key_field": "a", "timestamp_field": "a"},
            "must have type 'timestamp'",
        ),
        (
            {"fields": [{"name": "a", "type": "uuid"}], "key_field": "a", "timestamp_field": "a"},
            "type 'uuid'",
        ),
        (
            {
                "fields": [{"name": "t", "type": "timestamp"}, {"name": "b", "type": "boolean",
                                                                "enum": [True]}],
                "key_field": "b", "timestamp_field": "t",
            },
            "enum is allowed",
        ),
    ],
)  # fmt: skip
def test_invalid_schemas_are_config_errors(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StreamSchema.from_dict(schema)


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({"event_id": 1, "user_id": "u", "ts": 0, "kind": "view"}, None),
        ({"event_id": 1, "user_id": "u", "ts": 0, "kind": "view", "extra": [1]}, None),
        ({"event_id": True, "user_id": "u", "ts": 0, "kind": "view"}, "type_mismatch"),
        ({"event_id": 2**63, "user_id": "u", "ts": 0, "kind": "view"}, "out_of_range"),
        ({"event_id": 1, "user_id": None, "ts": 0, "kind": "view"}, "missing_field"),
        ({"event_id": 1, "user_id": "u", "ts": 0, "kind": "view", "dwell_ms": 2**31}, "out_of_range"),
        ({"event_id": 1, "user_id": "u", "ts": 0, "kind": "view", "price": "1"}, "type_mismatch"),
        ({"event_id": 1, "user_id": "u", "ts": 0, "kind": "view", "price": 3}, None),
        ({"event_id": 1, "user_id": "u", "ts": 0, "kind": "view", "page": None}, None),
        ({"event_id": 1, "user_id": "u", "ts": "2024-01-01", "kind": "view"}, "bad_timestamp"),
        ({"event_id": 1, "user_id": "u", "ts": 1.5, "kind": "view"}, "type_mismatch"),
        ([], "not_object"),
    ],
)
def test_validator(event: Any, code: str | None) -> None:
    verdict = compile_validator(CLICK_SCHEMA)(event)
    assert (verdict[0] if verdict else None) == code


def test_extra_field_policies() -> None:
    base = CLICK_SCHEMA.to_dict()
    event = {"event_id": 1, "user_id": "u", "ts": 0, "kind": "view", "extra": 1}
    reject = compile_validator(StreamSchema.from_dict({**base, "extra_fields": "reject"}))
    assert reject(dict(event)) == ("unknown_field", "undeclared fields: extra")
    drop = compile_validator(StreamSchema.from_dict({**base, "extra_fields": "drop"}))
    dropped = dict(event)
    assert drop(dropped) is None
    assert "extra" not in dropped


def test_timestamps_are_normalised_to_epoch_millis() -> None:
    assert parse_timestamp_ms("1970-01-01T00:00:01Z") == 1000
    assert parse_timestamp_ms("2024-05-01T12:00:00.123+02:00") == 1_714_557_600_123
    assert parse_timestamp_ms("2024-05-01T12:00:00") is None  # no offset
    assert parse_timestamp_ms("not a time") is None


def test_lake_schema_types_and_provenance_columns() -> None:
    schema = lake_schema(CLICK_SCHEMA)
    assert schema.names[-2:] == ["_kafka_partition", "_kafka_offset"]
    assert str(schema.field("ts").type) == "timestamp[ms, tz=UTC]"
    assert not schema.field("user_id").nullable
    assert schema.field("page").nullable


def test_peers_and_voters_from_the_runtime_make_each_node_advertise_itself(tmp_path: Any) -> None:
    (tmp_path / "c.json").write_text(BrokerConfig(cluster_id=cluster_id_for("p"), nodes=3).to_json())
    env = {
        "GYRE_CONFIG": str(tmp_path / "c.json"),
        "GYRE_REPLICA_INDEX": "1",
        "GYRE_REPLICAS": "3",
        "GYRE_KAFKA_PEERS": "127.0.0.1:4000,127.0.0.1:4001,127.0.0.1:4002",
        "GYRE_KAFKA_VOTERS": "127.0.0.1:5000,127.0.0.1:5001,127.0.0.1:5002",
        "GYRE_PORT_KAFKA": "4001",
        "GYRE_PORT_CONTROLLER": "5001",
    }
    cfg = BrokerConfig.load(env)
    props = build_server_properties(cfg)
    assert props["node.id"] == "1"
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "0@127.0.0.1:5000,1@127.0.0.1:5001,2@127.0.0.1:5002"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:4001,CONTROLLER://127.0.0.1:5001"


def test_dedicated_controllers_and_brokers_have_distinct_ids_and_listeners(tmp_path: Any) -> None:
    cid = cluster_id_for("d")
    voters = {"GYRE_KAFKA_VOTERS": "h0:9093,h1:9093,h2:9093", "GYRE_KAFKA_VOTER_ID_BASE": "100"}
    (tmp_path / "b.json").write_text(BrokerConfig(cluster_id=cid, nodes=3, roles="broker").to_json())
    broker = BrokerConfig.load(
        {"GYRE_CONFIG": str(tmp_path / "b.json"), "GYRE_REPLICA_INDEX": "2", "GYRE_REPLICAS": "3", **voters}
    )
    ctl_cfg = BrokerConfig(cluster_id=cid, nodes=3, roles="controller", node_id_base=100, node_id=100)
    (tmp_path / "c.json").write_text(ctl_cfg.to_json())
    controller = BrokerConfig.load(
        {"GYRE_CONFIG": str(tmp_path / "c.json"), "GYRE_REPLICA_INDEX": "2", "GYRE_REPLICAS": "3", **voters}
    )
    b, c = build_server_properties(broker), build_server_properties(controller)
    assert (b["node.id"], b["process.roles"], c["node.id"], c["process.roles"]) == (
        "2",
        "broker",
        "102",
        "controller",
    )
    assert (
        b["controller.quorum.voters"]
        == c["controller.quorum.voters"]
        == "100@h0:9093,101@h1:9093,102@h2:9093"
    )
    # A controller-only node listens on the controller listener alone and has no broker listener.
    assert c["listeners"] == "CONTROLLER://127.0.0.1:9093"
    assert "inter.broker.listener.name" not in c
    assert b["listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert b["inter.broker.listener.name"] == "PLAINTEXT"


def test_a_node_outside_the_peer_list_is_a_config_error(tmp_path: Any) -> None:
    (tmp_path / "c.json").write_text(BrokerConfig(cluster_id=cluster_id_for("x"), nodes=3).to_json())
    env = {
        "GYRE_CONFIG": str(tmp_path / "c.json"),
        "GYRE_REPLICA_INDEX": "2",
        "GYRE_KAFKA_PEERS": "h0:1,h1:1",
    }
    with pytest.raises(ConfigError, match="GYRE_KAFKA_PEERS has 2 entries"):
        BrokerConfig.load(env)


def test_the_properties_template_leaves_per_node_values_to_the_start_script() -> None:
    text = server_properties_template(BrokerConfig(cluster_id=cluster_id_for("t"), nodes=3), "/data/kraft")
    lines = dict(line.split("=", 1) for line in text.splitlines())
    assert lines["node.id"] == "@NODE_ID@"
    assert lines["controller.quorum.voters"] == "@VOTERS@"
    assert lines["advertised.listeners"] == "PLAINTEXT://@HOST@:9092,CONTROLLER://@HOST@:9093"
    assert lines["log.dirs"] == "/data/kraft"
