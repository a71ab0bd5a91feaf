"""The launcher: Horovod's rendezvous server plus the gang that decides when training starts.

It does what ``horovodrun --gloo`` does internally, without ssh: it serves
``horovod.runner.http.http_server``'s rendezvous store with the host assignment of all
workers, so each worker's ``hvd.init()`` forms the gloo rings through it. Workers are started
by the runtime (processes locally, pods on Kubernetes) and find the launcher through
``GYRE_LAUNCHER_ADDR``.

Gang semantics: training starts only when every worker has joined. If one has not joined
within ``gang_timeout_s`` the launcher fails the job with a message naming the missing
workers; once running, a worker that reports failure, stops beating for
``heartbeat_timeout_s`` or joins again (it was restarted) fails the gang too, and every other
worker learns it at its next heartbeat and exits. The launcher exits 0 when all workers are
done, 1 otherwise: the runtime's restart policy restarts the whole gang, which resumes from the
latest checkpoint. For the ``ddp`` backend it also hosts torch's TCPStore, like torchrun's agent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from gyre.pipelines._common.status import STATUS_PATH
from gyre.pipelines.trainer.config import TrainerConfig
from gyre.pipelines.trainer.progress import mark_failed
from gyre.pipelines.trainer.status import GangStatus, TrainerProgress, TrainerStatus
from gyre.pipelines.trainer.topology import build_slots

log = logging.getLogger("gyre.trainer.launcher")

# time the launcher keeps answering after the gang ended, so every worker reads the verdict
VERDICT_GRACE_S = 3.0


class Gang:
    """The launcher's view of the workers; every method is thread-safe."""

    def __init__(self, size: int, gang_timeout_s: float, heartbeat_timeout_s: float) -> None:
        self.size = size
        self.gang_timeout_s = gang_timeout_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.started = time.monotonic()
        self.phase = "gathering"
        self.message = f"waiting for {size} workers"
        self.joined: dict[int, float] = {}
        self.done: set[int] = set()
        self.store_port: int | None = None
        self.progress: TrainerProgress | None = None  # what rank 0 last reported
        self.final_status_read = False  # /status was served after the gang ended
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "phase": self.phase,
                "message": self.message,
                "joined": sorted(self.joined),
                "done": sorted(self.done),
                "size": self.size,
                "store_port": self.store_port,
            }

    def status(self) -> TrainerStatus:
        """The `/status` document; marks the final one as read once the gang has ended."""
        with self._lock:
            if self.phase in ("succeeded", "failed"):
                self.final_status_read = True
                self.changed.notify_all()
            return TrainerStatus(
                gang=GangStatus(
                    phase=self.phase,
                    message=self.message,
                    size=self.size,
                    joined=sorted(self.joined),
                    done=sorted(self.done),
                ),
                progress=self.progress,
            )

    def report(self, body: str) -> None:
        """Rank 0's progress (a `TrainerProgress` document); a malformed one is ignored."""
        try:
            progress = TrainerProgress.model_validate_json(body)
        except ValueError:
            log.warning("Ignored a malformed progress report: %.200s", body)
            return
        with self._lock:
            self.progress = progress

    def wait_read(self, timeout_s: float) -> bool:
        """After the gang ended: wait until the final `/status` was served once."""
        end = time.monotonic() + timeout_s
        with self._lock:
            while not self.final_status_read:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
            return True

    def _fail(self, message: str) -> None:
        if self.phase in ("gathering", "running"):
            self.phase = "failed"
            self.message = message
            log.error("Gang failed: %s", message)
            self.changed.notify_all()

    def join(self, rank: int) -> None:
        with self._lock:
            if not 0 <= rank < self.size:
                return
            if self.phase == "running":
                self._fail(f"worker {rank} joined again after the start (it was restarted)")
                return
            self.joined[rank] = time.monotonic()
            log.info("Worker %d joined (%d/%d)", rank, len(self.joined), self.size)
            if self.phase == "gathering" and len(self.joined) == self.size:
                self.phase = "running"
                self.message = f"all {self.size} workers joined"
                # heartbeats start now; the time spent gathering must not count against them
                self.joined = dict.fromkeys(self.joined, time.monotonic())
                log.info("Gang started: all %d workers joined", self.size)
            self.changed.notify_all()

    def beat(self, rank: int) -> None:
        with self._lock:
            if rank in self.joined:
                self.joined[rank] = time.monotonic()

    def finish(self, rank: int) -> None:
        with self._lock:
            self.done.add(rank)
            log.info("Worker %d finished (%d/%d)", rank, len(self.done), self.size)
            if self.phase == "running" and len(self.done) == self.size:
                self.phase = "succeeded"
                self.message = "all workers finished"
            self.changed.notify_all()

    def fail(self, rank: int, reason: str) -> None:
        with self._lock:
            now = time.monotonic()
            # a collective error on one rank is often the symptom of another rank's death:
            # name when each worker was last heard of
            seen = ", ".join(f"worker {r} {now - t:.1f}s ago" for r, t in sorted(self.joined.items()))
            self._fail(f"worker {rank} failed: {reason} (last heartbeats: {seen})")

    def check_timeouts(self) -> None:
        now = time.monotonic()
        with self._lock:
            if self.phase == "gathering" and now - self.started > self.gang_timeout_s:
                missing = sorted(set(range(self.size)) - set(self.joined))
                self._fail(
                    f"gang timeout: {len(self.joined)} of {self.size} workers joined within "
                    f"{self.gang_timeout_s:g}s; missing worker(s) {missing}"
                )
            elif self.phase == "running":
                for rank, seen in self.joined.items():
                    if rank not in self.done and now - seen > self.heartbeat_timeout_s:
                        self._fail(f"worker {rank} sent no heartbeat for {self.heartbeat_timeout_s:g}s")
                        break

    def wait_end(self, poll_s: float = 0.5) -> str:
        while True:
            self.check_timeouts()
            with self._lock:
                if self.phase in ("succeeded", "failed"):
                    return self.phase
                self.changed.wait(poll_s)


