"""Stream data-plane benchmark: collector → Kafka → Parquet lake against raw Kafka, one run.

On one real KRaft broker started for the run, each phase after an untimed warm-up of
``--warmup-events`` through the same path (JIT-compiled broker, open connections, loaded
code), so neither side is timed cold:

1. ``raw_events_per_s``: a plain confluent-kafka producer with the collector's producer
   settings (``acks=all``, idempotent, the same linger and compression) sends the serialized
   events while a consumer with the lake sink's consumer settings reads them back; the clock
   stops at the last record consumed.
2. ``events_per_s``: the same events, batched into ``POST /v1/events`` requests, go through
   the collector workload (validation, keying, delivery reports) into a topic that the lake
   sink workload turns into committed Parquet files; the clock stops when the lake's commit
   log covers every event.
3. ``p50_ms`` / ``p99_ms``: collector request latency under an open-loop load of
   ``offered_per_s`` events/s in requests of ``latency_batch`` events, measured from each
   request's scheduled send time (so a stalled server is not hidden by a stalled client),
   after ``--latency-warmup-s`` seconds of unmeasured requests. ``latency_requests`` says how
   many requests were measured and ``send_lag_p99_ms`` how late the client itself was.

``ratio`` = ``events_per_s`` / ``raw_events_per_s``. ``*_cpu_us_per_event``: CPU time each
process spent per event in the timed phase (``client``: this process, the load generator).
Every process shares the machine's cores, so these say where the time goes. Progress goes to
stderr; stdout gets one JSON object. Usage: ``gyre bench stream [--events N] ...``
(``--help``).
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
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson
from confluent_kafka import KafkaException

from gyre.controllers.topics import admin_client, ensure_topic
from gyre.controlplane.procs import free_port
from gyre.core.topics import TopicSpec
from gyre.pipelines._common.schema import StreamSchema
from gyre.pipelines.collector.config import CollectorConfig
from gyre.pipelines.kafka.config import BrokerConfig, cluster_id_for
from gyre.pipelines.kafka.fetch import KAFKA_VERSION, ensure_kafka_libs
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
_T = TypeVar("_T")


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


def _sink_config(bootstrap: str, lake_uri: str) -> LakeSinkConfig:
    return LakeSinkConfig(
        topic="bench-stream", schema=SCHEMA, bootstrap_servers=bootstrap, lake_uri=lake_uri,
        host="127.0.0.1", flush_records=200_000, flush_interval_s=1.0,
    )  # fmt: skip


def _consumer_conf(bootstrap: str, group: str) -> dict[str, Any]:
    # The lake sink's consumer settings (fetch sizes and waits, isolation level), for the
    # same reason.
    conf: dict[str, Any] = dict(_sink_config(bootstrap, "file:///unused").consumer_settings())
    conf.update({"group.id": group, "client.id": group, "auto.offset.reset": "earliest"})
    return conf


def run_raw(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes], linger_ms: float) -> float:
    """Events/s of raw produce → consume of ``values``."""
    from confluent_kafka import Consumer, Producer

    n = len(values)
    consumer = Consumer(_consumer_conf(bootstrap, f"bench-raw-{topic}"))
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
    progress = _Progress(f"raw produce→consume ({topic})", n)
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


def _start_broker(workdir: Path) -> tuple[_Proc, str]:
    """One KRaft node (and its bootstrap address), started as the local runtime starts it:
    the workload entrypoint ``python -m gyre.pipelines.kafka`` with a config file and the
    runtime's port and replica variables. Returns once the broker answers metadata requests."""
    ensure_kafka_libs(KAFKA_VERSION)  # a first run downloads the jars: not within the deadline
    kafka_port, controller_port = free_port(), free_port()
    config = BrokerConfig(cluster_id=cluster_id_for(str(workdir)), data_dir=str(workdir / "kafka"), heap="1g")
    env = {
        "GYRE_PORT_KAFKA": str(kafka_port),
        "GYRE_PORT_CONTROLLER": str(controller_port),
        "GYRE_REPLICA_INDEX": "0",
        "GYRE_REPLICAS": "1",
    }
    broker = _Proc("gyre.pipelines.kafka", config.to_json(), workdir, env)
    bootstrap = f"127.0.0.1:{kafka_port}"
    admin = admin_client(bootstrap)
    deadline = time.monotonic() + 120
    while True:
        if broker.proc.poll() is not None:
            raise RuntimeError(f"the broker exited:\n{broker.log.read_text()[-3000:]}")
        try:
            if admin.list_topics(timeout=2).brokers:
                return broker, bootstrap
        except KafkaException:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"the broker did not answer within 120 s:\n{broker.log.read_text()[-3000:]}")
        time.sleep(0.2)


