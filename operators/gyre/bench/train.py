"""``gyre bench train``: Horovod against torch DDP at equal world size, measured in one run.

Prints one JSON object:

* ``samples_per_s``: ``plain1`` (plain torch, one process), ``hvd2`` and ``ddp2`` (the
  trainer's Horovod and DDP backends on 2 ranks: global samples per second). Every set-up
  trains the same MLP with plain SGD on the same data, batch per rank and number of steps;
* ``cpu_ms_per_step``: CPU time of one rank's process (all its threads) per step, the
  least load-sensitive figure on a shared machine: Horovod's extra is its background
  thread's cycles and a waiter that spins (``synchronize`` yields in a loop);
* ``hvd2_over_ddp2``: Horovod's throughput over DDP's on 2 ranks (goal >= 0.95);
* ``scaling_efficiency``: ``hvd2 / (2 x plain1)`` (``ddp_scaling_efficiency`` likewise);
* ``allreduce``: ``[{bytes, busbw_gbps, memcpy_gbps, gloo_busbw_gbps, seconds, gloo_seconds}]``
  from 1 KiB up to ``--allreduce-max-bytes`` on 2 ranks: Horovod's busbw (algbw x 2(n-1)/n,
  the bytes each link carries in a ring allreduce), a memory copy of the same size in the
  same process (``dst.copy_(src)``, bytes / seconds) and torch.distributed's gloo allreduce;
* ``latency_us_1kb`` / ``gloo_latency_us_1kb``: one 1 KiB allreduce, Horovod and gloo;
  ``latency_1kb``: how that latency depends on how it is measured and on Horovod's cycle
  time (``first_call_us``: a name never seen before; ``unique_names_us``: a new name per
  call, so Horovod's response cache never hits; ``by_cycle_time_ms``: the cached call with
  ``HOROVOD_CYCLE_TIME`` set to each value);
* ``goals``: ``{name: {value, goal, met}}``; reported, never asserted;
* ``cuda``: with 2+ GPUs, a ResNet-50-sized model on NCCL, Horovod over DDP; else skipped.

How it measures: every set-up runs in fresh processes (ranks talk through the trainer's
in-process `Launcher`: Horovod's rendezvous server and torch's TCPStore); each process warms
up, waits at a barrier, then runs the same fixed number of steps, so ranks always agree on
the step count (each asserts it) and every set-up does equal work. Rounds rotate the order
of the set-ups and each set-up's best round counts, so a burst of load from elsewhere on the
machine does not land on one set-up only. Every process uses ``--threads`` intra-op threads.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER_FLAG = "--_worker"
HOST = "127.0.0.1"
GOAL_HVD2_OVER_DDP2 = 0.95
# HOROVOD_CYCLE_TIME values (ms) the 1 KiB latency is measured with, besides the default
CYCLE_TIMES_MS = ("0.1", "1", "5")


def _log(msg: str) -> None:
    print(f"[bench train] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- worker side


def _join(args: argparse.Namespace, backend_name: str) -> Any:
    """This worker's trainer backend, joined to its group (None for plain torch)."""
    if backend_name == "plain":
        return None
    from gyre.pipelines.trainer.backends import get_backend
    from gyre.pipelines.trainer.topology import build_slots

    backend = get_backend(backend_name)
    slot = build_slots(args.size, 0)[args.rank]
    backend.init(slot, HOST, args.launcher_port, args.store_port or None, "lo")
    return backend


def _mlp(args: argparse.Namespace, device: Any) -> tuple[Any, Callable[[Any, int], Any], int]:
    import torch

    from gyre.pipelines.trainer.models import TabularMLP

    torch.manual_seed(0)
    model = TabularMLP(args.features, tuple(args.hidden), 0.0).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch * 8, args.features, generator=g).to(device)
    y = (torch.rand(args.batch * 8, generator=g) > 0.5).float().to(device)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits

    def loss(m: Any, i: int) -> Any:
        b = i % 8
        xb, yb = x[b * args.batch : (b + 1) * args.batch], y[b * args.batch : (b + 1) * args.batch]
        return loss_fn(m(xb).reshape(-1), yb)

    return model, loss, args.batch


