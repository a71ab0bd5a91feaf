"""Runs a local runtime in a process of its own, for the test that SIGKILLs that process.

Usage: ``python orphan_driver.py STATE_DIR``. Starts a service of two replicas and a batch
workload, each of whose processes starts two grandchildren (one escapes its process group with
``setsid``), prints ``ready`` once all of them run, then waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from gyre.core.workload import (
    Owner,
    Port,
    Readiness,
    Volume,
    VolumePathRef,
    Workload,
    WorkloadKind,
    WorkloadPhase,
)
from gyre.runtimes.local import LocalRuntime

TOY = str(Path(__file__).with_name("toy_workload.py"))
OWNER = Owner(kind="TrainingJob", namespace="orphans", name="driver", uid="uid-orphans")


def pid_files_complete(rt: LocalRuntime, workloads: list[Workload]) -> bool:
    for w in workloads:
        for i in range(w.replicas):
            path = rt.volume_path(OWNER, w.name, "data", i) / "pids.json"
            if not path.exists() or len(json.loads(path.read_text())["grandchildren"]) != 2:
                return False
    return True


async def main(state_dir: Path) -> None:
    common = ("--grandchildren", "--pid-file", "$(DATA)/pids.json")
    workloads = [
        Workload(
            name="svc",
            role="server",
            kind=WorkloadKind.SERVICE,
            command=("python", TOY, "serve", *common),
            replicas=2,
            env={"DATA": VolumePathRef("data")},
            ports=(Port("main", 8000),),
            readiness=Readiness(port="main", period_s=0.1),
            volumes=(Volume("data", "/data"),),
        ),
        Workload(
            name="job",
            role="worker",
            kind=WorkloadKind.BATCH,
            command=("python", TOY, "sleep", *common),
            env={"DATA": VolumePathRef("data")},
            volumes=(Volume("data", "/data"),),
        ),
    ]
    rt = LocalRuntime(state_dir, grace_period_s=2.0)
    await rt.apply(OWNER, workloads)
    while True:
        status = await rt.observe(OWNER)
        if (
            status["svc"].phase is WorkloadPhase.READY
            and status["job"].phase is WorkloadPhase.RUNNING
            and pid_files_complete(rt, workloads)
        ):
            break
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await asyncio.Event().wait()  # until SIGKILLed


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
