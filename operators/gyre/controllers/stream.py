"""Stream reconcile: Kafka (managed or external), the topic and its dead-letter topic, the
collector and the sinks, and the figures a user wants at a glance.

A managed cluster belongs to every Stream of the namespace that names it (``kafka.managed.
cluster``, by default the Stream's own name): its nodes run under a shared owner
(``KafkaCluster/<name>``) whose users are those Streams, the oldest of which defines its
settings. Each pass converges the cluster first (`prepare`), then the Stream's own collector
and sinks, then the topics with Kafka's admin API once the brokers answer. A topic change Kafka
cannot make (fewer partitions, another replication factor) is a `Degraded` condition, never a
retry loop.

Deleting a Stream stops its collector and sinks; the cluster stops when its last user goes
(on Kubernetes the garbage collector does it through the users' owner references, even with
the operator down). Topics and the lake are kept (data outlives the resource that wrote it);
so is a local cluster's data directory, while Kubernetes deletes the cluster's volume claims
with its StatefulSet.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gyre.api.stream import (
    FieldStatus,
    KafkaClusterStatus,
    ManagedKafka,
    SinkStatus,
    StreamSpec,
    StreamStatus,
    TopicStatus,
)
from gyre.builders.stream import (
    BROKER,
    COLLECTOR,
    build_dead_letter_spec,
    build_kafka_cluster,
    build_stream,
    build_topic_spec,
    cluster_name,
    sink_workload_name,
)
from gyre.controllers.base import (
    Controller,
    Listing,
    ObjectMeta,
    Resolved,
    StatusInput,
    StatusOutput,
)
from gyre.controllers.topics import TopicAdminError, ensure_topic
from gyre.core import conditions as cnd
from gyre.core.children import ChildKind
from gyre.core.workload import Owner, Workload, WorkloadPhase, WorkloadStatus
from gyre.pipelines.collector.status import CollectorStatus
from gyre.pipelines.lakesink.status import SinkStatus as SinkDoc
from gyre.runtimes.base import Runtime

POLL_S = 2.0
REFRESH_S = 15.0  # figures (rates, lag) of a Ready Stream are refreshed this often
ADMIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CollectorCounts:
    """Events the collector replicas accepted and rejected, summed from their `/status`."""

    accepted: int
    rejected: int


@dataclass(frozen=True)
class KafkaFacts:
    """What `prepare` learned of the Kafka cluster the Stream uses."""

    bootstrap: str | None  # None: a managed cluster whose broker has no address yet
    cluster: KafkaClusterStatus | None = None  # a managed cluster
    cluster_workloads: Mapping[str, WorkloadStatus] = field(default_factory=dict)
    cluster_conflict: str | None = None  # this Stream's cluster settings are not the ones used


@dataclass
class StreamFacts:
    """What a pass learned: the cluster, the topics, and the workloads' `/status`."""

    kafka: KafkaFacts
    sampled_at: float  # when the figures were read
    topic: TopicStatus | None = None
    topic_problems: list[str] = field(default_factory=list)
    topic_error: str | None = None
    collector_url: str | None = None
    collector: CollectorCounts | None = None
    sinks: dict[str, SinkDoc] = field(default_factory=dict)


KAFKA_CLUSTER = "KafkaCluster"
"""The kind of the shared owner a managed cluster's nodes run under (not a resource)."""


def cluster_owner(namespace: str, cluster: str, users: tuple[Owner, ...] = ()) -> Owner:
    return Owner(kind=KAFKA_CLUSTER, namespace=namespace, name=cluster, uid="", users=users)


@dataclass(frozen=True)
class ClusterUser:
    name: str
    uid: str
    created: str
    managed: ManagedKafka


