"""The online form of an Experiment: traffic across InferenceServices, analysed and promoted.

Each pass builds the router across the variants' InferenceServices (their ``status.url``) and
the analysis workload (`gyre.builders.online`), makes sure the assignments topic exists on the
feedback Stream's cluster, and reads the analysis' ``/status`` (`AbTestStatus`): per variant
figures, the policy's allocation and the decision. The allocation becomes the Experiment's
``status.allocation``, which the next pass (every ``allocation.intervalSeconds``) writes into
the router's configuration. Once the analysis decides and ``promotion.auto`` is set, the winner
gets all the traffic — unless a guard holds it back: its InferenceService's p99 latency above
``promotion.maxLatencyP99Ms``, or its failed and fallback answers above
``promotion.maxErrorRate`` (from its status and the router's counts, or, with
``promotion.prometheusUrl``, from Prometheus over ``guardWindow``). A promotion is final:
later passes keep it, whatever the analysis says afterwards. A/A mode never promotes.

The decision itself is `decide_promotion`, a pure function table-tested on its own.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gyre.api.experiment import (
    HISTORY_POINTS,
    AllocationPoint,
    ExperimentStatus,
    OnlineDecision,
    OnlineSpec,
    OnlineVariantStatus,
)
from gyre.api.inferenceservice import InferenceServiceSpec, InferenceServiceStatus
from gyre.api.stream import StreamSpec, StreamStatus
from gyre.builders.online import (
    ANALYSIS,
    ROUTER,
    OnlineTargets,
    TopicRef,
    assignments_topic,
    build_online,
    router_allocation,
)
from gyre.controllers.base import ObjectMeta, Ref, Resolved, StatusInput, StatusOutput
from gyre.controllers.topics import TopicAdminError, ensure_topic
from gyre.core import conditions as cnd
from gyre.core.workload import Workload, WorkloadPhase
from gyre.pipelines.abtest.status import AbTestStatus
from gyre.pipelines.abtest.status import VariantStatus as AbVariantStatus
from gyre.pipelines.router.status import RouterStatus
from gyre.runtimes.base import Runtime

ADMIN_TIMEOUT_S = 10.0
WAITING_FOR_TARGETS = "WaitingForTargets"
STARTING = "Starting"
COLLECTING = "Collecting"
DECIDED = "Decided"
PROMOTED = "Promoted"
TOPIC_UNAVAILABLE = "AssignmentsTopicUnavailable"


def variant_path(i: int) -> str:
    return f"spec.online.variants[{i}].inferenceService"


FEEDBACK_PATH = "spec.online.feedbackStream"


def references(online: OnlineSpec) -> list[Ref]:
    refs = [
        Ref("InferenceService", v.inference_service, variant_path(i)) for i, v in enumerate(online.variants)
    ]
    refs.append(Ref("Stream", online.feedback_stream, FEEDBACK_PATH))
    return refs


def check(online: OnlineSpec, deps: Mapping[str, Resolved]) -> list[str]:
    """The variants must answer the same paths: their InferenceServices serve one model name."""
    names: dict[str, str] = {}
    for i, v in enumerate(online.variants):
        dep = deps.get(variant_path(i))
        isvc = dep.spec_as(InferenceServiceSpec) if dep is not None else None
        if isvc is not None:
            names[v.name] = isvc.model_name or v.inference_service
    if len(set(names.values())) > 1:
        listed = ", ".join(f"{k}: {n}" for k, n in names.items())
        return [
            f"the variants' InferenceServices serve different model names ({listed}): clients send one "
            "path to the experiment, so set the same spec.modelName on each"
        ]
    return []


def resolve_targets(
    online: OnlineSpec, meta: ObjectMeta, deps: Mapping[str, Resolved]
) -> tuple[OnlineTargets | None, list[str]]:
    """The variants' URLs and the topics, as the referenced objects published them; else
    None and what is not published yet."""
    urls: dict[str, str] = {}
    missing: list[str] = []
    for i, v in enumerate(online.variants):
        dep = deps.get(variant_path(i))
        url = dep.status_as(InferenceServiceStatus).url if dep is not None else None
        if url:
            urls[v.name] = url
        else:
            missing.append(f"InferenceService {v.inference_service!r} has published no status.url")
    dep = deps.get(FEEDBACK_PATH)
    stream = dep.status_as(StreamStatus) if dep is not None else StreamStatus()
    stream_spec = dep.spec_as(StreamSpec) if dep is not None else None
    topic = stream.topic.name if stream.topic else None
    if not stream.bootstrap_servers or not topic:
        missing.append(f"Stream {online.feedback_stream!r} has published no bootstrapServers and topic")
    if missing or not stream.bootstrap_servers or not topic:
        return None, missing
    return (
        OnlineTargets(
            urls=urls,
            feedback=TopicRef(stream.bootstrap_servers, topic),
            assignments=TopicRef(stream.bootstrap_servers, assignments_topic(meta.namespace, meta.name).name),
            feedback_time_field=stream_spec.schema_.timestamp_field if stream_spec else None,
        ),
        [],
    )


def build(
    online: OnlineSpec, meta: ObjectMeta, deps: Mapping[str, Resolved], status: Mapping[str, object]
) -> list[Workload]:
    targets, _ = resolve_targets(online, meta, deps)
    if targets is None:
        return []
    current = status.get("allocation")
    return build_online(
        online, meta.name, targets, router_allocation(online, current if isinstance(current, dict) else None)
    )


@dataclass(frozen=True)
class Guard:
    """The winner's serving figures the promotion guards look at."""

    latency_p99_ms: float | None
    error_rate: float | None
    source: str = "status"  # where they were read: status | prometheus
    error: str | None = None  # why they could not be read