def _make_handler(gang: Gang, base: type[BaseHTTPRequestHandler]) -> type[BaseHTTPRequestHandler]:
    """Horovod's rendezvous handler, with the gang endpoints under ``/gyre/`` added."""

    class Handler(base):  # type: ignore[valid-type, misc]
        def _gyre(self, method: str) -> bool:
            parts = self.path.strip("/").split("/")
            if parts[0] != "gyre":
                return False
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode(errors="replace") if length else ""
            verb = parts[1] if len(parts) > 1 else ""
            try:
                rank = int(parts[2]) if len(parts) > 2 else -1
            except ValueError:
                rank = -1
            if method == "PUT" and verb == "join":
                gang.join(rank)
            elif method == "PUT" and verb == "beat":
                gang.beat(rank)
            elif method == "PUT" and verb == "done":
                gang.finish(rank)
            elif method == "PUT" and verb == "fail":
                gang.fail(rank, body or "unknown error")
            elif method == "PUT" and verb == "progress":
                gang.report(body)
            elif not (method == "GET" and verb == "state"):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True
            payload = json.dumps(gang.state()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return True

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
            if self.path.split("?", 1)[0] == STATUS_PATH:
                payload = gang.status().model_dump_json().encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            elif not self._gyre("GET"):
                super().do_GET()

        def do_PUT(self) -> None:  # noqa: N802
            if not self._gyre("PUT"):
                super().do_PUT()

    return Handler


class Launcher:
    """Serves rendezvous (and the gang) on ``host:port``; usable in-process (tests, bench)."""

    def __init__(
        self,
        size: int,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        workers_per_host: int = 0,
        gang_timeout_s: float = 120.0,
        heartbeat_timeout_s: float = 30.0,
        store_port: int | None = None,
    ) -> None:
        # horovod.runner is pure Python; importing it does not load the torch extension
        from horovod.runner.common.util.hosts import SlotInfo
        from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

        self.gang = Gang(size, gang_timeout_s, heartbeat_timeout_s)
        handler = _make_handler(self.gang, RendezvousHandler)
        self._server = RendezvousHTTPServer((host, port), handler, 0)
        # Handler threads are joined on close: the last worker's `done` must get its whole
        # answer before the launcher exits, or that worker reads a cut response and fails.
        self._server.daemon_threads = False
        self._server.block_on_close = True
        plan = [SlotInfo(**vars(s)) for s in build_slots(size, workers_per_host)]
        self._server.init(plan)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._store: Any = None
        if store_port is not None:
            self._start_store(store_port)

    def _start_store(self, port: int) -> None:
        import datetime

        import torch.distributed as dist

        self._store = dist.TCPStore(  # type: ignore[attr-defined]
            "0.0.0.0",
            port,
            world_size=None,
            is_master=True,
            timeout=datetime.timedelta(seconds=self.gang.gang_timeout_s),
            wait_for_workers=False,
        )
        self.gang.store_port = int(self._store.port)
        log.info("Started TCPStore for torch.distributed on port %d", self.gang.store_port)

    def start(self) -> Launcher:
        self._thread.start()
        log.info("Rendezvous listening on port %d for %d workers", self.port, self.gang.size)
        return self

    def wait(self) -> str:
        """Block until the gang succeeded or failed; returns the phase."""
        phase = self.gang.wait_end()
        if phase == "failed":
            # answer the remaining workers' heartbeats with the verdict before going away
            time.sleep(VERDICT_GRACE_S)
        return phase

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._store = None


def run_launcher(config: TrainerConfig, port: int, store_port: int | None) -> int:
    """The launcher process: serve until the gang ends; 0 on success."""
    launcher = Launcher(
        config.workers,
        port=port,
        workers_per_host=config.placement(),
        gang_timeout_s=config.gang_timeout_s,
        heartbeat_timeout_s=config.heartbeat_timeout_s,
        store_port=(store_port or 0) if config.backend == "ddp" else None,
    ).start()
    try:
        phase = launcher.wait()
        # The run's figures live here only: stay until the controller has read the final
        # status (or the linger ran out: it reads the last figures it saw).
        if config.status_linger_s > 0 and not launcher.gang.wait_read(config.status_linger_s):
            log.info("Final status not read within %gs; exiting", config.status_linger_s)
    finally:
        launcher.stop()
    state = launcher.gang.state()
    if phase == "succeeded":
        log.info("TrainingJob %s succeeded: %s", config.name, state["message"])
        return 0
    log.error("TrainingJob %s failed: %s", config.name, state["message"])
    mark_failed(config.status_path, state["message"])
    return 1
