"""Stream status computed from typed facts (no broker, no runtime): what waits, what is ready,
the figures and what is published for dependents."""

from __future__ import annotations

from typing import Any

import yaml
from gyre.api.stream import KafkaClusterStatus, StreamSpec, TopicStatus
from gyre.controllers.base import ObjectMeta, StatusInput
from gyre.controllers.stream import CollectorCounts, KafkaFacts, StreamController, StreamFacts
from gyre.core.workload import Workload, WorkloadKind, WorkloadPhase, WorkloadStatus
from gyre.manifests import repo_root
from gyre.pipelines.lakesink.status import SinkStatus as SinkDoc

SPEC = StreamSpec.model_validate(
    yaml.safe_load((repo_root() / "manifests/examples/01-stream.yaml").read_text())["spec"]
)
META = ObjectMeta(kind="Stream", namespace="demo", name="clicks", uid="u", generation=1)
SINK = f"sink-{SPEC.sinks[0].name}"
WORKLOADS = [Workload(name=n, role=n, kind=WorkloadKind.SERVICE, command=("x",)) for n in ("collector", SINK)]
TOPIC = TopicStatus(name="demo.clicks", partitions=3, dead_letter_topic="demo.clicks.dlq")


def facts(**kw: Any) -> StreamFacts:
    kafka = KafkaFacts(
        bootstrap="127.0.0.1:9092",
        cluster=KafkaClusterStatus(name="clicks", streams=["clicks"], nodes=1, ready_nodes=1),
        cluster_workloads={"kafka": WorkloadStatus("kafka", WorkloadPhase.READY, 1, 1)},
    )
    return StreamFacts(**{"kafka": kafka, "sampled_at": 1000.0, **kw})


def compute(f: StreamFacts, phases: dict[str, WorkloadPhase], old: dict[str, Any] | None = None) -> Any:
    observed = {n: WorkloadStatus(n, p, 1, 1 if p is WorkloadPhase.READY else 0) for n, p in phases.items()}
    inp = StatusInput(META, old or {}, {}, WORKLOADS, observed, f)
    return StreamController().compute_status(SPEC, inp)


def wire(out: Any) -> dict[str, Any]:
    fields: dict[str, Any] = out.status.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return fields


READY = {"collector": WorkloadPhase.READY, SINK: WorkloadPhase.READY}


def test_waits_for_the_topic_and_says_why() -> None:
    out = compute(facts(topic_error="KafkaError: broker down"), READY)
    assert out.phase == "Starting"
    ready = next(c for c in out.conditions if c.type == "Ready")
    assert ready.status is False
    assert "topic (KafkaError: broker down)" in ready.message


def test_waits_for_workloads_not_ready() -> None:
    out = compute(facts(topic=TOPIC), {"collector": WorkloadPhase.RUNNING, SINK: WorkloadPhase.READY})
    ready = next(c for c in out.conditions if c.type == "Ready")
    assert (out.phase, ready.status) == ("Starting", False)
    assert "collector (Running)" in ready.message


def test_ready_with_figures_rates_and_what_dependents_read() -> None:
    doc = SinkDoc(
        topic="demo.clicks", lake="file:///lake", ready=True, lag=7, records_written=90, files_committed=3
    )
    f = facts(
        topic=TOPIC,
        collector_url="http://127.0.0.1:1/v1/events",
        collector=CollectorCounts(accepted=300, rejected=6),
        sinks={SPEC.sinks[0].name: doc},
    )
    old = {"sampledAt": 990.0, "acceptedTotal": 100, "rejectedTotal": 2}
    out = compute(f, READY, old)
    assert out.phase == "Ready"
    w = wire(out)
    assert (w["acceptedTotal"], w["rejectedTotal"], w["deadLetterCount"]) == (300, 6, 6)
    assert (w["acceptedPerSecond"], w["rejectedPerSecond"]) == (20.0, 0.4)  # per 10 s between samples
    assert w["sinks"] == [
        {"name": SPEC.sinks[0].name, "ready": True, "lag": 7, "recordsWritten": 90, "filesCommitted": 3}
    ]
    assert w["maxSinkLag"] == 7
    assert w["topic"] == {"name": "demo.clicks", "partitions": 3, "deadLetterTopic": "demo.clicks.dlq"}
    assert w["lakeUri"] == SPEC.sinks[0].lake.uri  # type: ignore[union-attr]
    assert [f["name"] for f in w["schemaFields"]] == [f.name for f in SPEC.schema_.fields]


def test_a_restarted_collector_gives_no_negative_rate() -> None:
    f = facts(topic=TOPIC, collector=CollectorCounts(accepted=5, rejected=0))
    out = compute(f, READY, {"sampledAt": 990.0, "acceptedTotal": 100, "rejectedTotal": 2})
    assert "acceptedPerSecond" not in wire(out)
    assert wire(out)["acceptedTotal"] == 5


def test_ignored_cluster_settings_degrade_but_do_not_block() -> None:
    f = facts(topic=TOPIC)
    f.kafka = KafkaFacts(
        bootstrap="127.0.0.1:9092", cluster_conflict="Kafka cluster 'shared' is defined by Stream 'a'"
    )
    out = compute(f, READY)
    degraded = next(c for c in out.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == (True, "ClusterSettingsIgnored")
    assert out.phase == "Ready"