@dataclass(frozen=True)
class OnlineFacts:
    """What a pass read: the router's address, the analysis' and the router's ``/status``, and
    the winner's figures from Prometheus when the spec names one."""

    url: str | None = None
    analysis: AbTestStatus | None = None
    router: RouterStatus | None = None
    topic_error: str | None = None
    prometheus_guard: Guard | None = None


MODEL_LATENCY = "gyre_model_request_latency_seconds"
MODEL_REQUESTS = "gyre_model_requests_total"
FAILED_OUTCOMES = "fallback|error|rejected"  # of gyre_model_requests_total (invalid: the client's)


def guard_queries(namespace: str, isvc: str, window: str) -> tuple[str, str]:
    """PromQL for an InferenceService's p99 latency (seconds) and failed share of its answered
    requests (the shadow excluded), over ``window``; selected as the dashboards select."""
    sel = f'namespace="{namespace}", gyre_dev_owner_name="{isvc}", variant!="shadow"'
    p99 = f"histogram_quantile(0.99, sum by (le) (rate({MODEL_LATENCY}_bucket{{{sel}}}[{window}])))"
    failed = (
        f'sum(rate({MODEL_REQUESTS}{{{sel}, outcome=~"{FAILED_OUTCOMES}"}}[{window}])) / '
        f'sum(rate({MODEL_REQUESTS}{{{sel}, outcome!="invalid"}}[{window}]))'
    )
    return p99, failed


