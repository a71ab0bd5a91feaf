"""Stream data-plane benchmark: collector → Kafka → Parquet lake against raw Kafka, one run.

On one real KRaft broker started for the run:

1. ``raw_events_per_s``: a plain confluent-kafka producer (``acks=all``, idempotent, the
   same linger and compression as the collector) sends the serialized events while a consumer
   reads them back; the clock stops at the last record consumed.
2. ``events_per_s``: the same events, batched into ``POST /v1/events`` requests, go through
   the collector workload (validation, keying, delivery reports) into a topic that the lake
   sink workload turns into committed Parquet files; the clock stops when the lake's commit
   log covers every event.
3. ``p50_ms`` / ``p99_ms``: collector request latency under an open-loop load of
   ``offered_per_s`` events/s in requests of ``latency_batch`` events, measured from each
   request's scheduled send time (so a stalled server is not hidden by a stalled client).

``ratio`` = ``events_per_s`` / ``raw_events_per_s``. Progress goes to stderr; stdout gets one
JSON object. Usage: ``gyre bench stream [--events N] ...`` (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from gyre.pipelines._common.schema import StreamSchema
from gyre.pipelines.collector.config import CollectorConfig
from gyre.pipelines.kafka.fetch import KAFKA_VERSION
from gyre.pipelines.kafka.local import LocalKafka, free_port
from gyre.pipelines.kafka.topics import TopicSpec, ensure_topic
from gyre.pipelines.lakesink.config import LakeSinkConfig

SCHEMA = StreamSchema.from_dict(
    {
        "fields": [
            {"name": "event_id", "type": "long", "required": True},
            {"name": "user_id", "type": "string", "required": True},
            {"name": "ts", "type": "timestamp", "required": True},
            {"name": "kind", "type": "string", "required": True, "enum": ["click", "view", "buy"]},
            {"name": "page", "type": "string"},
            {"name": "dwell_ms", "type": "int"},
        ],
        "key_field": "user_id",
        "timestamp_field": "ts",
    }
)
_KINDS = ("click", "view", "buy")


def _log(msg: str) -> None:
    print(f"[bench stream] {msg}", file=sys.stderr, flush=True)


def _event(i: int) -> dict[str, Any]:
    return {
        "event_id": i,
        "user_id": f"u{i % 10007}",
        "ts": 1_714_521_600_000 + i,
        "kind": _KINDS[i % 3],
        "page": f"/p/{i % 101}",
        "dwell_ms": i % 30000,
    }


class _Progress:
    def __init__(self, what: str, total: int, t0: float | None = None) -> None:
        self.what, self.total = what, total
        self.t0 = time.monotonic() if t0 is None else t0  # time.monotonic() of the start
        self.next = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next:
            return
        self.next = now + 2.0
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        _log(
            f"{self.what}: {done}/{self.total} ({100 * done / self.total:.0f}%), "
            f"{rate:,.0f}/s, ETA {eta:.0f}s"
        )


def _collector_config(bootstrap: str, linger_ms: float) -> CollectorConfig:
    return CollectorConfig(
        topic="bench-stream", schema=SCHEMA, bootstrap_servers=bootstrap, host="127.0.0.1",
        linger_ms=linger_ms,
    )  # fmt: skip


def _producer_conf(bootstrap: str, linger_ms: float) -> dict[str, Any]:
    # The collector's producer settings, so the baseline differs only by what the pipeline adds.
    cfg = _collector_config(bootstrap, linger_ms)
    conf: dict[str, Any] = dict(cfg.producer_settings())
    conf["client.id"] = "bench-raw"
    return conf


def run_raw(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes], linger_ms: float) -> float:
    """Events/s of raw produce → consume of ``values``."""
    from confluent_kafka import Consumer, Producer

    n = len(values)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-raw",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    consumer.subscribe([topic])
    consumer.consume(num_messages=1, timeout=5)  # join the group before the clock starts
    consumed = 0
    done = threading.Event()
    end = [0.0]

    def consume() -> None:
        nonlocal consumed
        while consumed < n:
            for m in consumer.consume(num_messages=10_000, timeout=0.5):
                if m.error() is None:
                    consumed += 1
        end[0] = time.perf_counter()
        done.set()

    producer = Producer(_producer_conf(bootstrap, linger_ms))
    progress = _Progress("raw produce→consume", n)
    reader = threading.Thread(target=consume, daemon=True)
    t0 = time.perf_counter()
    reader.start()
    produce = producer.produce
    for i in range(n):
        while True:
            try:
                produce(topic, values[i], keys[i])
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
            progress.update(consumed)
    producer.flush(60)
    while not done.wait(1.0):
        progress.update(consumed)
    progress.update(consumed, force=True)
    consumer.close()
    return n / (end[0] - t0)


class _Proc:
    def __init__(self, module: str, cfg_json: str, workdir: Path, env: dict[str, str]) -> None:
        name = module.rsplit(".", 1)[-1]
        cfg = workdir / f"{name}.json"
        cfg.write_text(cfg_json)
        self.port = free_port()
        self.log = workdir / f"{name}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module],
                env={**os.environ, **env, "GYRE_CONFIG": str(cfg), "GYRE_PORT_HTTP": str(self.port)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.log.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.log.name} not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _post_all(url: str, bodies: list[bytes], concurrency: int, total: int) -> int:
    import aiohttp

    accepted = 0
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    progress = _Progress("collector POSTs", total)

    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal accepted
            while not queue.empty():
                body = queue.get_nowait()
                while True:
                    async with session.post(
                        url + "/v1/events?results=errors",
                        data=body,
                        headers={"Content-Type": "application/json"},
                    ) as r:
                        reply = await r.json(loads=orjson.loads)
                        if r.status in (429, 503):
                            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                            continue
                        if r.status != 200 or reply["failed"] or reply["rejected"]:
                            raise RuntimeError(f"collector answered {r.status}: {str(reply)[:300]}")
                        accepted += reply["accepted"]
                        progress.update(accepted)
                        break

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    progress.update(accepted, force=True)
    return accepted


async def _open_loop(
    url: str, offered: int, seconds: float, batch: int, start_id: int, warmup_s: float = 1.0
) -> list[float]:
    """Latencies (s) of requests sent on a fixed schedule of ``offered`` events/s.

    Requests of the first ``warmup_s`` seconds are sent but not measured (connections opened).
    """
    import aiohttp

    interval = batch / offered
    skip = int(warmup_s * offered / batch)
    count = max(int(seconds * offered / batch), 1) + skip
    bodies = [orjson.dumps([_event(start_id + k * batch + j) for j in range(batch)]) for k in range(count)]
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(k: int, scheduled: float) -> None:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with session.post(url + "/v1/events?results=errors", data=bodies[k]) as r:
                reply = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"collector answered {r.status}: {reply[:300]!r}")
            if k >= skip:
                latencies.append(time.perf_counter() - scheduled)

        t0 = time.perf_counter() + 0.2
        await asyncio.gather(*(one(k, t0 + k * interval) for k in range(count)))
    return latencies


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(int(q * len(s)), len(s) - 1)]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _committed(sink: _Proc) -> int:
    parts = sink.get("/status")["partitions"]
    return sum(p["committed_offset"] or 0 for p in parts.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gyre bench stream", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=1000, help="events per POST in the throughput run")
    p.add_argument("--concurrency", type=int, default=8, help="POSTs in flight")
    p.add_argument("--linger-ms", type=float, default=CollectorConfig.linger_ms,
                   help="producer linger, for the collector and the raw baseline alike")  # fmt: skip
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--offered-per-s", type=int, default=5000)
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--latency-batch", type=int, default=50, help="events per POST, latency run")
    p.add_argument("--workdir", type=Path, default=None, help="kept when given")
    args = p.parse_args(argv)

    load_start = os.getloadavg()[0]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gyre-bench-stream-"))
    workdir.mkdir(parents=True, exist_ok=True)
    n = args.events
    _log(f"generating {n} events")
    events = [_event(i) for i in range(n)]
    values = [orjson.dumps(e) for e in events]
    keys = [e["user_id"].encode() for e in events]
    bodies = [orjson.dumps(events[i : i + args.batch]) for i in range(0, n, args.batch)]
    del events

    broker = LocalKafka(workdir / "kafka", heap="1g")
    procs: list[_Proc] = []
    try:
        _log("starting the Kafka broker")
        broker.start()
        for name in ("bench-raw", "bench-stream"):
            state = ensure_topic(broker.bootstrap, TopicSpec(name, partitions=args.partitions))
            if not state.converged:
                raise RuntimeError(f"topic {name}: {state.problems}")

        raw = run_raw(broker.bootstrap, "bench-raw", values, keys, args.linger_ms)
        del values, keys
        _log(f"raw: {raw:,.0f} events/s")

        env = {"GYRE_KAFKA_BOOTSTRAP": broker.bootstrap}
        collector_cfg = _collector_config(broker.bootstrap, args.linger_ms)
        sink_cfg = LakeSinkConfig(
            topic="bench-stream",
            schema=SCHEMA,
            lake_uri=f"file://{workdir / 'lake'}",
            host="127.0.0.1",
            flush_records=200_000,
            flush_interval_s=1.0,
        )
        collector = _Proc("gyre.pipelines.collector", collector_cfg.to_json(), workdir, env)
        procs.append(collector)
        sink = _Proc("gyre.pipelines.lakesink", sink_cfg.to_json(), workdir, env)
        procs.append(sink)
        collector.wait_ready()
        sink.wait_ready()

        pids = {"collector": collector.proc.pid, "sink": sink.proc.pid, "broker": broker.pid}
        cpu0 = {k: _cpu_s(v) for k, v in pids.items()}
        t0 = time.perf_counter()
        started = time.monotonic()
        accepted = asyncio.run(_post_all(collector.url, bodies, args.concurrency, n))
        posted_s = time.perf_counter() - t0
        progress = _Progress("lake commits", n, started)
        while (committed := _committed(sink)) < accepted:
            progress.update(committed)
            time.sleep(0.05)
        pipeline_s = time.perf_counter() - t0
        cpu = {f"{k}_cpu_us_per_event": round((_cpu_s(v) - cpu0[k]) / n * 1e6, 2)
               for k, v in pids.items()}  # fmt: skip
        progress.update(committed, force=True)
        pipeline = accepted / pipeline_s
        _log(f"pipeline: {pipeline:,.0f} events/s (collector alone {accepted / posted_s:,.0f}/s)")

        _log(f"latency: {args.offered_per_s} events/s for {args.latency_seconds}s")
        lat = asyncio.run(
            _open_loop(collector.url, args.offered_per_s, args.latency_seconds, args.latency_batch, n)
        )
        result = {
            "events": n,
            "events_per_s": round(pipeline),
            "raw_events_per_s": round(raw),
            "ratio": round(pipeline / raw, 3),
            "collector_events_per_s": round(accepted / posted_s),
            "offered_per_s": args.offered_per_s,
            "latency_batch": args.latency_batch,
            "latency_requests": len(lat),
            "p50_ms": round(_percentile(lat, 0.50) * 1000, 2),
            "p90_ms": round(_percentile(lat, 0.90) * 1000, 2),
            "p99_ms": round(_percentile(lat, 0.99) * 1000, 2),
            "batch": args.batch,
            "concurrency": args.concurrency,
            "linger_ms": args.linger_ms,
            "partitions": args.partitions,
            "kafka_version": KAFKA_VERSION,
            "cpus": os.cpu_count(),
            # Other work on the machine skews every figure; the 1-minute load says how much.
            "loadavg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            **cpu,
        }
        print(json.dumps(result))
        return 0
    finally:
        for proc in procs:
            proc.stop()
        broker.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
