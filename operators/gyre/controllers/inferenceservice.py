"""InferenceService reconcile: model servers for its models and the router in front of them.

The models' artifacts come from what each referenced TrainingJob published (``status.model``)
or from ``model.uri``. The figures come from the status contract: every model server's
``/status`` (`ModelServerStatus`: version, latency percentiles, fallbacks, breaker) and the
router's (`RouterStatus`: requests per backend, hence the measured split), read through the
runtime. Conditions: ``Ready`` (the router and spec.model's servers answer), ``Progressing``
(servers or the router still starting: a rollout), ``Degraded`` (the breaker of a model is
open, or its fallback rate is past `DEGRADED_FALLBACK_RATE`, with the cause).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gyre.api.experiment import ExperimentStatus
from gyre.api.featurejob import FeatureJobSpec, FeatureJobStatus
from gyre.api.inferenceservice import (
    InferenceServiceSpec,
    InferenceServiceStatus,
    ModelSource,
    VariantStatus,
)
from gyre.api.stream import StreamStatus
from gyre.api.trainingjob import TrainingJobStatus
from gyre.builders.inferenceservice import (
    ROUTER,
    WORKLOAD_OF,
    Artifacts,
    OnlineStoreRef,
    build_inferenceservice,
    configured_traffic,
)
from gyre.controllers.base import Controller, ObjectMeta, Ref, Resolved, StatusInput, StatusOutput
from gyre.core import conditions as cnd
from gyre.core.children import ChildKind
from gyre.core.workload import Workload, WorkloadPhase, WorkloadStatus
from gyre.pipelines.modelserver.status import ModelServerStatus
from gyre.pipelines.router.status import RouterStatus
from gyre.runtimes.base import Runtime

POLL_S = 5.0
DEGRADED_FALLBACK_RATE = 0.05
"""A model answering more than this share of its recent requests with the fallback is Degraded."""
VARIANTS = ("stable", "canary", "shadow")
MODEL_NOT_PUBLISHED = "ModelNotPublished"
ONLINE_STORE_UNKNOWN = "OnlineStoreUnknown"
NOT_ANSWERING = "ModelNotAnswering"
INPUTS_DRIFTED = "InputsDrifted"
NO_DRIFT = "WithinThreshold"
DRIFT_UNKNOWN = "NotEnoughRequests"
SERVING = "Serving"
ROLLING_OUT = "RollingOut"
BREAKER_OPEN = "BreakerOpen"
FALLBACKS = "FallingBack"


def _model_refs(model: ModelSource, path: str) -> list[Ref]:
    if model.training_job:
        return [Ref("TrainingJob", model.training_job, f"{path}.trainingJob")]
    if model.experiment:
        return [Ref("Experiment", model.experiment, f"{path}.experiment")]
    return []


def _published_model(source: ModelSource, path: str, deps: Mapping[str, Resolved]) -> str | None:
    """The artifact URI the TrainingJob or Experiment a model source names has published."""
    if source.training_job:
        dep = deps.get(f"{path}.trainingJob")
        model = dep.status_as(TrainingJobStatus).model if dep is not None else None
    else:
        dep = deps.get(f"{path}.experiment")
        model = dep.status_as(ExperimentStatus).model if dep is not None else None
    return model.uri if model is not None else None


def _models(spec: InferenceServiceSpec) -> dict[str, tuple[ModelSource, str]]:
    """The spec's models by variant, with the spec path that names each."""
    out = {"stable": (spec.model, "spec.model")}
    if spec.traffic and spec.traffic.canary:
        out["canary"] = (spec.traffic.canary.model, "spec.traffic.canary.model")
    if spec.traffic and spec.traffic.shadow:
        out["shadow"] = (spec.traffic.shadow.model, "spec.traffic.shadow.model")
    return out


def resolve_artifacts(spec: InferenceServiceSpec, deps: Mapping[str, Resolved]) -> Artifacts | None:
    """Each model's artifact URI; None while spec.model's is not known yet."""
    uris: dict[str, str | None] = {}
    for variant, (source, path) in _models(spec).items():
        uris[variant] = source.uri or _published_model(source, path, deps)
    stable = uris.get("stable")
    if stable is None:
        return None
    return Artifacts(
        stable=stable,
        canary=uris.get("canary"),
        shadow=uris.get("shadow"),
        online_store=online_store(spec, deps),
        prediction_log=prediction_log(deps),
    )


def prediction_log(deps: Mapping[str, Resolved]) -> tuple[str, str] | None:
    """spec.logging's Stream as it published itself: its bootstrap servers and topic."""
    dep = deps.get("spec.logging.stream")
    if dep is None:
        return None
    st = dep.status_as(StreamStatus)
    topic = st.topic.name if st.topic else None
    return (st.bootstrap_servers, topic) if st.bootstrap_servers and topic else None


