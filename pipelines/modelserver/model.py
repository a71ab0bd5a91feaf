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
import logging
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import torch
from gyre.pipelines.modelserver.config import ModelServerConfig
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

log = logging.getLogger("gyre.pipelines.modelserver")

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
QUEUED = Gauge("gyre_model_queued_rows", "Rows waiting for a forward pass.", ["model", "variant"])

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
        self.counts: collections.Counter[str] = collections.Counter()
        self._recent: collections.deque[tuple[float, bool]] = collections.deque(maxlen=config.latency_window)
        self._labels = (config.name, config.variant)

    # -- loading ----------------------------------------------------------------------------------

    def load(self) -> bool:
        # One thread per forward pass: batches are small, and replicas share the cores.
        torch.set_num_threads(max(1, int(os.environ.get("GYRE_TORCH_THREADS", "1"))))
        model = artifact.load(self.config.artifact)
        self.artifact = model
        b = self.config.batching
        self.batcher = DynamicBatcher(
            model.predict,
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
        started = time.monotonic()
        try:
            rows = self.parse(payload)
        except InvalidInput:
            self._count("invalid")
            raise
        preds: list[float] | None = None
        reason = ""
        if not self.breaker.allow():
            reason = "breaker_open"
        else:
            assert self.batcher is not None
            left = self.config.fallback.deadline_ms / 1000.0 - (time.monotonic() - started)
            try:
                preds = await asyncio.wait_for(self.batcher.submit(rows), max(left, 0.0))
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
            return self._respond(payload, rows, None, reason, response_headers)
        self._finish(started, fallback=False, outcome="predicted")
        return self._respond(payload, rows, preds, "", response_headers)

    def _respond(
        self,
        payload: dict[str, Any] | InferRequest,
        rows: list[dict[str, Any]],
        preds: list[float] | None,
        reason: str,
        response_headers: dict[str, str] | None,
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
        return body

    def parse(self, payload: dict[str, Any] | InferRequest) -> list[dict[str, Any]]:
        """The request's rows, every value checked against the artifact's feature schema."""
        if isinstance(payload, InferRequest):
            rows = self._v2_rows(payload)
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
            for name, kind in kinds.items():
                if name not in row:
                    raise InvalidInput(
                        f"instances[{i}].{name}: missing (the model's features: {list(kinds)})"
                    )
                check_value(f"instances[{i}].{name}", kind, row[name])
        return rows

    def _v2_rows(self, request: InferRequest) -> list[dict[str, Any]]:
        kinds = {f["name"]: f["type"] for f in self.features}
        columns: dict[str, list[Any]] = {}
        for inp in request.inputs:
            if inp.name not in kinds:
                raise InvalidInput(f"inputs.{inp.name}: not a feature of model {self.name} ({list(kinds)})")
            want = "BYTES" if kinds[inp.name] == CATEGORICAL else "a numeric type"
            ok = inp.datatype == "BYTES" if kinds[inp.name] == CATEGORICAL else inp.datatype in NUMERIC_V2
            if not ok:
                raise InvalidInput(f"inputs.{inp.name}: datatype {inp.datatype}, expected {want}")
            data = inp.data if isinstance(inp.data, list) else inp.as_numpy().reshape(-1).tolist()
            columns[inp.name] = [v.decode() if isinstance(v, bytes) else v for v in _flatten(data)]
        missing = [n for n in kinds if n not in columns]
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