def _resnet(args: argparse.Namespace, device: Any) -> tuple[Any, Callable[[Any, int], Any], int]:
    import torch

    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = _resnet50().to(device)
    x = torch.randn(args.cuda_batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (args.cuda_batch,), device=device)

    def loss(m: Any, i: int) -> Any:
        return torch.nn.functional.cross_entropy(m(x), y)

    return model, loss, args.cuda_batch


def _resnet50() -> Any:
    """ResNet-50's shape (bottleneck blocks 3-4-6-3, ~25.6M parameters), untrained."""
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(True),
                nn.Conv2d(width, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.skip: nn.Module = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: Any) -> Any:
            return nn.functional.relu(self.body(x) + self.skip(x))

    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(True),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            layers.append(Bottleneck(cin, width, stride if b == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


def _train_worker(args: argparse.Namespace, backend: Any) -> dict[str, Any]:
    """Warm up, then time ``--steps`` steps (or, with ``--steps 0``, as many as fit ``--seconds``)."""
    import torch
    from torch.optim.sgd import SGD

    device = backend.device if backend is not None else _plain_device()
    build = _resnet if args.model == "resnet50" else _mlp
    model, loss_of, batch = build(args, device)
    # plain SGD everywhere: no optimizer state, so every set-up does the same arithmetic
    opt: Any = SGD(model.parameters(), lr=0.01)
    if backend is not None:
        model, opt = backend.wrap(model, opt)
        backend.broadcast_state(model, opt)
    i = 0

    def step() -> None:
        nonlocal i
        opt.zero_grad()
        loss_of(model, i).backward()
        if backend is not None:
            backend.step(opt)
        else:
            opt.step()
        i += 1

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    if backend is not None:
        backend.barrier()
    start, cpu_start = time.perf_counter(), time.process_time()
    steps = 0
    if args.steps > 0:
        for _ in range(args.steps):
            step()
        steps = args.steps
    else:  # calibration, one process only: ranks could not agree on a clock-driven count
        assert backend is None, "a time-driven step count is for the single-process calibration"
        while time.perf_counter() - start < args.seconds:
            step()
            steps += 1
    sync()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # CPU seconds of the whole process (all its threads): on a shared machine the least
    # noisy sign of work beside the step itself, such as a waiter that spins
    result: dict[str, Any] = {"steps": steps, "seconds": elapsed, "samples": steps * batch, "cpu_s": cpu}
    if backend is not None:
        counts = backend.allgather_object(steps)
        assert len(set(counts)) == 1, f"ranks disagree on the number of steps: {counts}"
        result["rank_steps"] = counts
    return result


def _plain_device() -> Any:
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def _sizes(max_bytes: int) -> list[int]:
    sizes, n = [], 1024
    while n < max_bytes:
        sizes.append(n)
        n *= 4
    return [*sizes, max_bytes]


def _iters(nbytes: int, scale: float) -> int:
    return max(5, min(200, int(scale * (64 << 20) // nbytes)))


def _time_per_call(fn: Callable[[], Any], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


class _Collectives:
    """The allreduce, barrier and object gather of one library (Horovod or torch's gloo)."""

    def __init__(self, backend: Any) -> None:
        self.hvd = backend.hvd if backend is not None else None
        self.backend = backend

    def allreduce(self, t: Any, name: str) -> None:
        if self.hvd is not None:
            # in place, like DistributedOptimizer's gradients; Sum: no extra division pass
            self.hvd.allreduce_(t, op=self.hvd.Sum, name=name)
        else:
            import torch.distributed as dist

            dist.all_reduce(t)

    def barrier(self) -> None:
        if self.hvd is not None:
            self.hvd.barrier()
        else:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        if self.backend is not None:
            gathered: list[Any] = self.backend.allgather_object(obj)
            return gathered
        import torch.distributed as dist

        box: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(box, obj)
        return box


def _measure_size(ops: _Collectives, nbytes: int, iters: int) -> dict[str, Any]:
    import torch

    t = torch.zeros(nbytes // 4, dtype=torch.float32)  # zeros: a repeated sum never overflows
    row: dict[str, Any] = {"bytes": nbytes, "iters": iters}
    if ops.hvd is not None and nbytes == 1024:
        ops.barrier()  # both ranks ready: the first call's time is its negotiation, not skew
        start = time.perf_counter()
        ops.allreduce(t, f"first.{nbytes}")
        row["first_call_s"] = time.perf_counter() - start
        ops.barrier()
        names = (f"unique.{nbytes}.{i}" for i in range(iters))
        row["unique_names_s"] = _time_per_call(lambda: ops.allreduce(t, next(names)), iters)
    if ops.hvd is not None:
        dst = torch.empty_like(t)
        for _ in range(3):
            dst.copy_(t)
        row["memcpy_s"] = _time_per_call(lambda: dst.copy_(t), max(iters, 20))
    name = f"sweep.{nbytes}"
    for _ in range(3):
        ops.allreduce(t, name)
    ops.barrier()
    row["seconds"] = _time_per_call(lambda: ops.allreduce(t, name), iters)
    return row


def _allreduce_worker(args: argparse.Namespace, backend: Any) -> dict[str, Any]:
    """Per size: seconds per allreduce (Horovod or gloo) and, with Horovod, per memory copy.

    Each timed loop reuses one tensor name, as a training loop does for its gradients, so
    Horovod answers from its response cache after the first call instead of negotiating
    every call through the coordinator; with Horovod, the first call and a new name per call
    are timed apart to show what that negotiation costs.
    """
    ops = _Collectives(backend)
    sizes = [1024] if args.latency_only else _sizes(args.allreduce_max_bytes)
    rows = [_measure_size(ops, n, _iters(n, args.sweep_scale)) for n in sizes]
    # the slowest rank bounds a collective
    everyone = ops.gather(rows)
    for i, row in enumerate(rows):
        for key in ("seconds", "first_call_s", "unique_names_s"):
            if key in row:
                row[key] = max(r[i][key] for r in everyone)
    return {"sizes": rows}


def _worker(args: argparse.Namespace) -> int:
    import faulthandler

    import torch

    # a rank stuck in a collective prints where (every thread) and exits before the driver
    # gives up on it
    faulthandler.dump_traceback_later(0.9 * args.timeout, exit=True)

    torch.set_num_threads(args.threads)
    backend = None
    if args.mode == "allreduce" and args.backend == "gloo":
        import datetime

        import torch.distributed as dist

        from gyre.pipelines.trainer.topology import build_slots, build_torch_env

        slot = build_slots(args.size, 0)[args.rank]
        os.environ.update(build_torch_env(slot, HOST, args.store_port, "lo"))
        dist.init_process_group(
            "gloo", rank=args.rank, world_size=args.size, timeout=datetime.timedelta(minutes=5)
        )
        result = _allreduce_worker(args, None)
        dist.barrier()
    else:
        backend = _join(args, args.backend)
        result = (_allreduce_worker if args.mode == "allreduce" else _train_worker)(args, backend)
        if backend is not None:
            backend.barrier()
    result["rank"] = args.rank
    Path(args.out).write_text(json.dumps(result))
    if backend is not None and args.backend == "horovod":
        backend.shutdown()
    elif args.backend in ("ddp", "gloo"):
        # Leave without tearing the gloo process group down: in torch 2.4 its destructor
        # joins gloo's worker threads while holding the GIL, and a worker that frees the
        # last reference to a Python-created tensor waits for the GIL: the rank hangs at
        # exit now and then. The barrier above already
        # ended every collective on both ranks, and the result is written.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


# ----------------------------------------------------------------------------- driver side


@dataclass(frozen=True)
class Setup:
    """One measured configuration: processes of ``backend`` on ``size`` ranks."""

    key: str
    mode: str  # "train" or "allreduce"
    backend: str  # "plain", "horovod", "ddp" or (allreduce only) "gloo"
    size: int
    model: str = "mlp"
    env: dict[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()


def _run(args: argparse.Namespace, setup: Setup, tmp: Path, steps: int) -> list[dict[str, Any]]:
    """Start ``setup.size`` worker processes; their JSON results, rank order."""
    launcher = None
    launcher_port = store_port = 0
    if setup.backend != "plain":
        from gyre.pipelines.trainer.launcher import Launcher

        needs_store = setup.backend in ("ddp", "gloo")
        launcher = Launcher(setup.size, host=HOST, store_port=0 if needs_store else None).start()
        launcher_port = launcher.port
        store_port = launcher.gang.store_port or 0
    procs, outs = [], []
    try:
        for rank in range(setup.size):
            out = tmp / f"{setup.key}-{rank}.json"
            out.unlink(missing_ok=True)
            outs.append(out)
            cmd = [
                sys.executable, "-m", "gyre.bench.train", WORKER_FLAG,
                "--mode", setup.mode, "--backend", setup.backend, "--model", setup.model,
                "--rank", str(rank), "--size", str(setup.size),
                "--launcher-port", str(launcher_port), "--store-port", str(store_port),
                "--steps", str(steps), "--out", str(out), *setup.extra, *_forward(args),
            ]  # fmt: skip
            env = {**os.environ, **setup.env, "OMP_NUM_THREADS": str(args.threads)}
            procs.append(subprocess.Popen(cmd, env=env))
        deadline = time.monotonic() + args.timeout
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if launcher is not None:
            launcher.stop()
    if any(codes):
        raise RuntimeError(f"{setup.key}: worker exit codes {codes}")
    return [json.loads(o.read_text()) for o in outs]


def _forward(args: argparse.Namespace) -> list[str]:
    return [
        "--features", str(args.features), "--hidden", *map(str, args.hidden),
        "--batch", str(args.batch), "--seconds", str(args.seconds), "--warmup", str(args.warmup),
        "--threads", str(args.threads), "--allreduce-max-bytes", str(args.allreduce_max_bytes),
        "--sweep-scale", str(args.sweep_scale), "--cuda-batch", str(args.cuda_batch),
    ]  # fmt: skip


def _throughput(results: list[dict[str, Any]]) -> float:
    samples = sum(r["samples"] for r in results)
    seconds = max(r["seconds"] for r in results)
    return float(samples / seconds)


def _agreed_steps(setup: Setup, results: list[dict[str, Any]], steps: int) -> int:
    """The step count every rank ran; it must be the one asked for."""
    counts = [r["steps"] for r in results]
    assert counts == [steps] * setup.size, f"{setup.key}: ranks ran {counts} steps, not {steps}"
    return steps


def _rotations(setups: Sequence[Setup], rounds: int) -> list[list[Setup]]:
    """Round r starts at set-up r: each one is first, middle and last in turn."""
    n = len(setups)
    return [[setups[(r + i) % n] for i in range(n)] for r in range(rounds)]


def _compare_training(
    args: argparse.Namespace, tmp: Path, setups: Sequence[Setup], steps: int
) -> tuple[dict[str, float], list[dict[str, float]], dict[str, float]]:
    """Best samples/s per set-up, every round's figures, and CPU ms per step and rank."""
    best = {s.key: 0.0 for s in setups}
    cpu_ms: dict[str, float] = {}
    rounds: list[dict[str, float]] = []
    for r, order in enumerate(_rotations(setups, args.rounds)):
        seen: dict[str, float] = {}
        for setup in order:
            results = _run(args, setup, tmp, steps)
            _agreed_steps(setup, results, steps)
            rate = _throughput(results)
            _log(f"round {r + 1}/{args.rounds}: {setup.key} {rate:.0f} samples/s")
            seen[setup.key] = round(rate, 1)
            if rate > best[setup.key]:
                best[setup.key] = rate
                cpu = statistics.mean(r["cpu_s"] for r in results)
                cpu_ms[setup.key] = round(1e3 * cpu / steps, 3)
        rounds.append(seen)
    return best, rounds, cpu_ms


def _sweep(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Horovod and gloo allreduce sweeps, alternated; each size's fastest round counts."""
    hvd = Setup("allreduce-hvd", "allreduce", "horovod", 2)
    gloo = Setup("allreduce-gloo", "allreduce", "gloo", 2)
    best: dict[str, dict[int, dict[str, Any]]] = {"hvd": {}, "gloo": {}}
    for r in range(max(1, args.sweep_rounds)):
        for key, setup in (("hvd", hvd), ("gloo", gloo)) if r % 2 == 0 else (("gloo", gloo), ("hvd", hvd)):
            _log(f"allreduce sweep round {r + 1}/{args.sweep_rounds}: {setup.backend}")
            rows = _run(args, setup, tmp, 0)[0]["sizes"]
            for row in rows:
                old = best[key].get(row["bytes"])
                if old is None or row["seconds"] < old["seconds"]:
                    best[key][row["bytes"]] = row
    table = []
    for nbytes, row in sorted(best["hvd"].items()):
        g = best["gloo"][nbytes]
        # busbw = algbw x 2(n-1)/n; n = 2 here
        table.append(
            {
                "bytes": nbytes,
                "busbw_gbps": round(nbytes / row["seconds"] / 1e9, 4),
                "memcpy_gbps": round(nbytes / row["memcpy_s"] / 1e9, 4),
                "gloo_busbw_gbps": round(nbytes / g["seconds"] / 1e9, 4),
                "seconds": row["seconds"],
                "gloo_seconds": g["seconds"],
            }
        )
    small = best["hvd"][1024]
    latency = {
        "latency_us_1kb": round(small["seconds"] * 1e6, 1),
        "gloo_latency_us_1kb": round(best["gloo"][1024]["seconds"] * 1e6, 1),
        "first_call_us": round(small["first_call_s"] * 1e6, 1),
        "unique_names_us": round(small["unique_names_s"] * 1e6, 1),
    }
    return table, latency


def _latency_by_cycle_time(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """The cached 1 KiB Horovod allreduce with ``HOROVOD_CYCLE_TIME`` set to each value."""
    out: dict[str, float] = {}
    for ms in CYCLE_TIMES_MS:
        setup = Setup(
            f"cycle-{ms}",
            "allreduce",
            "horovod",
            2,
            env={"HOROVOD_CYCLE_TIME": ms},
            extra=("--latency-only",),
        )
        row = _run(args, setup, tmp, 0)[0]["sizes"][0]
        out[ms] = round(row["seconds"] * 1e6, 1)
        _log(f"1 KiB allreduce with HOROVOD_CYCLE_TIME={ms}: {out[ms]} us")
    return out


def _goal(value: float, goal: float) -> dict[str, Any]:
    return {"value": value, "goal": goal, "compare": ">=", "met": value >= goal}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gyre bench train", description=__doc__.split("\n")[0])
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    p.add_argument("--batch", type=int, default=256, help="per-rank batch size")
    p.add_argument("--seconds", type=float, default=4.0, help="about how long one timed run lasts")
    p.add_argument("--rounds", type=int, default=3, help="rotating rounds; best one counts")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per process")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--allreduce-max-bytes", type=int, default=64 << 20)
    p.add_argument("--sweep-rounds", type=int, default=2, help="alternating allreduce sweeps")
    p.add_argument("--sweep-scale", type=float, default=1.0, help="scales the calls per size")
    p.add_argument("--no-cycle-times", action="store_true", help="skip the cycle-time probe")
    p.add_argument("--cuda-batch", type=int, default=64)
    p.add_argument("--cuda-steps", type=int, default=100)
    p.add_argument("--timeout", type=float, default=300.0, help="per set-up, seconds")
    p.add_argument(WORKER_FLAG, dest="worker", action="store_true", help=argparse.SUPPRESS)
    for hidden, kw in (
        ("--mode", {"default": "train"}),
        ("--backend", {"default": "plain"}),
        ("--model", {"default": "mlp"}),
        ("--rank", {"type": int, "default": 0}),
        ("--size", {"type": int, "default": 1}),
        ("--launcher-port", {"type": int, "default": 0}),
        ("--store-port", {"type": int, "default": 0}),
        ("--steps", {"type": int, "default": 0}),
        ("--out", {"default": ""}),
    ):
        p.add_argument(hidden, help=argparse.SUPPRESS, **kw)
    p.add_argument("--latency-only", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.worker:
        return _worker(args)
    import torch

    from gyre import __version__

    report: dict[str, Any] = {
        "benchmark": "train",
        "gyre_version": __version__,
        "torch_version": torch.__version__,
        "model": {"kind": "mlp", "features": args.features, "hidden": args.hidden},
        "optimizer": "sgd",
        "batch_per_rank": args.batch,
        "threads_per_process": args.threads,
        "cpus": os.cpu_count(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory(prefix="gyre-bench-train-") as d:
        tmp = Path(d)
        plain = Setup("plain1", "train", "plain", 1)
        # equal work: every set-up runs the step count one plain process fits in --seconds
        calib = _run(args, plain, tmp, 0)[0]
        steps = max(5, int(calib["steps"]))
        _log(f"calibrated: {steps} steps per run ({calib['steps'] / calib['seconds']:.0f} steps/s plain)")
        setups = [plain, Setup("hvd2", "train", "horovod", 2), Setup("ddp2", "train", "ddp", 2)]
        best, rounds, cpu_ms = _compare_training(args, tmp, setups, steps)
        table, latency = _sweep(args, tmp)
        if not args.no_cycle_times:
            latency["by_cycle_time_ms"] = _latency_by_cycle_time(args, tmp)
        hvd2_over_ddp2 = round(best["hvd2"] / best["ddp2"], 4)
        report.update(
            steps_per_run=steps,
            ranks_agreed_on_steps=True,  # `_agreed_steps` asserted it for every run
            samples_per_s={k: round(v, 1) for k, v in best.items()},
            samples_per_s_by_round=rounds,
            cpu_ms_per_step=cpu_ms,
            samples_per_s_median={k: round(statistics.median(r[k] for r in rounds), 1) for k in best},
            hvd2_over_ddp2=hvd2_over_ddp2,
            scaling_efficiency=round(best["hvd2"] / (2 * best["plain1"]), 4),
            ddp_scaling_efficiency=round(best["ddp2"] / (2 * best["plain1"]), 4),
            allreduce=table,
            latency_us_1kb=latency.pop("latency_us_1kb"),
            gloo_latency_us_1kb=latency.pop("gloo_latency_us_1kb"),
            latency_1kb=latency,
            horovod_env={k: v for k, v in os.environ.items() if k.startswith("HOROVOD_")},
            goals={"hvd2_over_ddp2": _goal(hvd2_over_ddp2, GOAL_HVD2_OVER_DDP2)},
        )
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus >= 2:
            _log(f"CUDA: ResNet-50-sized model, Horovod vs DDP on NCCL, {gpus} GPUs")
            nccl = {"HOROVOD_GPU_OPERATIONS": "NCCL"}
            cuda_setups = [
                Setup("hvd-cuda", "train", "horovod", gpus, "resnet50", nccl),
                Setup("ddp-cuda", "train", "ddp", gpus, "resnet50"),
            ]
            cuda_best, _, _ = _compare_training(args, tmp, cuda_setups, args.cuda_steps)
            report["cuda"] = {
                "gpus": gpus,
                "batch_per_gpu": args.cuda_batch,
                "hvd_img_per_s": round(cuda_best["hvd-cuda"], 1),
                "ddp_img_per_s": round(cuda_best["ddp-cuda"], 1),
                "hvd_over_ddp": round(cuda_best["hvd-cuda"] / cuda_best["ddp-cuda"], 4),
            }
        else:
            why = "no CUDA device" if gpus == 0 else "one GPU: a single rank runs no allreduce"
            report["cuda"] = {"skipped": f"{why}; the NCCL ResNet-50 comparison needs 2+ GPUs"}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
