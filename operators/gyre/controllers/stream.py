"""Stream reconcile: Kafka (managed or external), the topic and its dead-letter topic, the
collector and the sinks, and the figures a user wants at a glance.

The broker starts first; the topics are converged with Kafka's admin API once it answers;
the collector and sinks start once the topic exists. A topic change Kafka cannot make (fewer
partitions, another replication factor) is a `Degraded` condition, never a retry loop.
Deleting a Stream stops its workloads; its topics, its lake and the managed broker's data
directory are kept (data outlives the resource that wrote it).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gyre.api.stream import StreamSpec
from gyre.builders.stream import (
    BROKER,
    COLLECTOR,
    build_dead_letter_spec,
    build_stream,
    build_topic_spec,
    sink_workload_name,
)
from gyre.controllers.base import Controller, ObjectMeta, Resolved, StatusInput, StatusOutput
from gyre.core import conditions as cnd
from gyre.core.workload import Workload, WorkloadPhase
from gyre.runtimes.base import Runtime

POLL_S = 2.0
REFRESH_S = 15.0  # figures (rates, lag) of a Ready Stream are refreshed this often
ADMIN_TIMEOUT_S = 5.0


def _get(url: str, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return str(r.read().decode())
    except OSError:
        return None


def _collector_counts(text: str | None) -> dict[str, float]:
    if text is None:
        return {}
    out: dict[str, float] = {"accepted": 0.0, "rejected": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gyre_collector_events_accepted_total":
                out["accepted"] += sample.value
            elif sample.name == "gyre_collector_events_rejected_total":
                out["rejected"] += sample.value
    return out


class StreamController(Controller[StreamSpec]):
    kind = "Stream"
    spec_model = StreamSpec

    def build(
        self, meta: ObjectMeta, spec: StreamSpec, deps: Mapping[str, Resolved], status: Mapping[str, Any]
    ) -> list[Workload]:
        return build_stream(spec, meta.namespace, meta.name)

    def _bootstrap(self, meta: ObjectMeta, spec: StreamSpec, runtime: Runtime) -> str | None:
        if spec.kafka.external:
            return ",".join(spec.kafka.external.bootstrap_servers)
        return runtime.endpoint(meta.owner, BROKER, "kafka")

    async def converge(
        self, meta: ObjectMeta, spec: StreamSpec, deps: Mapping[str, Resolved], runtime: Runtime
    ) -> Mapping[str, Any]:
        from gyre.pipelines.kafka.topics import TopicAdminError, ensure_topic

        facts: dict[str, Any] = {"bootstrap": self._bootstrap(meta, spec, runtime), "sampled_at": time.time()}
        if spec.kafka.managed:
            broker = (await runtime.observe(meta.owner)).get(BROKER)
            if broker is None or broker.phase != WorkloadPhase.READY:
                return facts
        bootstrap = facts["bootstrap"]
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
            facts["topic_error"] = str(exc)
            return facts
        facts["topic"] = {"name": main.name, "partitions": main.partitions, "deadLetterTopic": dlq.name}
        facts["topic_problems"] = list(main.problems) + list(dlq.problems)
        collector = runtime.endpoint(meta.owner, COLLECTOR, "http")
        if collector:
            facts["collector_url"] = f"http://{collector}/v1/events"
            facts["collector"] = _collector_counts(
                await asyncio.to_thread(_get, f"http://{collector}/metrics")
            )
        sinks: dict[str, Any] = {}
        for sink in spec.sinks:
            addr = runtime.endpoint(meta.owner, sink_workload_name(sink), "http")
            text = await asyncio.to_thread(_get, f"http://{addr}/status") if addr else None
            if text:
                sinks[sink.name] = json.loads(text)
        facts["sinks"] = sinks
        return facts

    def compute_status(self, spec: StreamSpec, inp: StatusInput) -> StatusOutput:
        facts, old, observed = inp.facts, inp.old_status, inp.observed
        fields: dict[str, Any] = {"bootstrapServers": facts.get("bootstrap")}
        if "topic" in facts:
            fields["topic"] = facts["topic"]
        topic_ready = bool((facts.get("topic") or {}).get("partitions"))
        waiting: list[str] = []
        failed: list[str] = []
        for w in inp.workloads:
            st = observed.get(w.name)
            if st is None or st.phase != WorkloadPhase.READY:
                waiting.append(f"{w.name} ({st.phase.value if st else 'not started'})")
            if st is not None and st.phase == WorkloadPhase.FAILED:
                failed.append(f"{w.name}: {st.message}")
        if not topic_ready:
            waiting.append(f"topic ({facts.get('topic_error') or 'waiting for the broker'})")
        # Figures.
        counts = facts.get("collector") or {}
        if facts.get("collector_url"):
            fields["collectorUrl"] = facts["collector_url"]
        if counts:
            accepted, rejected = int(counts["accepted"]), int(counts["rejected"])
            prev_at = old.get("sampledAt")
            prev_acc, prev_rej = old.get("acceptedTotal"), old.get("rejectedTotal")
            now = float(facts["sampled_at"])
            if (
                isinstance(prev_at, int | float)
                and now > prev_at
                and prev_acc is not None
                and accepted >= prev_acc
            ):
                fields["acceptedPerSecond"] = round((accepted - prev_acc) / (now - prev_at), 1)
                fields["rejectedPerSecond"] = round(max(rejected - (prev_rej or 0), 0) / (now - prev_at), 1)
            fields.update(
                {
                    "acceptedTotal": accepted,
                    "rejectedTotal": rejected,
                    "deadLetterCount": rejected,
                    "sampledAt": now,
                }
            )
        sink_status = []
        for sink in spec.sinks:
            s = (facts.get("sinks") or {}).get(sink.name) or {}
            sink_status.append(
                {
                    "name": sink.name,
                    "ready": bool(s.get("ready")),
                    "lag": s.get("lag"),
                    "recordsWritten": s.get("records_written"),
                    "filesCommitted": s.get("files_committed"),
                }
            )
        if sink_status:
            fields["sinks"] = [{k: v for k, v in s.items() if v is not None} for s in sink_status]
            lags = [s["lag"] for s in sink_status if isinstance(s["lag"], int)]
            fields["maxSinkLag"] = max(lags) if lags else None

        problems = list(facts.get("topic_problems") or [])
        conds: list[cnd.Cond] = []
        if problems:
            conds.append(cnd.Cond(cnd.DEGRADED, True, "TopicMismatch", "; ".join(problems)))
        if failed:
            conds.append(cnd.Cond(cnd.DEGRADED, True, cnd.WORKLOAD_FAILED, "; ".join(failed)))
        if waiting:
            message = "waiting for " + ", ".join(waiting)
            conds += [
                cnd.Cond(cnd.READY, False, cnd.WORKLOADS_STARTING, message),
                cnd.Cond(cnd.PROGRESSING, True, cnd.WORKLOADS_STARTING, message),
            ]
            return StatusOutput(fields=fields, conditions=conds, phase="Starting", requeue_after=POLL_S)
        conds += [
            cnd.Cond(cnd.READY, True, cnd.WORKLOADS_READY, "broker, topic, collector and sinks are ready"),
            cnd.Cond(cnd.PROGRESSING, False, cnd.WORKLOADS_READY),
        ]
        return StatusOutput(fields=fields, conditions=conds, phase="Ready", requeue_after=REFRESH_S)
