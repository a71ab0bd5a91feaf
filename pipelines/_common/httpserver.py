"""A small threaded HTTP server for workloads whose main loop is not asyncio (the lake sink).

Serves ``/metrics`` (Prometheus text format from the default registry), ``/healthz`` and any
JSON endpoints the workload registers (``/status``). It runs in a daemon thread so a blocking
consumer loop keeps serving metrics.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

JsonProvider = Callable[[], tuple[int, Any]]


class MetricsServer:
    """``/metrics`` + JSON endpoints on ``host:port`` in a background thread."""

    def __init__(self, host: str, port: int, endpoints: Mapping[str, JsonProvider]) -> None:
        routes = dict(endpoints)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the stdlib's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
                    return
                provider = routes.get(path)
                if provider is None:
                    self._send(404, b'{"error": "not found"}', "application/json")
                    return
                try:
                    code, body = provider()
                except Exception as e:  # a status endpoint must answer, not kill the thread
                    code, body = 500, {"error": str(e)}
                self._send(code, json.dumps(body).encode(), "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
                pass  # scrapes every few seconds would drown the workload's own log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
