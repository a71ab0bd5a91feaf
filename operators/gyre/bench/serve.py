"""Serving benchmark: the InferenceService path against a bare KServe model server, one run.

On one small model (an MLP over two numeric and one categorical feature, its preprocessing
fitted on synthetic rows and saved as a Gyre artifact):

1. ``bare``: the same network in a minimal KServe `ModelServer` with no Gyre code
   (`gyre.bench.bare_modelserver`: preprocessed vectors in, one forward per request);
   ``gyre``: the InferenceService's workloads as the local runtime runs them (the router in
   front of ``python -m gyre.pipelines.modelserver``: preprocessing, batching, deadline),
   raw rows in. Both under the same open-loop load of ``offered_per_s`` one-row requests for
   ``--seconds``, latency measured from each request's scheduled send time: p50/p99 and
   ``p99_ratio`` = gyre p99 / bare p99 (goal <= 1.3).
2. ``throughput``: requests/s of the gyre path with 64 concurrent clients, batching on and
   off (``batching_gain`` = on / off, goal >= 3).
3. ``features``: the gyre path with online features from a real ``redis-server`` (requests
   carry only the entity key), at the offered load: p99 (goal <= the deadline) and the count
   of fallbacks (goal 0). Skipped, and said so, where redis-server is not installed.

Every process shares the machine's cores. Progress goes to stderr; stdout gets one JSON
object. Usage: ``gyre bench serve [--offered-per-s N] [--seconds S] [--clients C]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from gyre.api.inferenceservice import InferenceServiceSpec
from gyre.bench.redis_server import start_redis_server
from gyre.builders.inferenceservice import ROUTER, Artifacts, OnlineStoreRef, build_inferenceservice
from gyre.controlplane.procs import free_port
from gyre.core.workload import Owner, WorkloadPhase
from gyre.pipelines.features.config import key_prefix
from gyre.pipelines.features.online import OnlineRow, materialize
from gyre.runtimes.local import LocalRuntime

OWNER = Owner(kind="InferenceService", namespace="bench", name="bench", uid="bench")
FEATURE_JOB = "bench-features"
ENTITIES = 2000


def _log(msg: str) -> None:
    print(f"[bench serve] {msg}", file=sys.stderr, flush=True)


def make_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    colors = rng.choice(["red", "green", "blue"], size=n)
    return [
        {"x1": float(a), "x2": float(b), "color": str(c)}
        for a, b, c in zip(rng.normal(size=n), rng.normal(3, 2, size=n), colors, strict=True)
    ]


def make_artifact(root: Path, rows: list[dict[str, Any]]) -> tuple[str, list[list[float]]]:
    """A Gyre artifact of an MLP (64, 32) over ``rows``' features; and the rows preprocessed."""
    import torch

    from gyre.pipelines.trainer import artifact
    from gyre.pipelines.trainer.config import ModelConfig
    from gyre.pipelines.trainer.data import CATEGORICAL, NUMERIC, RawColumns
    from gyre.pipelines.trainer.models import build_mlp
    from gyre.pipelines.trainer.preprocessing import Preprocessor, rows_to_columns, shard_stats

    kinds = [("x1", NUMERIC), ("x2", NUMERIC), ("color", CATEGORICAL)]
    cols = rows_to_columns(rows)
    raw = RawColumns(
        {
            "x1": np.asarray(cols["x1"], dtype=np.float64),
            "x2": np.asarray(cols["x2"], dtype=np.float64),
            "color": np.asarray(cols["color"], dtype=object),
        },
        np.zeros(len(rows), dtype=np.float32),
    )
    pre = Preprocessor.fit(kinds, [shard_stats(raw, kinds)], max_categories=16)
    torch.manual_seed(0)
    params = {"hidden": [64, 32]}
    net = build_mlp(pre.input_dim, params)
    cfg = ModelConfig(kind="mlp", task="binary_classification", params=params)
    uri = f"file://{root / 'model'}"
    meta = {"model_version": "bench-v1", "features": pre.features}
    artifact.save(uri, net, cfg, pre.input_dim, pre, meta)
    return uri, pre.transform(cols).tolist()


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _wait(check: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready within {timeout:g}s")
        time.sleep(0.2)


async def open_loop(url: str, bodies: list[Any], rate: float, seconds: float) -> dict[str, Any]:
    """One request every 1/rate s for ``seconds``; latency from each one's scheduled time."""
    n = max(1, int(rate * seconds))
    latencies: list[float] = []
    codes: dict[int, int] = {}
    fallbacks = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter() + 0.05

        async def one(i: int) -> None:
            nonlocal fallbacks
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            async with session.post(url, json=bodies[i % len(bodies)]) as r:
                body = await r.json(content_type=None)
            latencies.append(time.perf_counter() - scheduled)
            codes[r.status] = codes.get(r.status, 0) + 1
            fallbacks += bool(isinstance(body, dict) and body.get("fallback"))

        await asyncio.gather(*(one(i) for i in range(n)))
    ms = np.asarray(latencies) * 1000.0
    return {
        "requests": n,
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "codes": {str(k): v for k, v in sorted(codes.items())},
        "fallbacks": fallbacks,
    }


async def closed_loop(url: str, bodies: list[Any], clients: int, seconds: float) -> float:
    """Requests/s with ``clients`` each sending its next request when the last is answered."""
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        stop = time.perf_counter() + seconds

        async def client(c: int) -> None:
            nonlocal done
            i = c
            while time.perf_counter() < stop:
                async with session.post(url, json=bodies[i % len(bodies)]) as r:
                    await r.read()
                    done += r.status == 200
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        elapsed = time.perf_counter() - t0
    return round(done / elapsed, 1)


def isvc_spec(
    uri: str, *, batching: bool = True, features: bool = False, deadline_ms: int = 1000
) -> InferenceServiceSpec:
    doc: dict[str, Any] = {
        "model": {"uri": uri},
        "batching": {"enabled": batching, "maxBatchSize": 32, "maxLatencyMs": 2},
        "fallback": {"deadlineMs": deadline_ms, "defaultResponse": {"probability": 0.5}},
    }
    if features:
        doc["features"] = {"featureJob": FEATURE_JOB, "entityKey": "user_id"}
    return InferenceServiceSpec.model_validate(doc)


async def apply_and_wait(rt: LocalRuntime, spec: InferenceServiceSpec, artifacts: Artifacts) -> str:
    workloads = build_inferenceservice(spec, "bench", artifacts)
    await rt.apply(OWNER, workloads)
    deadline = time.monotonic() + 120
    while True:
        observed = await rt.observe(OWNER)
        if all(observed.get(w.name) and observed[w.name].phase == WorkloadPhase.READY for w in workloads):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"InferenceService workloads not ready: {observed}")
        await asyncio.sleep(0.2)
    return f"http://{rt.endpoint(OWNER, ROUTER, 'http')}/v1/models/bench:predict"


