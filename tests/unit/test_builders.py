"""The pure builders: what a Stream and a TrainingJob turn into, checked on their output."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from gyre.api.stream import StreamSpec
from gyre.api.trainingjob import TrainingJobSpec
from gyre.builders import stream as bs
from gyre.builders import trainingjob as bt
from gyre.core.workload import ConfigDirRef, EndpointRef, PeersRef, RestartPolicy, WorkloadKind
from gyre.manifests import repo_root

EXAMPLES = {
    doc["kind"]: doc
    for doc in (
        yaml.safe_load(p.read_text()) for p in sorted((repo_root() / "manifests/examples").glob("*.yaml"))
    )
}


def stream(**changes: Any) -> StreamSpec:
    return StreamSpec.model_validate({**EXAMPLES["Stream"]["spec"], **changes})


def trainingjob(**changes: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({**EXAMPLES["TrainingJob"]["spec"], **changes})


def config_of(workload: Any) -> dict[str, Any]:
    ((_, text),) = [(k, v) for k, v in workload.config_files.items() if k.endswith(".json")]
    data: dict[str, Any] = json.loads(text)
    return data


def test_a_stream_builds_a_collector_and_one_sink_per_lake() -> None:
    spec = stream()
    workloads = bs.build_stream(spec, "demo", "clicks", "kafka.demo.svc:9092")
    names = [w.name for w in workloads]
    lakes = [s.name for s in spec.sinks if s.lake]
    assert names == ["collector", *(f"sink-{n}" for n in lakes)]
    for w in workloads:
        assert w.kind is WorkloadKind.SERVICE
        assert w.env["GYRE_KAFKA_BOOTSTRAP"] == "kafka.demo.svc:9092"
        assert w.env["GYRE_CONFIG"] == ConfigDirRef("config.json")
        assert w.status_port == "http", "the status contract: /status on the http port"
        assert w.readiness is not None
        assert (w.readiness.port, w.readiness.http_path) == ("http", "/healthz")
    collector = config_of(workloads[0])
    assert collector["topic"] == "demo.clicks"
    assert collector["dead_letter_topic"] == "demo.clicks.dlq"
    assert workloads[0].replicas == spec.collector.replicas
    sink = config_of(workloads[1])
    assert sink["group_id"] == f"gyre-demo-clicks-{lakes[0]}"
    assert sink["lake_uri"] == spec.sinks[0].lake.uri  # type: ignore[union-attr]


def test_a_stream_without_a_bootstrap_address_is_an_error() -> None:
    with pytest.raises(ValueError, match="bootstrap"):
        bs.build_stream(stream(), "demo", "clicks", None)


def test_topic_and_dead_letter_specs() -> None:
    spec = stream(topic={"partitions": 6, "retention": "2d", "config": {"min.insync.replicas": "1"}})
    topic = bs.build_topic_spec(spec, "demo", "clicks")
    assert (topic.name, topic.partitions, topic.retention_ms) == ("demo.clicks", 6, 2 * 86_400_000)
    assert topic.config == {"min.insync.replicas": "1"}
    dlq = bs.build_dead_letter_spec(spec, "demo", "clicks")
    assert (dlq.name, dlq.partitions) == ("demo.clicks.dlq", 1)


def test_schema_keeps_key_timestamp_and_enums() -> None:
    spec = stream()
    schema = bs.build_schema(spec)
    assert schema.key_field == spec.schema_.key
    assert schema.timestamp_field == spec.schema_.timestamp_field
    assert [f.name for f in schema.fields] == [f.name for f in spec.schema_.fields]
    enums = {f.name: f.enum for f in schema.fields if f.enum}
    assert enums == {f.name: tuple(f.enum) for f in spec.schema_.fields if f.enum}


@pytest.mark.parametrize(
    ("managed", "workloads", "voters"),
    [
        ({"replicas": 1}, {"kafka": 1}, PeersRef("controller", None)),
        ({"replicas": 3}, {"kafka": 3}, PeersRef("controller", None)),
        (
            {"replicas": 3, "controllers": 3},
            {"kafka-controller": 3, "kafka": 3},
            PeersRef("controller", "kafka-controller"),
        ),
    ],
)
def test_managed_kafka_nodes(managed: dict[str, Any], workloads: dict[str, int], voters: PeersRef) -> None:
    spec = stream(kafka={"managed": managed})
    assert spec.kafka.managed is not None
    nodes = bs.build_kafka_cluster(spec.kafka.managed, "demo", "clicks")
    assert {w.name: w.replicas for w in nodes} == workloads
    brokers = next(w for w in nodes if w.name == "kafka")
    assert brokers.kind is WorkloadKind.STATEFUL
    assert brokers.env["GYRE_KAFKA_VOTERS"] == voters
    assert [v.name for v in brokers.volumes] == ["data"]
    assert brokers.on_kubernetes is not None
    assert brokers.on_kubernetes.image.startswith("apache/kafka:")


def test_a_trainingjob_builds_a_launcher_and_its_workers() -> None:
    spec = trainingjob(workers=3, hyperparameters={"epochs": 2, "batchSize": 32, "learningRate": 0.01})
    launcher, workers = bt.build_trainingjob(spec, "churn", 4, "file:///lake/clicks")
    assert (launcher.name, workers.name) == ("launcher", "worker")
    assert (launcher.kind, workers.kind) == (WorkloadKind.BATCH, WorkloadKind.BATCH)
    assert (launcher.replicas, workers.replicas) == (1, 3)
    assert launcher.status_port == "rendezvous", "the run's /status is the launcher's"
    assert workers.env["GYRE_LAUNCHER_ADDR"] == EndpointRef("rendezvous", "launcher")
    assert workers.restart_policy is RestartPolicy.ON_FAILURE
    assert workers.backoff_limit == spec.run_policy.backoff_limit
    config = config_of(workers)
    assert config == config_of(launcher), "launcher and workers read one config"
    assert config["dataset"]["path"] == "file:///lake/clicks"
    assert config["hyperparameters"]["lr"] == 0.01
    assert config["hyperparameters"]["batch_size"] == 32
    assert config["workers"] == 3
    assert config["model_version"] == "churn-g4"
    assert config["output"] == f"{spec.output.uri.rstrip('/')}/churn-g4"
    assert config["checkpoint"]["dir"] == f"{spec.output.uri.rstrip('/')}/checkpoints/churn-g4"
    assert config["status_linger_s"] == bt.STATUS_LINGER_S


def test_ddp_adds_the_store_port_and_gpus_reach_the_workers() -> None:
    spec = trainingjob(backend="ddp", resources={"cpu": "2", "memory": "4Gi", "gpu": 1})
    launcher, workers = bt.build_trainingjob(spec, "churn", 1, "file:///lake")
    assert [p.name for p in launcher.ports] == ["rendezvous", "store"]
    assert workers.resources.gpu == 1