def _instant(url: str, query: str, timeout_s: float) -> float | None:
    """An instant query's single value (None: no series or not finite)."""
    req = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused the query {query!r}: {body.get('error')}")
    result = body["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None


def prometheus_guard(url: str, namespace: str, isvc: str, window: str, timeout_s: float = 5.0) -> Guard:
    """The InferenceService's p99 latency and error rate as the Prometheus at ``url`` sees them."""
    p99_q, failed_q = guard_queries(namespace, isvc, window)
    try:
        p99 = _instant(url, p99_q, timeout_s)
        failed = _instant(url, failed_q, timeout_s)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        return Guard(None, None, "prometheus", f"Prometheus at {url}: {exc}")
    return Guard(None if p99 is None else p99 * 1000.0, failed, "prometheus")


async def converge(
    online: OnlineSpec,
    meta: ObjectMeta,
    deps: Mapping[str, Resolved],
    runtime: Runtime,
    workloads: Sequence[Workload],
) -> OnlineFacts:
    targets, _ = resolve_targets(online, meta, deps)
    if targets is None or not workloads:
        return OnlineFacts()
    try:
        await asyncio.to_thread(
            ensure_topic,
            targets.assignments.bootstrap_servers,
            assignments_topic(meta.namespace, meta.name),
            timeout_s=ADMIN_TIMEOUT_S,
        )
    except TopicAdminError as exc:
        return OnlineFacts(topic_error=str(exc))
    by_name = {w.name: w for w in workloads}
    analysis = AbTestStatus.parse(next(iter(await runtime.read_status(meta.owner, by_name[ANALYSIS])), None))
    router = RouterStatus.parse(next(iter(await runtime.read_status(meta.owner, by_name[ROUTER])), None))
    address = runtime.endpoint(meta.owner, ROUTER, "http")
    guard = None
    promotion = online.promotion
    if promotion.prometheus_url and analysis is not None and analysis.decision.winner:
        winner = next(v for v in online.variants if v.name == analysis.decision.winner)
        guard = await asyncio.to_thread(
            prometheus_guard, promotion.prometheus_url, meta.namespace, winner.inference_service,
            promotion.guard_window,
        )  # fmt: skip
    return OnlineFacts(
        url=f"http://{address}" if address else None, analysis=analysis, router=router, prometheus_guard=guard
    )


def guard_of(
    online: OnlineSpec, winner: str, deps: Mapping[str, Resolved], router: RouterStatus | None
) -> Guard:
    """The winner's p99 latency (its InferenceService's status) and error rate: the larger of
    its fallback rate and the share of the experiment's requests to it that failed."""
    index = next(i for i, v in enumerate(online.variants) if v.name == winner)
    dep = deps.get(variant_path(index))
    st = dep.status_as(InferenceServiceStatus) if dep is not None else InferenceServiceStatus()
    rates = [st.fallback_rate] if st.fallback_rate is not None else []
    backend = next((b for b in router.backends if b.name == winner), None) if router else None
    if backend is not None and backend.requests:
        rates.append(backend.errors / backend.requests)
    return Guard(st.latency_p99_ms, max(rates) if rates else None)


def decide_promotion(
    online: OnlineSpec, winner: str | None, decided: bool, guard: Guard | None
) -> tuple[bool, str | None]:
    """(promote now, why not): pure. A/A mode and an undecided analysis never promote."""
    if online.aa or not decided or winner is None:
        return False, None
    if not online.promotion.auto:
        return False, "promotion.auto is not set: promote by setting the winner's weight"
    g = guard or Guard(None, None)
    if g.error:
        return False, f"the guards' figures cannot be read: {g.error}"
    limit = online.promotion.max_latency_p99_ms
    if limit is not None:
        if g.latency_p99_ms is None:
            return False, f"the winner's p99 latency is not known yet (limit {limit:g} ms, from {g.source})"
        if g.latency_p99_ms > limit:
            return False, (
                f"the winner's p99 latency {g.latency_p99_ms:.1f} ms ({g.source}) is above {limit:g} ms"
            )
    if g.error_rate is not None and g.error_rate > online.promotion.max_error_rate:
        return False, (
            f"the winner's error rate {g.error_rate:.3f} ({g.source}) is above maxErrorRate "
            f"{online.promotion.max_error_rate:g}"
        )
    return True, None


def _history(
    old: Mapping[str, object], allocation: Mapping[str, float], interval_s: float
) -> list[AllocationPoint]:
    raw = old.get("history")
    points = [AllocationPoint.model_validate(p) for p in raw] if isinstance(raw, list) else []
    now = time.time()
    if (
        not points
        or now - points[-1].time >= 0.9 * interval_s
        or dict(points[-1].allocation) != dict(allocation)
    ):
        points.append(
            AllocationPoint(time=round(now, 3), allocation={k: round(v, 4) for k, v in allocation.items()})
        )
    return points[-HISTORY_POINTS:]


def compute_status(online: OnlineSpec, inp: StatusInput) -> StatusOutput:
    facts: OnlineFacts = inp.facts if isinstance(inp.facts, OnlineFacts) else OnlineFacts()
    old = inp.old_status
    interval = online.allocation.interval_seconds
    targets, missing = resolve_targets(online, inp.meta, inp.deps)
    out = ExperimentStatus()
    out.start_time = inp.meta.created or None
    if targets is None:
        message = "; ".join(missing)
        return StatusOutput(
            status=out,
            conditions=[
                cnd.Cond(cnd.READY, False, WAITING_FOR_TARGETS, message),
                cnd.Cond(cnd.PROGRESSING, True, WAITING_FOR_TARGETS, message),
            ],
            phase="Waiting",
            requeue_after=interval,
        )
    if facts.topic_error:
        message = f"the assignments topic cannot be created: {facts.topic_error}"
        return StatusOutput(
            status=out,
            conditions=[
                cnd.Cond(cnd.READY, False, TOPIC_UNAVAILABLE, message),
                cnd.Cond(cnd.DEGRADED, True, TOPIC_UNAVAILABLE, message),
            ],
            phase="Error",
            requeue_after=interval,
        )
    out.url = facts.url
    old_decision = OnlineDecision.model_validate(old.get("decision") or {})
    previous = old.get("allocation")
    allocation = router_allocation(online, previous if isinstance(previous, dict) else None)
    analysis = facts.analysis
    by_variant = {v.name: v for v in analysis.variants} if analysis else {}
    decision = OnlineDecision(promoted=old_decision.promoted, time=old_decision.time)
    verdict = analysis.decision if analysis is not None else None
    if analysis is not None and verdict is not None:
        decision.decided = verdict.decided
        decision.reason = verdict.reason
        decision.message = verdict.message
        decision.sample_size = analysis.sample_size
        decision.sample_ratio_mismatch = analysis.srm_mismatch
        policy = {
            v.name: float(by_variant[v.name].allocation) for v in online.variants if v.name in by_variant
        }
        if not decision.promoted and analysis.ready:
            allocation = router_allocation(online, policy)
    if decision.promoted is None and verdict is not None and verdict.decided:
        guard = None
        if verdict.winner and online.promotion.prometheus_url:
            guard = facts.prometheus_guard or Guard(None, None, "prometheus", "not read in this pass")
        elif verdict.winner:
            guard = guard_of(online, verdict.winner, inp.deps, facts.router)
        promote, blocked = decide_promotion(online, verdict.winner, True, guard)
        decision.promotion_blocked = blocked
        if promote and verdict.winner:
            decision.promoted = verdict.winner
            decision.time = cnd.now_rfc3339()
        elif decision.time is None:
            decision.time = cnd.now_rfc3339()
    if decision.promoted:
        allocation = {v.name: 1.0 if v.name == decision.promoted else 0.0 for v in online.variants}
        out.winner = decision.promoted
    elif verdict is not None and verdict.decided and not online.aa:
        out.winner = verdict.winner
    out.allocation = {k: round(v, 4) for k, v in allocation.items()}
    out.decision = decision
    out.history = _history(old, out.allocation, interval)
    out.variants = [
        _variant(v.name, v.inference_service, by_variant.get(v.name), out.allocation) for v in online.variants
    ]
    observed = [inp.observed.get(n) for n in (ROUTER, ANALYSIS)]
    running = all(o is not None and o.phase == WorkloadPhase.READY for o in observed)
    if decision.promoted:
        message = f"{decision.promoted} promoted to 100% of the traffic: {decision.message or ''}".rstrip(
            ": "
        )
        conds = [
            cnd.Cond(cnd.READY, running, PROMOTED if running else STARTING, message),
            cnd.Cond(cnd.PROGRESSING, False, PROMOTED, message),
        ]
        phase = "Succeeded"
    elif not running or analysis is None:
        message = "the router and the analysis are starting"
        conds = [
            cnd.Cond(cnd.READY, False, STARTING, message),
            cnd.Cond(cnd.PROGRESSING, True, STARTING, message),
        ]
        phase = "Running"
    else:
        decided = analysis.decision.decided
        reason = DECIDED if decided else COLLECTING
        message = f"{analysis.decision.reason}: {analysis.decision.message}"
        if decision.promotion_blocked:
            message += f"; not promoted: {decision.promotion_blocked}"
        conds = [
            cnd.Cond(cnd.READY, True, reason, message),
            cnd.Cond(cnd.PROGRESSING, not decided, reason, message),
        ]
        phase = "Running"
    return StatusOutput(
        status=out,
        conditions=conds,
        phase=phase,
        remove=("winner", "url"),
        requeue_after=interval,
    )


def _variant(
    name: str, isvc: str, doc: AbVariantStatus | None, allocation: Mapping[str, float]
) -> OnlineVariantStatus:
    out = OnlineVariantStatus(name=name, inference_service=isvc, allocation=allocation.get(name))
    if doc is None:
        return out
    out.requests, out.outcomes, out.rate = doc.requests, doc.outcomes, doc.rate
    if doc.rate_ci_low is not None and doc.rate_ci_high is not None:
        out.interval = [doc.rate_ci_low, doc.rate_ci_high]
    out.p_best, out.expected_loss, out.lift, out.p_value = (
        doc.p_best,
        doc.expected_loss,
        doc.lift,
        doc.p_value,
    )
    if doc.lift_ci_low is not None and doc.lift_ci_high is not None:
        out.lift_interval = [doc.lift_ci_low, doc.lift_ci_high]
    return out