def _run_async(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on uvloop when installed: a cheaper client leaves more CPU to the
    system under test, which shares the machine."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _post_all(url: str, bodies: list[bytes], concurrency: int, total: int, what: str) -> int:
    import aiohttp

    accepted = 0
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    progress = _Progress(what, total)
    headers = {"Content-Type": "application/json"}

    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal accepted
            while not queue.empty():
                body = queue.get_nowait()
                while True:
                    async with session.post(
                        url + "/v1/events?results=errors", data=body, headers=headers
                    ) as r:
                        reply = orjson.loads(await r.read())
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
    url: str, offered: int, seconds: float, batch: int, start_id: int, warmup_s: float
) -> tuple[list[float], list[float]]:
    """(latencies, send lags) in seconds of requests sent on a fixed schedule of ``offered``
    events/s, both from each request's scheduled send time.

    Requests of the first ``warmup_s`` seconds are sent but not measured. A request's latency
    ends when its whole response is read; its send lag is how late the client started it
    (a large lag means the load generator, not the collector, fell behind).
    """
    import aiohttp

    interval = batch / offered
    skip = int(warmup_s * offered / batch)
    count = max(int(seconds * offered / batch), 1) + skip
    bodies = [orjson.dumps([_event(start_id + k * batch + j) for j in range(batch)]) for k in range(count)]
    latencies: list[float] = []
    lags: list[float] = []
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(k: int, scheduled: float) -> None:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = time.perf_counter() - scheduled
            async with session.post(url + "/v1/events?results=errors", data=bodies[k], headers=headers) as r:
                reply = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"collector answered {r.status}: {reply[:300]!r}")
            if k >= skip:
                latencies.append(time.perf_counter() - scheduled)
                lags.append(lag)

        t0 = time.perf_counter() + 0.2
        await asyncio.gather(*(one(k, t0 + k * interval) for k in range(count)))
    return latencies, lags


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


