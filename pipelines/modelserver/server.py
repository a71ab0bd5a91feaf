"""The model server process: one `GyreModel` in KServe's `ModelServer` (REST, no gRPC).

The model is loaded and warmed up before the server listens, so a replica that answers at all
answers predictions. Beside KServe's V1/V2 endpoints and ``/metrics`` (Prometheus, the default
registry, where the Gyre model metrics live), the same port serves the status contract's
``/status`` (`ModelServerStatus`). A refused request (the queue is full) is answered 429 with
``Retry-After``.
"""

from __future__ import annotations

import logging
import warnings

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from gyre.pipelines._common.status import STATUS_PATH
from gyre.pipelines.modelserver.config import ModelServerConfig
from gyre.pipelines.modelserver.model import GyreModel, Overloaded
from kserve import ModelServer
from kserve import model_server as kserve_app

log = logging.getLogger("gyre.pipelines.modelserver")

RETRY_AFTER_S = "1"
READY_PATH = "/v2/health/ready"


def build_app(model: GyreModel) -> None:
    """Add Gyre's routes and error answers to KServe's application."""
    app = kserve_app.app

    async def status(request: Request) -> Response:
        return Response(content=model.status().model_dump_json(), media_type="application/json")

    async def overloaded(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=429, headers={"Retry-After": RETRY_AFTER_S})

    app.add_api_route(STATUS_PATH, status, methods=["GET"])
    app.add_exception_handler(Overloaded, overloaded)


def quiet_request_logs() -> None:
    """No log line per request (KServe's access and timing lines): at thousands of requests a
    second they would cost more than the model; /metrics counts requests instead."""
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # KServe answers with FastAPI's ORJSONResponse, which FastAPI now warns about on every use.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")


def serve(config: ModelServerConfig) -> None:
    model = GyreModel(config)
    model.load()
    build_app(model)
    server = ModelServer(http_port=config.port, enable_grpc=False, workers=1, enable_latency_logging=False)
    quiet_request_logs()
    log.info("Model server %s (%s) on port %d", config.name, config.variant, config.port)
    server.start([model])
