"""The model server's circuit breaker, dynamic batcher, percentiles and configuration."""

from __future__ import annotations

import asyncio
import threading

import pytest
from gyre.pipelines._common.env import ConfigError
from gyre.pipelines.modelserver.config import ModelServerConfig
from gyre.pipelines.modelserver.resilience import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    DynamicBatcher,
    QueueFull,
    percentile,
)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_the_threshold_then_half_opens_and_closes() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, reset_timeout_s=10, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == CLOSED
    b.record_success()  # consecutive failures only
    for _ in range(3):
        b.record_failure()
    assert (b.state, b.allow(), b.opened) == (OPEN, False, 1)
    clock.t += 9.9
    assert not b.allow()
    clock.t += 0.2
    assert b.state == HALF_OPEN
    assert b.allow(), "one trial"
    assert not b.allow(), "only one trial at a time"
    b.record_failure()
    assert (b.state, b.opened) == (OPEN, 2)
    clock.t += 10
    assert b.allow()
    b.record_success()
    assert (b.state, b.allow()) == (CLOSED, True)


def test_a_released_trial_lets_the_next_request_try() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=1, clock=clock)
    b.record_failure()
    clock.t += 1
    assert b.allow()
    b.release_trial()
    assert b.allow()


def _batcher(calls: list[int], gate: threading.Event | None = None, **kw: object) -> DynamicBatcher:
    def forward(rows: list[dict[str, object]]) -> list[float]:
        if gate is not None:
            gate.wait(5)
        calls.append(len(rows))
        return [float(r["x"]) * 2 for r in rows]  # type: ignore[arg-type]

    opts: dict[str, object] = {"enabled": True, "max_batch_size": 8, "max_latency_ms": 50, "max_queue": 100}
    opts.update(kw)
    return DynamicBatcher(forward, **opts)  # type: ignore[arg-type]


def test_concurrent_requests_share_one_forward_pass_and_get_their_own_rows() -> None:
    calls: list[int] = []

    async def main() -> list[list[float]]:
        b = _batcher(calls)
        out = await asyncio.gather(*(b.submit([{"x": i}, {"x": i + 0.5}]) for i in range(4)))
        b.close()
        return list(out)

    out = asyncio.run(main())
    assert out == [[2.0 * i, 2.0 * i + 1] for i in range(4)]
    assert calls == [8], "4 requests of 2 rows fill one batch of 8"


def test_batching_off_is_one_forward_per_request_and_a_full_queue_refuses() -> None:
    calls: list[int] = []

    async def main() -> None:
        b = _batcher(calls, enabled=False)
        await asyncio.gather(*(b.submit([{"x": i}]) for i in range(5)))
        b.close()

    asyncio.run(main())
    assert calls == [1] * 5
    gate = threading.Event()
    calls.clear()

    async def flood() -> list[object]:
        b = _batcher(calls, gate, max_batch_size=2, max_latency_ms=0, max_queue=4)
        tasks = [asyncio.create_task(b.submit([{"x": i}])) for i in range(10)]
        await asyncio.sleep(0.05)
        gate.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        b.close()
        return out

    out = asyncio.run(flood())
    refused = [o for o in out if isinstance(o, QueueFull)]
    assert refused, out
    assert all(isinstance(o, list) for o in out if o not in refused)
    assert sum(calls) == len(out) - len(refused)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile([], 0.5)) == (50.0, 99.0, None)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"artifact": "/m"}, "missing required field 'name'"),
        ({"name": "m", "artifact": "/m", "variant": "blue"}, "variant 'blue'"),
        ({"name": "m", "artifact": "/m", "batching": {"max_batch_size": 0}}, "batching.max_batch_size"),
        ({"name": "m", "artifact": "/m", "fallback": {"deadline_ms": 0}}, "fallback.deadline_ms"),
        ({"name": "m", "artifact": "/m", "fallback": {"deadline": 3}}, "unknown fields ['deadline']"),
    ],
)
def test_config_errors_name_the_field(data: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        ModelServerConfig.from_dict(data)


def test_config_round_trips() -> None:
    cfg = ModelServerConfig.from_dict(
        {"name": "m", "artifact": "/m", "fallback": {"default_response": {"p": 0.1}}, "variant": "canary"}
    )
    assert ModelServerConfig.from_json(cfg.to_json()) == cfg


def test_drift_scores_a_shifted_column_and_not_a_steady_one() -> None:
    import numpy as np
    from gyre.pipelines.modelserver.drift import DriftMonitor

    rng = np.random.default_rng(0)
    onehot = np.eye(3)[rng.choice(3, size=2000, p=[0.5, 0.3, 0.2])]
    reference = np.column_stack([rng.normal(size=2000), rng.normal(size=2000), onehot])
    clock = Clock()
    for metric in ("psi", "ks"):
        m = DriftMonitor(
            reference, ["a", "b"], [("c", 3)], metric=metric, window_s=60, min_rows=100, clock=clock
        )
        assert m.scores() is None, "too few rows"
        live = np.column_stack(
            [rng.normal(size=500) + 1.0, rng.normal(size=500), np.eye(3)[rng.choice(3, size=500)]]
        )
        m.observe(live)
        scores = m.scores()
        assert scores is not None
        high = 0.3 if metric == "psi" else 0.25
        assert scores["a"] > high, scores
        assert scores["b"] < 0.1, scores
        assert scores["c"] > 0.05, scores  # uniform against 50/30/20
        clock.t += 61
        assert m.scores() is None, "rows older than the window are forgotten"
