"""Latency management: the dynamic batcher and the circuit breaker.

`DynamicBatcher` groups the rows of concurrent requests into one forward pass: a batch closes
when it holds ``max_batch_size`` rows or its first request has waited ``max_latency_ms``; one
forward pass runs at a time (off the event loop, so a slow model never stalls the server), and
each caller gets its own rows' answers. Rows waiting are bounded by ``max_queue``: beyond it
`QueueFull` is raised at once (the server answers 429) instead of queueing without bound. A
caller that gave up (its deadline passed) is skipped when its batch is formed.

`CircuitBreaker`: closed → open after ``failure_threshold`` consecutive failures (errors or
deadline misses) → half-open after ``reset_timeout_s``, where one trial request goes to the
model: its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

Forward = Callable[[list[dict[str, Any]]], list[float]]


class QueueFull(Exception):
    """More rows are waiting for a forward pass than the queue holds."""


@dataclass
class _Pending:
    rows: list[dict[str, Any]]
    future: asyncio.Future[list[float]]
    arrived: float


class DynamicBatcher:
    """One forward pass per batch of concurrent requests (``enabled`` false: per request)."""

    def __init__(
        self,
        forward: Forward,
        *,
        enabled: bool,
        max_batch_size: int,
        max_latency_ms: float,
        max_queue: int,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.forward = forward
        self.enabled = enabled
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.batches = 0
        self.rows = 0
        self._pending: deque[_Pending] = deque()
        self._queued = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # One thread: forward passes run one at a time, which is what batching gains from.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forward")

    @property
    def queued(self) -> int:
        return self._queued

    async def submit(self, rows: list[dict[str, Any]]) -> list[float]:
        """The model's answers for ``rows``, in order; raises `QueueFull` or what forward raised."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="batcher")
        if self._queued + len(rows) > self.max_queue and self._queued > 0:
            raise QueueFull(f"{self._queued} rows are waiting (batching.maxQueue {self.max_queue})")
        loop = asyncio.get_running_loop()
        item = _Pending(rows, loop.create_future(), time.monotonic())
        self._pending.append(item)
        self._queued += len(rows)
        assert self._wake is not None
        self._wake.set()
        return await item.future

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if self.enabled:
                    await self._fill()
                batch = self._take()
                if not batch:
                    continue
                rows = [r for p in batch for r in p.rows]
                try:
                    out = await loop.run_in_executor(self._executor, self.forward, rows)
                    if len(out) != len(rows):
                        raise RuntimeError(f"the model answered {len(out)} rows for {len(rows)}")
                except Exception as e:
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(e)
                    continue
                self.batches += 1
                self.rows += len(rows)
                self.on_batch(len(rows))
                i = 0
                for p in batch:
                    if not p.future.done():
                        p.future.set_result(out[i : i + len(p.rows)])
                    i += len(p.rows)

    async def _fill(self) -> None:
        """Wait until the batch is full or its oldest request waited ``max_latency_ms``."""
        assert self._wake is not None
        while self._live_rows() < self.max_batch_size:
            oldest = self._pending[0].arrived if self._pending else time.monotonic()
            left = oldest + self.max_latency_s - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    def _live_rows(self) -> int:
        return sum(len(p.rows) for p in self._pending if not p.future.done())

    def _take(self) -> list[_Pending]:
        """The next batch: whole requests, up to ``max_batch_size`` rows (a larger request is a
        batch of its own); requests whose caller gave up are dropped."""
        batch: list[_Pending] = []
        size = 0
        while self._pending:
            p = self._pending[0]
            if p.future.done():
                self._pending.popleft()
                self._queued -= len(p.rows)
                continue
            if batch and (not self.enabled or size + len(p.rows) > self.max_batch_size):
                break
            self._pending.popleft()
            self._queued -= len(p.rows)
            batch.append(p)
            size += len(p.rows)
            if not self.enabled:
                break
        return batch

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


class CircuitBreaker:
    """closed → open (``failure_threshold`` consecutive failures) → half-open (after
    ``reset_timeout_s``: one trial) → closed on its success, open again on its failure."""

    def __init__(
        self, failure_threshold: int, reset_timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.clock = clock
        self.failures = 0
        self.opened = 0  # times it opened
        self._state = CLOSED
        self._opened_at = 0.0
        self._trial = False  # a half-open trial is in flight

    @property
    def state(self) -> str:
        if self._state == OPEN and self.clock() - self._opened_at >= self.reset_timeout_s:
            self._state = HALF_OPEN
            self._trial = False
        return self._state

    def allow(self) -> bool:
        """Whether a request may call the model now (half-open: the one trial only)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._trial:
            self._trial = True
            return True
        return False

    def release_trial(self) -> None:
        """A request allowed through never reached the model: a half-open trial is free again."""
        self._trial = False

    def record_success(self) -> None:
        self.failures = 0
        self._state = CLOSED
        self._trial = False

    def record_failure(self) -> None:
        if self.state == HALF_OPEN:
            self._open()
            return
        self.failures += 1
        if self._state == CLOSED and self.failures >= self.failure_threshold:
            self._open()

    def _open(self) -> None:
        self._state = OPEN
        self._opened_at = self.clock()
        self._trial = False
        self.opened += 1


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) of ``values`` by nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]