def online_store(spec: InferenceServiceSpec, deps: Mapping[str, Resolved]) -> OnlineStoreRef | None:
    """Where spec.features' FeatureJob published its online values (status.online: the
    address and key prefix of its last materialization); None until it has. The URL is the
    FeatureJob's spec.online.redisUrl when it names one (it may name a database), else the
    published address of the store the FeatureJob runs."""
    dep = deps.get("spec.features.featureJob")
    if dep is None:
        return None
    features = dep.spec_as(FeatureJobSpec)
    spec_online = features.online if features is not None else None
    published = dep.status_as(FeatureJobStatus).online
    if spec_online is None or not spec_online.enabled or published is None:
        return None
    if not published.address or not published.key_prefix:
        return None
    url = spec_online.redis_url or f"redis://{published.address}"
    return OnlineStoreRef(url=url, key_prefix=published.key_prefix)


@dataclass(frozen=True)
class ServingFacts:
    """What a pass read from the workloads' ``/status`` and the runtime."""

    url: str | None = None
    servers: Mapping[str, list[ModelServerStatus]] = field(default_factory=dict)  # by variant
    router: RouterStatus | None = None
    unpublished: tuple[str, ...] = ()  # spec paths whose TrainingJob has no model yet


class InferenceServiceController(Controller[InferenceServiceSpec]):
    kind = "InferenceService"
    spec_model = InferenceServiceSpec

    def references(self, spec: InferenceServiceSpec) -> list[Ref]:
        refs = _model_refs(spec.model, "spec.model")
        if spec.features:
            refs.append(Ref("FeatureJob", spec.features.feature_job, "spec.features.featureJob"))
        if spec.logging:
            refs.append(Ref("Stream", spec.logging.stream, "spec.logging.stream"))
        if spec.traffic and spec.traffic.canary:
            refs += _model_refs(spec.traffic.canary.model, "spec.traffic.canary.model")
        if spec.traffic and spec.traffic.shadow:
            refs += _model_refs(spec.traffic.shadow.model, "spec.traffic.shadow.model")
        return refs

    def check(self, meta: ObjectMeta, spec: InferenceServiceSpec, deps: Mapping[str, Resolved]) -> list[str]:
        dep = deps.get("spec.features.featureJob")
        features = dep.spec_as(FeatureJobSpec) if dep is not None else None
        if (
            spec.features is not None
            and features is not None
            and not (features.online and features.online.enabled)
        ):
            return [
                f"FeatureJob {spec.features.feature_job!r} writes no online store (spec.online.enabled is "
                "false or unset): spec.features needs one"
            ]
        return []

    def build(
        self,
        meta: ObjectMeta,
        spec: InferenceServiceSpec,
        deps: Mapping[str, Resolved],
        status: Mapping[str, Any],
        prepared: Any,
        *,
        served: frozenset[ChildKind] = frozenset(),
    ) -> list[Workload]:
        artifacts = resolve_artifacts(spec, deps)
        if artifacts is None or (spec.features is not None and artifacts.online_store is None):
            return []
        return build_inferenceservice(spec, meta.name, artifacts)

    async def converge(
        self,
        meta: ObjectMeta,
        spec: InferenceServiceSpec,
        deps: Mapping[str, Resolved],
        runtime: Runtime,
        prepared: Any,
        workloads: Sequence[Workload],
    ) -> ServingFacts:
        artifacts = resolve_artifacts(spec, deps)
        unpublished = tuple(
            path
            for variant, (source, path) in _models(spec).items()
            if artifacts is None or getattr(artifacts, variant) is None
        )
        by_name = {w.name: w for w in workloads}
        servers: dict[str, list[ModelServerStatus]] = {}
        for variant, name in WORKLOAD_OF.items():
            w = by_name.get(name)
            if w is None:
                continue
            docs = [ModelServerStatus.parse(d) for d in await runtime.read_status(meta.owner, w)]
            servers[variant] = [d for d in docs if d is not None]
        router = None
        if ROUTER in by_name:
            router = RouterStatus.parse(
                next(iter(await runtime.read_status(meta.owner, by_name[ROUTER])), None)
            )
        address = runtime.endpoint(meta.owner, ROUTER, "http") if ROUTER in by_name else None
        return ServingFacts(
            url=f"http://{address}" if address else None,
            servers=servers,
            router=router,
            unpublished=unpublished,
        )

    def compute_status(self, spec: InferenceServiceSpec, inp: StatusInput) -> StatusOutput:
        facts: ServingFacts = inp.facts or ServingFacts()
        out = InferenceServiceStatus()
        artifacts = resolve_artifacts(spec, inp.deps)
        if spec.features is not None and artifacts is not None and artifacts.online_store is None:
            return _pending(
                ONLINE_STORE_UNKNOWN,
                f"FeatureJob {spec.features.feature_job!r} has not published its online store yet "
                "(its status.online: address and keyPrefix, written by its first successful run)",
            )
        if artifacts is None:
            return _pending(
                MODEL_NOT_PUBLISHED,
                "the TrainingJob or Experiment of spec.model has published no model yet (status.model)",
            )
        out.url = facts.url
        out.traffic = configured_traffic(spec, artifacts)
        variants = [v for v in VARIANTS if getattr(artifacts, v)]
        out.variants = [self._variant(v, inp.observed, facts) for v in variants]
        by_name = {v.name: v for v in out.variants}
        stable = by_name["stable"]
        out.model_version = stable.model_version
        out.canary_model_version = by_name["canary"].model_version if "canary" in by_name else None
        out.shadow_model_version = by_name["shadow"].model_version if "shadow" in by_name else None
        out.ready_replicas = stable.ready_replicas
        out.latency_p50_ms, out.latency_p99_ms = stable.latency_p50_ms, stable.latency_p99_ms
        out.breaker = stable.breaker
        watch = spec.monitoring.drift if spec.monitoring else None
        if watch is not None and stable.drift:
            out.drift_score = max(stable.drift.values())
            out.drifted_features = sorted(f for f, v in stable.drift.items() if v > watch.threshold)
        answered = [v for v in out.variants if v.name != "shadow"]
        rates = [(v.fallback_rate, v.requests) for v in answered if v.fallback_rate is not None]
        total = sum(n for _, n in rates)
        if rates:
            out.fallback_rate = round(sum(r * n for r, n in rates) / total, 4) if total else rates[0][0]
        if facts.router is not None:
            counts = {b.name: b.requests for b in facts.router.backends}
            routed = sum(counts.values())
            out.requests = routed
            if routed:
                out.measured_traffic = {
                    v.name: round(100.0 * counts.get(WORKLOAD_OF[v.name], 0) / routed, 2) for v in answered
                }
            out.requests_per_second = _rate(inp.old_status, routed)
        out.sampled_at = cnd.now_rfc3339()
        conds, phase = self._conditions(spec, inp.observed, out, facts)
        return StatusOutput(status=out, conditions=conds, phase=phase, requeue_after=POLL_S)

    @staticmethod
    def _variant(variant: str, observed: Mapping[str, WorkloadStatus], facts: ServingFacts) -> VariantStatus:
        st = observed.get(WORKLOAD_OF[variant])
        docs = facts.servers.get(variant, [])
        first = docs[0] if docs else None
        requests = dropped = 0
        compared: dict[str, Any] = {}
        if facts.router is not None:
            if variant == "shadow" and facts.router.shadow is not None:
                sh = facts.router.shadow
                requests, dropped = sh.requests, sh.dropped
                compared = {
                    "compared": sh.compared,
                    "different": sh.different,
                    "max_difference": sh.max_difference,
                }
            else:
                requests = next(
                    (b.requests for b in facts.router.backends if b.name == WORKLOAD_OF[variant]), 0
                )
        p99 = [d.latency_p99_ms for d in docs if d.latency_p99_ms is not None]
        p50 = [d.latency_p50_ms for d in docs if d.latency_p50_ms is not None]
        rates = [d.fallback_rate for d in docs if d.fallback_rate is not None]
        # the worst of its replicas: one open breaker is what a user must hear about
        breakers = {d.breaker for d in docs}
        worst = next((b for b in ("open", "half_open", "closed") if b in breakers), None)
        return VariantStatus.model_validate(
            {
                "name": variant,
                "model_version": first.model_version if first else None,
                "ready_replicas": st.ready_replicas if st else 0,
                "requests": requests,
                "dropped": dropped,
                "latency_p50_ms": round(max(p50), 3) if p50 else None,
                "latency_p99_ms": round(max(p99), 3) if p99 else None,
                "fallback_rate": round(max(rates), 4) if rates else None,
                "breaker": worst,
                "drift": next((d.drift for d in docs if d.drift is not None), None),
                **compared,
            }
        )

    @staticmethod
    def _conditions(
        spec: InferenceServiceSpec,
        observed: Mapping[str, WorkloadStatus],
        out: InferenceServiceStatus,
        facts: ServingFacts,
    ) -> tuple[list[cnd.Cond], str]:
        names = [WORKLOAD_OF[v.name] for v in out.variants] + [ROUTER]
        failed = [
            n for n in names if (st := observed.get(n)) is not None and st.phase == WorkloadPhase.FAILED
        ]
        starting = [n for n in names if (st := observed.get(n)) is None or st.phase != WorkloadPhase.READY]
        up = all(
            (st := observed.get(n)) is not None and st.phase == WorkloadPhase.READY
            for n in ("predictor", ROUTER)
        )
        # Ready means answering: a model server's own /status says its model is loaded.
        answering = any(d.ready for d in facts.servers.get("stable", []))
        stable_ready = up and answering
        degraded: list[str] = []
        reason = ""
        for v in out.variants:
            if v.breaker in ("open", "half_open"):
                degraded.append(
                    f"the {v.name} model's circuit breaker is {v.breaker}: answering the fallback"
                )
                reason = reason or BREAKER_OPEN
            elif v.fallback_rate is not None and v.fallback_rate > DEGRADED_FALLBACK_RATE:
                degraded.append(
                    f"the {v.name} model answered {v.fallback_rate:.0%} of its recent requests with the "
                    f"fallback (deadline {spec.fallback.deadline_ms} ms)"
                )
                reason = reason or FALLBACKS
        conds: list[cnd.Cond] = []
        if failed:
            message = "; ".join(
                f"{n}: {(observed[n].message or 'failed').strip().splitlines()[-1]}" for n in failed
            )
            degraded.append(message)
            reason = reason or cnd.WORKLOAD_FAILED
        if stable_ready:
            versions = ", ".join(f"{v.name} {v.model_version}" for v in out.variants if v.model_version)
            conds.append(cnd.Cond(cnd.READY, True, SERVING, f"serving {versions} at {out.url}"))
        elif up:
            conds.append(
                cnd.Cond(
                    cnd.READY,
                    False,
                    NOT_ANSWERING,
                    "the predictor's replicas are up but none answers /status with its model loaded",
                )
            )
        else:
            conds.append(
                cnd.Cond(cnd.READY, False, cnd.WORKLOADS_STARTING, f"waiting for {', '.join(starting)}")
            )
        if starting:
            conds.append(cnd.Cond(cnd.PROGRESSING, True, ROLLING_OUT, f"starting {', '.join(starting)}"))
        else:
            conds.append(cnd.Cond(cnd.PROGRESSING, False, cnd.WORKLOADS_READY, "every model server is ready"))
        if degraded:
            conds.append(cnd.Cond(cnd.DEGRADED, True, reason, "; ".join(degraded)))
        if facts.unpublished:
            conds.append(
                cnd.Cond(
                    cnd.PROGRESSING,
                    True,
                    MODEL_NOT_PUBLISHED,
                    f"no model published yet for {', '.join(facts.unpublished)}",
                )
            )
            conds = [c for c in conds if not (c.type == cnd.PROGRESSING and c.reason != MODEL_NOT_PUBLISHED)]
        watch = spec.monitoring.drift if spec.monitoring else None
        if watch is not None:
            if out.drift_score is None:
                conds.append(
                    cnd.Cond(cnd.DRIFTED, False, DRIFT_UNKNOWN, "too few requests in the window yet")
                )
            elif out.drifted_features:
                scores = ", ".join(
                    f"{f} {dict(out.variants[0].drift or {}).get(f, 0):.3f}" for f in out.drifted_features
                )
                conds.append(
                    cnd.Cond(
                        cnd.DRIFTED,
                        True,
                        INPUTS_DRIFTED,
                        f"{watch.metric} past {watch.threshold} over {watch.window}: {scores}",
                    )
                )
            else:
                conds.append(
                    cnd.Cond(cnd.DRIFTED, False, NO_DRIFT, f"largest {watch.metric} {out.drift_score:.3f}")
                )
        phase = "Serving" if stable_ready else "Failed" if failed else "Starting"
        return conds, phase


def _pending(reason: str, message: str) -> StatusOutput:
    """Nothing to serve yet: not Ready, Progressing, looked at again soon."""
    return StatusOutput(
        status=InferenceServiceStatus(),
        conditions=[
            cnd.Cond(cnd.READY, False, reason, message),
            cnd.Cond(cnd.PROGRESSING, True, reason, message),
        ],
        phase="Pending",
        requeue_after=POLL_S,
    )


def _rate(old: Mapping[str, Any], requests: int) -> float | None:
    """Requests per second since the previous reading (None at the first one, or after a
    router restart reset its counts)."""
    before, at = old.get("requests"), old.get("sampledAt")
    if not isinstance(before, int) or not isinstance(at, str) or requests < before:
        return None
    then = dt.datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    seconds = (dt.datetime.now(dt.UTC) - then).total_seconds()
    return round((requests - before) / seconds, 2) if seconds >= 1 else None
