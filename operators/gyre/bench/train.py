"""``gyre bench train``: what Horovod costs and gains, measured side by side in one run.

Prints one JSON object:

* ``plain_samples_per_s``: the tabular MLP trained by plain torch in one process;
* ``hvd1_samples_per_s`` / ``hvd2_samples_per_s``: the same model and data with Horovod
  (gloo on CPU) on 1 and 2 ranks (2 ranks: global samples per second);
* ``hvd1_over_plain``: the single-rank overhead (goal >= 0.95);
* ``scaling_efficiency``: 2-rank throughput / (2 x 1-rank throughput);
* ``allreduce``: ``[{bytes, algbw_gbps, busbw_gbps, seconds}]`` for 1 KiB .. 64 MiB on 2 ranks,
  with busbw = algbw x 2(n-1)/n (the bytes each link carries in a ring allreduce);
* ``cuda``: with CUDA, a ResNet-50-sized synthetic model on NCCL, images/s of Horovod over
  plain torch; on CPU, ``{"skipped": reason}``.

Ranks are real processes talking through an in-process rendezvous server (the trainer's
`Launcher`). Every process uses ``--threads`` intra-op threads, so 1 and 2 ranks compete
fairly for the machine's cores. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WORKER_FLAG = "--_worker"


def _log(msg: str) -> None:
    print(f"[bench train] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- worker side


def _mlp_step_fn(args: argparse.Namespace, use_hvd: bool) -> tuple[Any, Any, int]:
    import torch
    from torch.optim.sgd import SGD

    from gyre.pipelines.trainer.models import TabularMLP

    torch.manual_seed(0)
    model = TabularMLP(args.features, tuple(args.hidden), 0.0)
    opt: Any = SGD(model.parameters(), lr=0.01)
    if use_hvd:
        import horovod.torch as hvd

        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch * 8, args.features, generator=g)
    y = (torch.rand(args.batch * 8, generator=g) > 0.5).float()
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    state = {"i": 0}

    def step() -> None:
        i = state["i"] % 8
        state["i"] += 1
        xb, yb = x[i * args.batch : (i + 1) * args.batch], y[i * args.batch : (i + 1) * args.batch]
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()  # type: ignore[no-untyped-call]
        opt.step()

    return step, model, args.batch


def _resnet50_step_fn(args: argparse.Namespace, use_hvd: bool) -> tuple[Any, Any, int]:
    import torch
    from torch.optim.sgd import SGD

    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda", int(os.environ.get("HOROVOD_LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    model = _resnet50().to(device)
    opt: Any = SGD(model.parameters(), lr=0.01, momentum=0.9)
    if use_hvd:
        import horovod.torch as hvd

        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    x = torch.randn(args.cuda_batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (args.cuda_batch,), device=device)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()
        torch.cuda.synchronize()

    return step, model, args.cuda_batch


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


def _time_steps(step: Any, warmup: int, seconds: float, batch: int) -> dict[str, float]:
    for _ in range(warmup):
        step()
    n, start = 0, time.perf_counter()
    while True:
        step()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return {"steps": n, "seconds": elapsed, "samples": n * batch}


def _allreduce_sweep(args: argparse.Namespace) -> list[dict[str, float]]:
    import horovod.torch as hvd
    import torch

    size = hvd.size()
    out = []
    nbytes = 1024
    while nbytes <= args.allreduce_max_bytes:
        t = torch.ones(nbytes // 4, dtype=torch.float32)
        iters = max(3, min(50, (256 << 20) // nbytes))
        for i in range(2):
            hvd.allreduce(t, op=hvd.Sum, name=f"warm.{nbytes}.{i}")
        hvd.barrier()
        start = time.perf_counter()
        for i in range(iters):
            hvd.allreduce(t, op=hvd.Sum, name=f"ar.{nbytes}.{i}")
        secs = (time.perf_counter() - start) / iters
        secs = max(hvd.allgather_object(secs))  # the slowest rank bounds the collective
        algbw = nbytes / secs / 1e9
        out.append(
            {
                "bytes": nbytes,
                "seconds": secs,
                "algbw_gbps": round(algbw, 4),
                "busbw_gbps": round(algbw * 2 * (size - 1) / size, 4),
            }
        )
        if hvd.rank() == 0:
            _log(f"allreduce {nbytes} B: {secs * 1e3:.3f} ms, busbw {out[-1]['busbw_gbps']} GB/s")
        nbytes *= 4 if nbytes < args.allreduce_max_bytes // 2 else 2
    return out


def _worker(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    mode = args.mode
    use_hvd = mode not in {"plain", "plain-cuda"}
    result: dict[str, Any] = {}
    if use_hvd:
        import horovod.torch as hvd

        hvd.init()
        result["rank"], result["size"] = hvd.rank(), hvd.size()
    if mode == "allreduce":
        result["allreduce"] = _allreduce_sweep(args)
    else:
        cuda = mode in ("plain-cuda", "hvd-cuda")
        fn = _resnet50_step_fn if cuda else _mlp_step_fn
        step, _, batch = fn(args, use_hvd)
        seconds = args.cuda_seconds if cuda else args.seconds
        result.update(_time_steps(step, args.warmup, seconds, batch))
    Path(args.out).write_text(json.dumps(result))
    if use_hvd:
        hvd.shutdown()
    return 0


# ----------------------------------------------------------------------------- driver side


def _run_ranks(args: argparse.Namespace, mode: str, size: int, tmp: Path) -> list[dict[str, Any]]:
    """Start ``size`` worker processes for ``mode``; their JSON results, rank order."""
    from gyre.pipelines.trainer.topology import build_horovod_env, build_slots

    launcher = None
    envs: list[dict[str, str]] = [{}]
    if mode not in ("plain", "plain-cuda"):
        from gyre.pipelines.trainer.launcher import Launcher

        launcher = Launcher(size, host="127.0.0.1").start()
        envs = [build_horovod_env(s, "127.0.0.1", launcher.port, "lo") for s in build_slots(size, 0)]
    procs = []
    outs = []
    for rank, extra in enumerate(envs):
        out = tmp / f"{mode}-{size}-{rank}.json"
        outs.append(out)
        cmd = [
            sys.executable,
            "-m",
            "gyre.bench.train",
            WORKER_FLAG,
            "--mode",
            mode,
            "--out",
            str(out),
            *_forward(args),
        ]
        env = {**os.environ, **extra, "OMP_NUM_THREADS": str(args.threads)}
        if mode.endswith("cuda") and launcher is not None:
            env["HOROVOD_GPU_OPERATIONS"] = "NCCL"
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        codes = [p.wait(timeout=args.timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if launcher is not None:
            launcher.stop()
    if any(codes):
        raise RuntimeError(f"{mode} x{size}: worker exit codes {codes}")
    return [json.loads(o.read_text()) for o in outs]


def _forward(args: argparse.Namespace) -> list[str]:
    return [
        "--features",
        str(args.features),
        "--hidden",
        *map(str, args.hidden),
        "--batch",
        str(args.batch),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--allreduce-max-bytes",
        str(args.allreduce_max_bytes),
        "--cuda-batch",
        str(args.cuda_batch),
        "--cuda-seconds",
        str(args.cuda_seconds),
    ]


def _throughput(results: list[dict[str, Any]]) -> float:
    samples = sum(r["samples"] for r in results)
    seconds = max(r["seconds"] for r in results)
    return float(samples / seconds)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gyre bench train", description=__doc__.split("\n")[0])
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    p.add_argument("--batch", type=int, default=256, help="per-rank batch size")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; best one counts")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--allreduce-max-bytes", type=int, default=64 << 20)
    p.add_argument("--cuda-batch", type=int, default=64)
    p.add_argument("--cuda-seconds", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument(WORKER_FLAG, dest="worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="plain", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
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
        "batch_per_rank": args.batch,
        "threads_per_process": args.threads,
        "cpus": os.cpu_count(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory(prefix="gyre-bench-train-") as d:
        tmp = Path(d)
        # rounds alternate the three set-ups and keep each one's best, so a burst of load
        # from elsewhere on the machine does not land on one set-up only
        best = {"plain": 0.0, "hvd1": 0.0, "hvd2": 0.0}
        setups = (("plain", "plain", 1), ("hvd1", "hvd", 1), ("hvd2", "hvd", 2))
        total = args.rounds * len(setups) + 1
        done = 0
        for r in range(args.rounds):
            for key, mode, size in setups:
                done += 1
                pct = 100 * done / total
                _log(f"round {r + 1}/{args.rounds}: {key} ({done}/{total}, {pct:.0f}%)")
                rate = _throughput(_run_ranks(args, mode, size, tmp))
                _log(f"{key}: {rate:.0f} samples/s")
                best[key] = max(best[key], rate)
        plain, hvd1, hvd2 = best["plain"], best["hvd1"], best["hvd2"]
        _log(f"allreduce sweep on 2 ranks ({total}/{total})")
        sweep = _run_ranks(args, "allreduce", 2, tmp)[0]["allreduce"]
        report.update(
            plain_samples_per_s=round(plain, 1),
            hvd1_samples_per_s=round(hvd1, 1),
            hvd2_samples_per_s=round(hvd2, 1),
            hvd1_over_plain=round(hvd1 / plain, 4),
            scaling_efficiency=round(hvd2 / (2 * hvd1), 4),
            allreduce=sweep,
        )
        if torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            _log(f"CUDA: ResNet-50-sized model, plain vs Horovod/NCCL on {gpus} GPU(s)")
            plain_cuda = _throughput(_run_ranks(args, "plain-cuda", 1, tmp))
            hvd_cuda = _throughput(_run_ranks(args, "hvd-cuda", gpus, tmp))
            report["cuda"] = {
                "gpus": gpus,
                "plain_img_per_s": round(plain_cuda, 1),
                "hvd_img_per_s": round(hvd_cuda, 1),
                "hvd_over_plain": round(hvd_cuda / plain_cuda, 4),
                "hvd_over_plain_per_gpu": round(hvd_cuda / (gpus * plain_cuda), 4),
            }
        else:
            report["cuda"] = {"skipped": "no CUDA device: the NCCL ResNet-50 comparison needs a GPU"}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