def cluster_users(
    cluster: str, namespace: str, listing: Listing, this: tuple[ObjectMeta, StreamSpec] | None = None
) -> list[ClusterUser]:
    """The Streams of ``namespace`` using managed cluster ``cluster``, oldest first.

    ``this`` is the Stream being reconciled, with its current spec: the index may not hold it
    yet, or hold an older spec.
    """
    users: dict[str, ClusterUser] = {}
    for body in listing("Stream", namespace):
        md = body.get("metadata") or {}
        try:
            spec = StreamSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            continue  # an invalid Stream uses nothing
        if spec.kafka.managed is None or cluster_name(spec, str(md.get("name"))) != cluster:
            continue
        uid = str(md.get("uid") or "")
        users[uid] = ClusterUser(
            str(md.get("name")), uid, str(md.get("creationTimestamp") or ""), spec.kafka.managed
        )
    if this is not None:
        meta, spec = this
        users.pop(meta.uid, None)
        if spec.kafka.managed is not None and cluster_name(spec, meta.name) == cluster:
            users[meta.uid] = ClusterUser(meta.name, meta.uid, meta.created, spec.kafka.managed)
    return sorted(users.values(), key=lambda u: (u.created or "~", u.name))


def _settings(managed: ManagedKafka) -> dict[str, Any]:
    return managed.model_dump(by_alias=True, exclude={"cluster"})


def managed_kafka_enabled() -> bool:
    """The installation lets Streams run Kafka (Helm: ``integrations.kafka.enabled``)."""
    return os.environ.get("GYRE_KAFKA_ENABLED", "true").lower() != "false"


