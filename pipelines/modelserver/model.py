"""`GyreModel`: a TrainingJob's artifact as a `kserve.Model`.

`load` rebuilds the network from the artifact (state dict, module reference, the preprocessing
fitted at training) and runs a warm-up prediction; only then is the model ready, so the first
request after a start is never answered "model not ready". `predict` takes KServe's V1 body
(``{"instances": [{feature: value, ...}, ...]}``) or a V2 `InferRequest` (one input per
feature, named after it), checks every value against the artifact's feature schema (a 400
naming the field otherwise), and predicts through the `DynamicBatcher` within the deadline:
late or failing predictions, or an open circuit breaker, get the configured default response,
marked as a fallback. The rows go through the artifact's own `Preprocessor`, the very code
training used, so serving cannot drift from training.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import torch
from gyre.pipelines.modelserver.config import ModelServerConfig
from gyre.pipelines.modelserver.drift import DriftMonitor
from gyre.pipelines.modelserver.features import get_online_features
from gyre.pipelines.modelserver.predlog import open_prediction_log
from gyre.pipelines.modelserver.resilience import (
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    DynamicBatcher,
    QueueFull,
    percentile,
)
from gyre.pipelines.modelserver.status import ModelServerStatus
from gyre.pipelines.trainer import artifact
from gyre.pipelines.trainer.data import CATEGORICAL, NUMERIC
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InferenceError, InvalidInput
from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import Redis

log = logging.getLogger("gyre.pipelines.modelserver")

OUTCOMES = ("predicted", "fallback", "error", "rejected", "invalid")
REQUESTS = Counter(
    "gyre_model_requests_total",
    "Prediction requests, by model, variant and outcome (predicted, fallback, error, rejected, invalid).",
    ["model", "variant", "outcome"],
)
LATENCY = Histogram(
    "gyre_model_request_latency_seconds",
    "From a prediction request's arrival to its answer (fallbacks included).",
    ["model", "variant"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "gyre_model_batch_size",
    "Rows per forward pass.",
    ["model", "variant"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BREAKER = Gauge(
    "gyre_model_breaker_open", "1 while the circuit breaker is open or half-open.", ["model", "variant"]
)
IMPUTED = Counter(
    "gyre_model_imputed_features_total",
    "Feature values the online store lacked (missing or expired), imputed by the preprocessing.",
    ["model", "variant", "feature"],
)
DRIFT = Gauge(
    "gyre_model_drift_score",
    "Drift of the live inputs from the training sample, by feature.",
    ["model", "variant", "feature"],
)
QUEUED = Gauge("gyre_model_queued_rows", "Rows waiting for a forward pass.", ["model", "variant"])
IN_FLIGHT = Gauge(
    "gyre_model_inflight_requests",
    "Prediction requests being answered now (what autoscaling on concurrency follows).",
    ["model", "variant"],
)

FALLBACK_HEADER = "x-gyre-fallback"
VERSION_HEADER = "x-gyre-model-version"
VARIANT_HEADER = "x-gyre-variant"
NUMERIC_V2 = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}
)


class Overloaded(Exception):
    """The request was refused: too many rows are waiting (the server answers 429)."""


class GyreModel(Model):  # type: ignore[misc]  # kserve ships no type information
    def __init__(self, config: ModelServerConfig) -> None:
        super().__init__(config.name, return_response_headers=True)
        self.config = config
        self.artifact: artifact.Model | None = None
        self.breaker = CircuitBreaker(config.fallback.failure_threshold, config.fallback.reset_timeout_s)
        self.batcher: DynamicBatcher | None = None
        self.drift: DriftMonitor | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        self._recent: collections.deque[tuple[float, bool]] = collections.deque(maxlen=config.latency_window)
        self._labels = (config.name, config.variant)
        # Every outcome's count exists from the start, at zero: a server that never fell back
        # reports a fallback share of 0, not no series at all (which a dashboard shows as "No data").
        for outcome in OUTCOMES:
            REQUESTS.labels(*self._labels, outcome)
        self.feature_lookups = 0
        self.imputed: collections.Counter[str] = collections.Counter()
        self.store = Redis.from_url(config.features.redis_url) if config.features else None
        self.predlog = open_prediction_log(config.logging, self._labels) if config.logging else None

    # -- loading ----------------------------------------------------------------------------------

    def load(self) -> bool:
        # One thread per forward pass: batches are small, and replicas share the cores.
        torch.set_num_threads(max(1, int(os.environ.get("GYRE_TORCH_THREADS", "1"))))
        model = artifact.load(self.config.artifact)
        self.artifact = model
        b = self.config.batching
        self.drift = self._drift_monitor(model)
        self.batcher = DynamicBatcher(
            self._forward,
            enabled=b.enabled,
            max_batch_size=b.max_batch_size,
            max_latency_ms=b.max_latency_ms,
            max_queue=b.max_queue,
            on_batch=lambda n: BATCH_SIZE.labels(*self._labels).observe(n),
        )
        warm = model.predict([self.warmup_row()])
        log.info(
            "Loaded model %s version %s (%s) from %s; warm-up prediction %.4f",
            self.name,
            self.version,
            self.config.variant,
            self.config.artifact,
            warm[0],
        )
        self.ready = True
        return True

    def _forward(self, rows: list[dict[str, Any]]) -> list[float]:
        """One forward pass over a batch (in the batcher's thread): preprocess, watch, predict."""
        assert self.artifact is not None
        x = self.artifact.transform(rows)
        if self.drift is not None:
            self.drift.observe(x)
        return self.artifact.predict_transformed(x)

    def _drift_monitor(self, model: artifact.Model) -> DriftMonitor | None:
        cfg = self.config.drift
        if cfg is None:
            return None
        if model.reference is None:
            log.warning("Model %s: the artifact holds no training sample; drift is not measured", self.name)
            return None
        pre = model.preprocessor
        return DriftMonitor(
            model.reference,
            pre.numeric,
            [(c, len(pre.vocab[c]) + 1) for c in pre.categorical],
            metric=cfg.metric,
            window_s=cfg.window_s,
        )

    @property
    def version(self) -> str:
        return self.artifact.version if self.artifact else ""

    @property
    def features(self) -> list[dict[str, str]]:
        return self.artifact.features if self.artifact else []

    def warmup_row(self) -> dict[str, Any]:
        """A row of the artifact's schema: training means, the most frequent categories."""
        assert self.artifact is not None
        pre = self.artifact.preprocessor
        row: dict[str, Any] = dict(zip(pre.numeric, pre.means, strict=True))
        for name in pre.categorical:
            row[name] = pre.vocab[name][0] if pre.vocab[name] else ""
        return row

    def get_input_types(self) -> list[dict[str, Any]]:
        return [
            {"name": f["name"], "datatype": "FP64" if f["type"] == NUMERIC else "BYTES", "shape": [-1]}
            for f in self.features
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": "predictions", "datatype": "FP32", "shape": [-1]}]

    # -- requests ---------------------------------------------------------------------------------

    async def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: Mapping[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        gauge = IN_FLIGHT.labels(*self._labels)
        gauge.inc()
        try:
            return await self._predict(payload, headers, response_headers)
        finally:
            gauge.dec()

    async def _predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
    ) -> dict[str, Any] | InferResponse:
        started = time.monotonic()
        try:
            rows = self.parse(payload)
        except InvalidInput:
            self._count("invalid")
            raise
        preds: list[float] | None = None
        imputed: list[list[str]] | None = None
        reason = ""
        if not self.breaker.allow():
            reason = "breaker_open"
        else:
            assert self.batcher is not None
            left = self.config.fallback.deadline_ms / 1000.0 - (time.monotonic() - started)
            try:
                preds, imputed = await asyncio.wait_for(self._answer(rows), max(left, 0.0))
                self.breaker.record_success()
            except QueueFull as e:
                self.breaker.release_trial()
                self._count("rejected")
                raise Overloaded(f"model {self.name}: overloaded, retry later: {e}") from e
            except TimeoutError:
                self.breaker.record_failure()
                reason = "deadline"
            except Exception as e:
                self.breaker.record_failure()
                log.warning("Model %s failed a prediction: %s", self.name, e)
                reason = "error"
                if self.config.fallback.default_response is None:
                    self._finish(started, fallback=False, outcome="error")
                    raise InferenceError(f"model {self.name} failed: {e}") from e
        self._export_breaker()
        if preds is None:
            if self.config.fallback.default_response is None:
                self._finish(started, fallback=False, outcome="error")
                raise InferenceError(
                    f"model {self.name}: no answer ({reason}) and no fallback.defaultResponse configured"
                )
            self._finish(started, fallback=True, outcome="fallback")
            self._log_predictions(payload, headers, rows, None, started)
            return self._respond(payload, rows, None, reason, response_headers)
        self._finish(started, fallback=False, outcome="predicted")
        self._log_predictions(payload, headers, rows, preds, started)
        return self._respond(payload, rows, preds, "", response_headers, imputed)

    def _log_predictions(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: Mapping[str, str] | None,
        rows: list[dict[str, Any]],
        preds: list[float] | None,
        started: float,
    ) -> None:
        """One record per row to the prediction log (queued, never awaited)."""
        if self.predlog is None:
            return
        request_id = (headers or {}).get("x-request-id") or (
            payload.id if isinstance(payload, InferRequest) and payload.id else str(uuid.uuid4())
        )
        key = self.config.features.entity_key if self.config.features else None
        latency_ms = round((time.monotonic() - started) * 1000.0, 3)
        default = dict(self.config.fallback.default_response or {})
        now_ms = int(time.time() * 1000)
        for i, row in enumerate(rows):
            entity = row.get(key) if key else None
            self.predlog.log(
                {
                    "request_id": request_id if len(rows) == 1 else f"{request_id}/{i}",
                    "entity_key": entity,
                    "model": self.name,
                    "model_version": self.version,
                    "variant": self.config.variant,
                    "inputs": row,
                    "output": default if preds is None else preds[i],
                    "latency_ms": latency_ms,
                    "fallback": preds is None,
                    "ts": now_ms,  # epoch milliseconds: a Stream's timestamp, as its collector writes it
                },
                None if entity is None else str(entity),
            )

    def stop(self) -> None:
        if self.predlog is not None:
            self.predlog.close()
        super().stop()

    async def _answer(self, rows: list[dict[str, Any]]) -> tuple[list[float], list[list[str]] | None]:
        """The model's answers, after the online features are merged in (when configured)."""
        imputed = None
        if self.store is not None:
            rows, imputed = await self.with_features(rows)
        assert self.batcher is not None
        return await self.batcher.submit(rows), imputed

    async def with_features(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[str]]]:
        """Rows with the features they do not carry read from the online store (one round trip);
        values the store lacks stay None (the preprocessing imputes them) and are named."""
        cfg = self.config.features
        assert cfg is not None
        assert self.store is not None
        kinds = {f["name"]: f["type"] for f in self.features}
        wanted = sorted({n for row in rows for n in kinds if n not in row})
        if not wanted:
            return rows, [[] for _ in rows]
        entities = [str(row[cfg.entity_key]) for row in rows]
        stored = await get_online_features(self.store, cfg.key_prefix, entities, wanted)
        self.feature_lookups += 1
        merged, imputed = [], []
        for row, found in zip(rows, stored, strict=True):
            out, missing = dict(row), []
            for name in wanted:
                if name in row:
                    continue
                value = stored_value(kinds[name], found.get(name))
                out[name] = value
                if value is None:
                    missing.append(name)
                    self.imputed[name] += 1
                    IMPUTED.labels(*self._labels, name).inc()
            merged.append(out)
            imputed.append(missing)
        return merged, imputed

    def _respond(
        self,
        payload: dict[str, Any] | InferRequest,
        rows: list[dict[str, Any]],
        preds: list[float] | None,
        reason: str,
        response_headers: dict[str, str] | None,
        imputed: list[list[str]] | None = None,
    ) -> dict[str, Any] | InferResponse:
        fallback = preds is None
        if response_headers is not None:
            response_headers[FALLBACK_HEADER] = "true" if fallback else "false"
            response_headers[VERSION_HEADER] = self.version
            response_headers[VARIANT_HEADER] = self.config.variant
        default = dict(self.config.fallback.default_response or {})
        if isinstance(payload, InferRequest):
            n = len(rows)
            if fallback:
                outputs = [_output(key, [value] * n) for key, value in default.items()]
            else:
                assert preds is not None
                outputs = [InferOutput("predictions", [n], "FP32", preds)]
            params: dict[str, Any] = {"fallback": fallback, "variant": self.config.variant}
            if fallback:
                params["fallback_reason"] = reason
            if imputed is not None:
                params["imputed"] = json.dumps(imputed)
            return InferResponse(
                response_id=payload.id or str(uuid.uuid4()),
                model_name=self.name,
                model_version=self.version,
                infer_outputs=outputs,
                parameters=params,
            )
        body: dict[str, Any] = {
            "predictions": [default] * len(rows) if fallback else preds,
            "model_name": self.name,
            "model_version": self.version,
            "variant": self.config.variant,
            "fallback": fallback,
        }
        if fallback:
            body["fallback_reason"] = reason
        if imputed is not None:
            body["imputed"] = imputed
        return body

    def parse(self, payload: dict[str, Any] | InferRequest) -> list[dict[str, Any]]:
        """The request's rows, every value checked against the artifact's feature schema.

        With online features, each row needs its entity key; the features it does not carry
        are read from the store."""
        key = self.config.features.entity_key if self.config.features else None
        if isinstance(payload, InferRequest):
            rows = self._v2_rows(payload, key)
        else:
            if not isinstance(payload, Mapping) or "instances" not in payload:
                raise InvalidInput('the request body must be a JSON object with "instances": [{...}, ...]')
            instances = payload["instances"]
            if not isinstance(instances, list) or not instances:
                raise InvalidInput('"instances" must be a non-empty list of objects')
            rows = []
            for i, row in enumerate(instances):
                if not isinstance(row, Mapping):
                    raise InvalidInput(f"instances[{i}] must be an object of feature values")
                rows.append(dict(row))
        kinds = {f["name"]: f["type"] for f in self.features}
        for i, row in enumerate(rows):
            if key is not None and (row.get(key) is None or not isinstance(row[key], str | int)):
                raise InvalidInput(f"instances[{i}].{key}: missing entity key (a string or an integer)")
            for name, kind in kinds.items():
                if name in row:
                    check_value(f"instances[{i}].{name}", kind, row[name])
                elif key is None:
                    raise InvalidInput(
                        f"instances[{i}].{name}: missing (the model's features: {list(kinds)})"
                    )
        return rows

    def _v2_rows(self, request: InferRequest, key: str | None) -> list[dict[str, Any]]:
        kinds = {f["name"]: f["type"] for f in self.features}
        columns: dict[str, list[Any]] = {}
        for inp in request.inputs:
            if inp.name != key:
                if inp.name not in kinds:
                    raise InvalidInput(
                        f"inputs.{inp.name}: not a feature of model {self.name} ({list(kinds)})"
                    )
                want = "BYTES" if kinds[inp.name] == CATEGORICAL else "a numeric type"
                ok = inp.datatype == "BYTES" if kinds[inp.name] == CATEGORICAL else inp.datatype in NUMERIC_V2
                if not ok:
                    raise InvalidInput(f"inputs.{inp.name}: datatype {inp.datatype}, expected {want}")
            data = inp.data if isinstance(inp.data, list) else inp.as_numpy().reshape(-1).tolist()
            columns[inp.name] = [v.decode() if isinstance(v, bytes) else v for v in _flatten(data)]
        needed = [key] if key is not None else list(kinds)
        missing = [n for n in needed if n not in columns]
        if missing:
            raise InvalidInput(f"inputs: missing {missing} (the model's features: {list(kinds)})")
        lengths = {len(c) for c in columns.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise InvalidInput(
                f"inputs: every input needs the same number of rows > 0, got {sorted(lengths)}"
            )
        n = lengths.pop()
        return [{name: col[i] for name, col in columns.items()} for i in range(n)]

    # -- figures ----------------------------------------------------------------------------------

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        REQUESTS.labels(*self._labels, outcome).inc()

    def _finish(self, started: float, *, fallback: bool, outcome: str) -> None:
        elapsed = time.monotonic() - started
        self._count(outcome)
        self._recent.append((elapsed * 1000.0, fallback))
        LATENCY.labels(*self._labels).observe(elapsed)
        if self.batcher is not None:
            QUEUED.labels(*self._labels).set(self.batcher.queued)

    def _export_breaker(self) -> None:
        BREAKER.labels(*self._labels).set(1 if self.breaker.state in (OPEN, HALF_OPEN) else 0)

    def status(self) -> ModelServerStatus:
        latencies = [ms for ms, _ in self._recent]
        batcher = self.batcher
        answered = self.counts["predicted"] + self.counts["fallback"] + self.counts["error"]
        self._export_breaker()
        drift = self.drift.scores() if self.drift is not None else None
        for feature, score in (drift or {}).items():
            DRIFT.labels(*self._labels, feature).set(score)
        return ModelServerStatus(
            name=self.name,
            variant=self.config.variant,
            model_version=self.version,
            ready=bool(self.ready),
            requests=answered,
            predictions=batcher.rows if batcher else 0,
            fallbacks=self.counts["fallback"],
            errors=self.counts["error"],
            rejected=self.counts["rejected"],
            invalid=self.counts["invalid"],
            batches=batcher.batches if batcher else 0,
            mean_batch_size=(batcher.rows / batcher.batches) if batcher and batcher.batches else None,
            breaker=self.breaker.state,
            breaker_opened=self.breaker.opened,
            queued=batcher.queued if batcher else 0,
            latency_p50_ms=percentile(latencies, 0.5),
            latency_p99_ms=percentile(latencies, 0.99),
            fallback_rate=(sum(1 for _, fb in self._recent if fb) / len(self._recent))
            if self._recent
            else None,
            feature_lookups=self.feature_lookups,
            imputed=dict(self.imputed),
            logged=self.predlog.counts.delivered if self.predlog else 0,
            log_dropped=self.predlog.counts.dropped if self.predlog else 0,
            log_failed=self.predlog.counts.failed if self.predlog else 0,
            drift=drift,
            drift_metric=self.config.drift.metric if self.config.drift else None,
        )


def check_value(where: str, kind: str, value: Any) -> None:
    """A feature value of the right type (None: missing, imputed by the preprocessing)."""
    if value is None:
        return
    if kind == NUMERIC:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    elif not isinstance(value, str | int):
        raise InvalidInput(f"{where}: expected a string (a category), got {type(value).__name__} {value!r}")


def stored_value(kind: str, value: Any) -> Any:
    """A feature value as the store holds it → the type the preprocessing expects; a value that
    does not parse is None (imputed), as a missing one is."""
    if value is None or value == "":
        return None
    if kind != NUMERIC:
        return str(value)
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in data:
        if isinstance(v, list):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def _output(name: str, values: list[Any]) -> InferOutput:
    if all(isinstance(v, bool) for v in values):
        return InferOutput(name, [len(values)], "BOOL", values)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return InferOutput(name, [len(values)], "FP32", [float(v) for v in values])
    return InferOutput(name, [len(values)], "BYTES", [str(v) for v in values])