def _wait_committed(sink: _Proc, base: int, target: int, progress: _Progress) -> int:
    """Wait until the lake's commit log covers ``base + target`` events; events past ``base``."""
    while (committed := _committed(sink) - base) < target:
        progress.update(committed)
        time.sleep(0.05)
    progress.update(committed, force=True)
    return committed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gyre bench stream", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--warmup-events", type=int, default=100_000,
                   help="untimed events through each path before its timed phase")  # fmt: skip
    p.add_argument("--batch", type=int, default=1000, help="events per POST in the throughput run")
    p.add_argument("--concurrency", type=int, default=8, help="POSTs in flight")
    p.add_argument("--linger-ms", type=float, default=CollectorConfig.linger_ms,
                   help="producer linger, for the collector and the raw baseline alike")  # fmt: skip
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--offered-per-s", type=int, default=5000)
    # 30 s at 100 requests/s: 3,000 requests, so p99 rests on 30 of them rather than 10.
    p.add_argument("--latency-seconds", type=float, default=30.0)
    p.add_argument("--latency-warmup-s", type=float, default=2.0)
    p.add_argument("--latency-batch", type=int, default=50, help="events per POST, latency run")
    p.add_argument("--workdir", type=Path, default=None, help="kept when given")
    args = p.parse_args(argv)

    load_start = os.getloadavg()[0]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gyre-bench-stream-"))
    workdir.mkdir(parents=True, exist_ok=True)
    n, w = args.events, args.warmup_events
    _log(f"generating {n} events (+{w} for warm-up)")
    # Warm-up events have ids past the timed ones, so no event is sent twice.
    events = [_event(i) for i in range(n + w)]
    values = [orjson.dumps(e) for e in events]
    keys = [e["user_id"].encode() for e in events]
    bodies = [orjson.dumps(events[i : min(i + args.batch, n)]) for i in range(0, n, args.batch)]
    warm_bodies = [orjson.dumps(events[i : i + args.batch]) for i in range(n, n + w, args.batch)]
    del events

    procs: list[_Proc] = []
    try:
        _log("starting the Kafka broker")
        broker, bootstrap = _start_broker(workdir)
        procs.append(broker)
        for name in ("bench-raw-warmup", "bench-raw", "bench-stream"):
            state = ensure_topic(bootstrap, TopicSpec(name, partitions=args.partitions))
            if not state.converged:
                raise RuntimeError(f"topic {name}: {state.problems}")

        if w:
            run_raw(bootstrap, "bench-raw-warmup", values[n:], keys[n:], args.linger_ms)
        raw_cpu0 = (_cpu_s(broker.proc.pid), time.process_time())
        raw = run_raw(bootstrap, "bench-raw", values[:n], keys[:n], args.linger_ms)
        raw_cpu = {
            "raw_broker_cpu_us_per_event": round((_cpu_s(broker.proc.pid) - raw_cpu0[0]) / n * 1e6, 2),
            "raw_client_cpu_us_per_event": round((time.process_time() - raw_cpu0[1]) / n * 1e6, 2),
        }
        del values, keys
        _log(f"raw: {raw:,.0f} events/s")

        env = {"GYRE_KAFKA_BOOTSTRAP": bootstrap}
        collector_cfg = _collector_config(bootstrap, args.linger_ms)
        sink_cfg = _sink_config(bootstrap, f"file://{workdir / 'lake'}")
        collector = _Proc("gyre.pipelines.collector", collector_cfg.to_json(), workdir, env)
        procs.append(collector)
        sink = _Proc("gyre.pipelines.lakesink", sink_cfg.to_json(), workdir, env)
        procs.append(sink)
        collector.wait_ready()
        sink.wait_ready()

        warm = 0
        if warm_bodies:
            warm = _run_async(_post_all(collector.url, warm_bodies, args.concurrency, w, "warm-up POSTs"))
            _wait_committed(sink, 0, warm, _Progress("warm-up lake commits", warm))

        pids = {"collector": collector.proc.pid, "sink": sink.proc.pid, "broker": broker.proc.pid}
        cpu0 = {k: _cpu_s(v) for k, v in pids.items()}
        client_cpu0 = time.process_time()
        t0 = time.perf_counter()
        started = time.monotonic()
        accepted = _run_async(_post_all(collector.url, bodies, args.concurrency, n, "collector POSTs"))
        posted_s = time.perf_counter() - t0
        _wait_committed(sink, warm, accepted, _Progress("lake commits", n, started))
        pipeline_s = time.perf_counter() - t0
        cpu = {f"{k}_cpu_us_per_event": round((_cpu_s(v) - cpu0[k]) / n * 1e6, 2)
               for k, v in pids.items()}  # fmt: skip
        cpu["client_cpu_us_per_event"] = round((time.process_time() - client_cpu0) / n * 1e6, 2)
        pipeline = accepted / pipeline_s
        _log(f"pipeline: {pipeline:,.0f} events/s (collector alone {accepted / posted_s:,.0f}/s)")

        _log(f"latency: {args.offered_per_s} events/s for {args.latency_seconds}s "
             f"after {args.latency_warmup_s}s of warm-up")  # fmt: skip
        lat, lags = _run_async(
            _open_loop(collector.url, args.offered_per_s, args.latency_seconds,
                       args.latency_batch, n + w, args.latency_warmup_s)
        )  # fmt: skip
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
            "max_ms": round(max(lat) * 1000, 2),
            "send_lag_p99_ms": round(_percentile(lags, 0.99) * 1000, 2),
            "warmup_events": w,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "linger_ms": args.linger_ms,
            "partitions": args.partitions,
            "kafka_version": KAFKA_VERSION,
            "cpus": os.cpu_count(),
            # Other work on the machine skews every figure; the 1-minute load says how much.
            "loadavg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            **cpu,
            **raw_cpu,
        }
        print(json.dumps(result))
        return 0
    finally:
        for proc in reversed(procs):  # the broker last
            proc.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