class StreamController(Controller[StreamSpec]):
    kind = "Stream"
    spec_model = StreamSpec

    def check(self, meta: ObjectMeta, spec: StreamSpec, deps: Mapping[str, Resolved]) -> list[str]:
        if spec.kafka.managed is not None and not managed_kafka_enabled():
            return [
                "spec.kafka.managed: this Gyre installation does not run Kafka clusters "
                "(integrations.kafka.enabled is false); name your brokers in spec.kafka.external"
            ]
        return []

    async def _converge_cluster(
        self, namespace: str, cluster: str, users: list[ClusterUser], runtime: Runtime
    ) -> Owner:
        owner = cluster_owner(
            namespace, cluster, tuple(Owner("Stream", namespace, u.name, u.uid) for u in users)
        )
        await runtime.apply(owner, build_kafka_cluster(users[0].managed, namespace, cluster))
        return owner

    async def _release_cluster(
        self, namespace: str, cluster: str, uid: str, runtime: Runtime, listing: Listing
    ) -> None:
        """The Stream ``uid`` no longer uses ``cluster``: stop it if nobody else does."""
        rest = [u for u in cluster_users(cluster, namespace, listing) if u.uid != uid]
        if rest:
            await self._converge_cluster(namespace, cluster, rest, runtime)
        else:
            await runtime.delete(cluster_owner(namespace, cluster))

    async def prepare(
        self,
        meta: ObjectMeta,
        spec: StreamSpec,
        status: Mapping[str, Any],
        runtime: Runtime,
        listing: Listing,
    ) -> KafkaFacts:
        cluster = cluster_name(spec, meta.name)
        previous = (status.get("kafkaCluster") or {}).get("name")
        if previous and previous != cluster:
            await self._release_cluster(meta.namespace, previous, meta.uid, runtime, listing)
        if spec.kafka.external:
            return KafkaFacts(bootstrap=",".join(spec.kafka.external.bootstrap_servers))
        if cluster is None or spec.kafka.managed is None:
            raise ValueError("spec.kafka must name a managed or an external cluster")
        users = cluster_users(cluster, meta.namespace, listing, (meta, spec))
        owner = await self._converge_cluster(meta.namespace, cluster, users, runtime)
        observed = await runtime.observe(owner)
        defining = users[0]
        conflict = None
        if defining.uid != meta.uid and _settings(defining.managed) != _settings(spec.kafka.managed):
            conflict = (
                f"Kafka cluster {cluster!r} is defined by Stream {defining.name!r}, the oldest that "
                "uses it; this Stream's kafka.managed settings differ and are not applied"
            )
        return KafkaFacts(
            bootstrap=runtime.endpoint(owner, BROKER, "kafka"),
            cluster=KafkaClusterStatus(
                name=cluster,
                streams=[u.name for u in users],
                nodes=sum(w.replicas for w in observed.values()),
                ready_nodes=sum(w.ready_replicas for w in observed.values()),
            ),
            cluster_workloads=observed,
            cluster_conflict=conflict,
        )

    async def finalize(
        self, meta: ObjectMeta, raw_spec: Mapping[str, Any], runtime: Runtime, listing: Listing
    ) -> None:
        await runtime.delete(meta.owner)
        try:
            spec = StreamSpec.model_validate(dict(raw_spec))
        except ValidationError:
            return
        cluster = cluster_name(spec, meta.name)
        if cluster is not None:
            await self._release_cluster(meta.namespace, cluster, meta.uid, runtime, listing)

    def build(
        self,
        meta: ObjectMeta,
        spec: StreamSpec,
        deps: Mapping[str, Resolved],
        status: Mapping[str, Any],
        prepared: KafkaFacts,
        *,
        served: frozenset[ChildKind] = frozenset(),
    ) -> list[Workload]:
        return build_stream(spec, meta.namespace, meta.name, prepared.bootstrap)

    async def converge(
        self,
        meta: ObjectMeta,
        spec: StreamSpec,
        deps: Mapping[str, Resolved],
        runtime: Runtime,
        prepared: KafkaFacts,
        workloads: Sequence[Workload],
    ) -> StreamFacts:
        facts = StreamFacts(kafka=prepared, sampled_at=time.time())
        if spec.kafka.managed:
            nodes = prepared.cluster_workloads
            if not nodes or any(w.phase != WorkloadPhase.READY for w in nodes.values()):
                return facts
        bootstrap = prepared.bootstrap
        if not bootstrap:
            return facts
        try:
            main = await asyncio.to_thread(
                ensure_topic,
                bootstrap,
                build_topic_spec(spec, meta.namespace, meta.name),
                timeout_s=ADMIN_TIMEOUT_S,
            )
            dlq = await asyncio.to_thread(
                ensure_topic,
                bootstrap,
                build_dead_letter_spec(spec, meta.namespace, meta.name),
                timeout_s=ADMIN_TIMEOUT_S,
            )
        except TopicAdminError as exc:
            facts.topic_error = str(exc)
            return facts
        facts.topic = TopicStatus(name=main.name, partitions=main.partitions, dead_letter_topic=dlq.name)
        facts.topic_problems = [*main.problems, *dlq.problems]
        collector = runtime.endpoint(meta.owner, COLLECTOR, "http")
        if collector:
            facts.collector_url = f"http://{collector}/v1/events"
        by_name = {w.name: w for w in workloads}
        if COLLECTOR in by_name:
            replicas = await runtime.read_status(meta.owner, by_name[COLLECTOR])
            docs = [d for d in map(CollectorStatus.parse, replicas) if d is not None]
            if docs:
                # every replica counts what it accepted since it started: the Stream's total
                facts.collector = CollectorCounts(
                    accepted=sum(d.accepted for d in docs), rejected=sum(d.rejected for d in docs)
                )
        for sink in spec.sinks:
            w = by_name.get(sink_workload_name(sink))
            doc = SinkDoc.parse(next(iter(await runtime.read_status(meta.owner, w)), None)) if w else None
            if doc is not None:
                facts.sinks[sink.name] = doc
        return facts

    def compute_status(self, spec: StreamSpec, inp: StatusInput) -> StatusOutput:
        facts: StreamFacts = inp.facts
        old, observed = inp.old_status, inp.observed
        cluster = facts.kafka.cluster
        topic = facts.topic
        out = StreamStatus(bootstrap_servers=facts.kafka.bootstrap, kafka_cluster=cluster)
        if topic is not None:
            out.topic = topic
        topic_ready = bool(topic and topic.partitions)
        waiting: list[str] = []
        failed: list[str] = []
        for name, node in facts.kafka.cluster_workloads.items():
            label = f"Kafka cluster {cluster.name if cluster else ''} {name}"
            if node.phase != WorkloadPhase.READY:
                waiting.append(f"{label} ({node.ready_replicas}/{node.replicas} ready)")
            if node.phase == WorkloadPhase.FAILED:
                failed.append(f"{label}: {node.message}")
        for w in inp.workloads:
            st = observed.get(w.name)
            if st is None or st.phase != WorkloadPhase.READY:
                waiting.append(f"{w.name} ({st.phase.value if st else 'not started'})")
            if st is not None and st.phase == WorkloadPhase.FAILED:
                failed.append(f"{w.name}: {st.message}")
        if not topic_ready:
            waiting.append(f"topic ({facts.topic_error or 'waiting for the broker'})")
        # Figures.
        counts = facts.collector
        if facts.collector_url:
            out.collector_url = facts.collector_url
        if counts is not None:
            accepted, rejected = counts.accepted, counts.rejected
            prev = StreamStatus.model_validate(dict(old)) if old else StreamStatus()
            now = facts.sampled_at
            if (
                prev.sampled_at is not None
                and now > prev.sampled_at
                and prev.accepted_total is not None
                and accepted >= prev.accepted_total
            ):
                out.accepted_per_second = round((accepted - prev.accepted_total) / (now - prev.sampled_at), 1)
                out.rejected_per_second = round(
                    max(rejected - (prev.rejected_total or 0), 0) / (now - prev.sampled_at), 1
                )
            out.accepted_total = accepted
            out.rejected_total = rejected
            out.dead_letter_count = rejected
            out.sampled_at = now
        sinks = []
        for sink in spec.sinks:
            doc = facts.sinks.get(sink.name)
            sinks.append(
                SinkStatus(name=sink.name, ready=False)
                if doc is None
                else SinkStatus(
                    name=sink.name,
                    ready=doc.ready,
                    lag=doc.lag,
                    records_written=doc.records_written,
                    files_committed=doc.files_committed,
                )
            )
        if sinks:
            out.sinks = sinks
            lags = [s.lag for s in sinks if s.lag is not None]
            out.max_sink_lag = max(lags) if lags else None
        # What dependents read (a TrainingJob trains on the lake): published, not dug out of
        # this Stream's spec.
        out.lake_uri = next((s.lake.uri for s in spec.sinks if s.lake), None)
        out.schema_fields = [FieldStatus(name=f.name, type=f.type) for f in spec.schema_.fields]

        problems = facts.topic_problems
        degraded: list[tuple[str, str]] = []
        if facts.kafka.cluster_conflict:
            degraded.append(("ClusterSettingsIgnored", facts.kafka.cluster_conflict))
        if problems:
            degraded.append(("TopicMismatch", "; ".join(problems)))
        if failed:
            degraded.append((cnd.WORKLOAD_FAILED, "; ".join(failed)))
        conds: list[cnd.Cond] = []
        if degraded:
            message = "; ".join(m for _, m in degraded)
            conds.append(cnd.Cond(cnd.DEGRADED, True, degraded[0][0], message))
        if waiting:
            message = "waiting for " + ", ".join(waiting)
            conds += [
                cnd.Cond(cnd.READY, False, cnd.WORKLOADS_STARTING, message),
                cnd.Cond(cnd.PROGRESSING, True, cnd.WORKLOADS_STARTING, message),
            ]
            return StatusOutput(status=out, conditions=conds, phase="Starting", requeue_after=POLL_S)
        conds += [
            cnd.Cond(cnd.READY, True, cnd.WORKLOADS_READY, "broker, topic, collector and sinks are ready"),
            cnd.Cond(cnd.PROGRESSING, False, cnd.WORKLOADS_READY),
        ]
        return StatusOutput(status=out, conditions=conds, phase="Ready", requeue_after=REFRESH_S)