async def run_gyre(
    args: argparse.Namespace, tmp: Path, uri: str, rows: list[dict[str, Any]], redis_port: int | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rt = LocalRuntime(tmp / "local")
    try:
        bodies = [{"instances": [r]} for r in rows]
        url = await apply_and_wait(rt, isvc_spec(uri), Artifacts(stable=uri))
        await open_loop(url, bodies, args.offered_per_s, args.warmup_s)
        out["gyre"] = await open_loop(url, bodies, args.offered_per_s, args.seconds)
        _log(f"gyre: {out['gyre']}")
        on = await closed_loop(url, bodies, args.clients, args.seconds)
        url = await apply_and_wait(rt, isvc_spec(uri, batching=False), Artifacts(stable=uri))
        await closed_loop(url, bodies, args.clients, args.warmup_s)
        off = await closed_loop(url, bodies, args.clients, args.seconds)
        out["throughput"] = {"clients": args.clients, "batching_on_per_s": on, "batching_off_per_s": off}
        out["batching_gain"] = round(on / off, 2) if off else None
        _log(f"throughput: {out['throughput']}")
        if redis_port is None:
            out["features"] = {"skipped": "redis-server is not installed"}
            return out
        spec = isvc_spec(uri, features=True, deadline_ms=args.deadline_ms)
        store = OnlineStoreRef(f"redis://127.0.0.1:{redis_port}/0", key_prefix(OWNER.namespace, FEATURE_JOB))
        url = await apply_and_wait(rt, spec, Artifacts(stable=uri, online_store=store))
        keyed = [{"instances": [{"user_id": e}]} for e in range(ENTITIES)]
        await open_loop(url, keyed, args.offered_per_s, args.warmup_s)
        feats = await open_loop(url, keyed, args.offered_per_s, args.seconds)
        out["features"] = {**feats, "deadline_ms": args.deadline_ms}
        _log(f"features: {out['features']}")
    finally:
        await rt.close()
    return out


async def measure_bare(args: argparse.Namespace, port: int, vectors: list[list[float]]) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/v1/models/bare:predict"
    bodies = [{"instances": [v]} for v in vectors]
    await open_loop(url, bodies, args.offered_per_s, args.warmup_s)
    result = await open_loop(url, bodies, args.offered_per_s, args.seconds)
    _log(f"bare: {result}")
    return result


def run_bare(args: argparse.Namespace, tmp: Path, uri: str, vectors: list[list[float]]) -> dict[str, Any]:
    port = free_port()
    model_pt = uri.removeprefix("file://") + "/model.pt"
    with (tmp / "bare.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gyre.bench.bare_modelserver", model_pt, str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            _wait(lambda: _get_ok(f"http://127.0.0.1:{port}/v2/health/ready"), "the bare model server")
            return asyncio.run(measure_bare(args, port, vectors))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def start_redis(tmp: Path, rows: list[dict[str, Any]]) -> tuple[subprocess.Popen[bytes], int] | None:
    """A real redis-server holding ``ENTITIES`` entities' features (None: not installed)."""
    started = start_redis_server(tmp)
    if started is None:
        return None
    proc, port = started
    import redis

    client = redis.Redis(port=port)
    online = [OnlineRow(str(e), 0, rows[e % len(rows)]) for e in range(ENTITIES)]
    materialize(
        client, key_prefix(OWNER.namespace, FEATURE_JOB), online, ttl_s=3600
    )  # as a FeatureJob writes
    return proc, port


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gyre bench serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--offered-per-s", type=float, default=200.0, help="open-loop requests per second")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measured phase")
    p.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured load before each phase")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients of the throughput phase")
    p.add_argument("--deadline-ms", type=int, default=100, help="fallback.deadlineMs of the features phase")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from gyre import __version__

    report: dict[str, Any] = {
        "benchmark": "serve",
        "gyre_version": __version__,
        "offered_per_s": args.offered_per_s,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }
    rows = make_rows(ENTITIES)
    with tempfile.TemporaryDirectory(prefix="gyre-bench-serve-") as d:
        tmp = Path(d)
        uri, vectors = make_artifact(tmp, rows)
        report["bare"] = run_bare(args, tmp, uri, vectors)
        store = start_redis(tmp, rows)
        try:
            report.update(asyncio.run(run_gyre(args, tmp, uri, rows, store[1] if store else None)))
        finally:
            if store is not None:
                store[0].kill()
                store[0].wait()
    bare, gyre = report["bare"]["p99_ms"], report["gyre"]["p99_ms"]
    report["p99_ratio"] = round(gyre / bare, 3) if bare else None
    feats = report.get("features", {})
    report["goals"] = {
        "p99_ratio<=1.3": report["p99_ratio"] is not None and report["p99_ratio"] <= 1.3,
        "batching_gain>=3": (report.get("batching_gain") or 0) >= 3,
        "features_p99<=deadline": "p99_ms" in feats and feats["p99_ms"] <= feats["deadline_ms"],
        "features_no_fallbacks": "fallbacks" in feats and feats["fallbacks"] == 0,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
