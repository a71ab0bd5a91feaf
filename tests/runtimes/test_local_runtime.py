"""The local runtime against real processes: ports, env, volumes, restarts, readiness, cleanup.

Workloads are ``toy_workload.py``; it records what it saw (env, argv, pids, starts) in files,
and the tests assert on those files, on the processes in /proc and on what the runtime reports.
Every process a test starts carries the test's tag in its environment; a fixture fails the
test if any tagged process outlives it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from gyre.controlplane.procs import running_in
from gyre.core.workload import (
    ConfigDirRef,
    EndpointRef,
    Owner,
    PeersRef,
    Port,
    Readiness,
    Resources,
    RestartPolicy,
    SecretFile,
    Volume,
    VolumePathRef,
    Workload,
    WorkloadKind,
    WorkloadPhase,
    WorkloadStatus,
)
from gyre.pipelines._common.env import expand_vars
from gyre.runtimes.base import Runtime
from gyre.runtimes.local import LocalRuntime

from tests.support import eventually_async

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
TOY = str(HERE / "toy_workload.py")
OWNER = Owner(kind="Stream", namespace="ns1", name="clicks", uid="uid-1")
OTHER = Owner(kind="FeatureJob", namespace="ns1", name="churn", uid="uid-2")
TAG_VAR = "GYRE_TEST_TAG"
DATA = (Volume("data", "/data"),)
DATA_ENV = {"DATA": VolumePathRef("data")}

WITHIN_S = 15.0  # how long a check may take to pass (each test has 45 s in all)
POLL_S = 0.05


# -- helpers ----------------------------------------------------------------------------------


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (no pytest-asyncio needed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), timeout=45))

    return wrapper


def runtime(tmp_path: Path, **kwargs: Any) -> LocalRuntime:
    options: dict[str, Any] = {
        "grace_period_s": 2.0,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.4,
    } | kwargs
    return LocalRuntime(tmp_path / "state", **options)


def toy(*args: str) -> tuple[str, ...]:
    return ("python", TOY, *args)


def service(name: str, *args: str, **kwargs: Any) -> Workload:
    """A long-running toy with a ``main`` port, a ``data`` volume and a TCP readiness probe."""
    options: dict[str, Any] = {
        "ports": (Port("main", 8080),),
        "readiness": Readiness(port="main", period_s=0.1),
        "volumes": DATA,
        "env": DATA_ENV,
    } | kwargs
    return Workload(name=name, role="server", kind=WorkloadKind.SERVICE, command=toy(*args), **options)


def batch(name: str, *args: str, **kwargs: Any) -> Workload:
    options: dict[str, Any] = {"volumes": DATA, "env": DATA_ENV} | kwargs
    return Workload(name=name, role="job", kind=WorkloadKind.BATCH, command=toy(*args), **options)


async def status_of(rt: LocalRuntime, name: str, owner: Owner = OWNER) -> WorkloadStatus:
    return (await rt.observe(owner))[name]


async def wait_phase(
    rt: LocalRuntime, name: str, phase: WorkloadPhase, owner: Owner = OWNER, within: float = 15
) -> WorkloadStatus:
    async def check() -> WorkloadStatus:
        status = await status_of(rt, name, owner)
        assert status.phase is phase, status
        return status

    return await eventually_async(check, within, POLL_S)


def read_json(path: Path) -> Any:
    assert path.exists(), f"{path} not written yet"
    return json.loads(path.read_text())


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def tagged_processes(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag`` (the test process itself excluded)."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and alive(int(entry)):
            found.append(int(entry))
    return found


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def same_file(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def log_lines(rt: LocalRuntime, name: str, replica: int = 0) -> list[str]:
    return rt.log_path(OWNER, name, replica).read_text().splitlines()


@pytest.fixture(autouse=True)
def no_leftover_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Tags every process the test starts (they inherit the env) and fails if one survives."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG_VAR, tag)
    yield tag
    deadline = time.monotonic() + 10
    while (left := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


# -- tests ------------------------------------------------------------------------------------


def test_is_a_runtime(tmp_path: Path) -> None:
    rt: Runtime = runtime(tmp_path)
    assert rt.name == "local"


def test_expand_vars_like_kubernetes() -> None:
    env = {"A": "1", "B": "two"}
    assert expand_vars("$(A)-$(B)", env) == "1-two"
    assert expand_vars("$$(A) $(MISSING) $(A", env) == "$(A) $(MISSING) $(A"
    assert expand_vars("cost: $5 $$", env) == "cost: $5 $"


@run_async
async def test_tcp_readiness_waits_for_the_port(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        gate = tmp_path / "listen"
        await rt.apply(OWNER, [service("broker", "serve", "--listen-after", str(gate))])
        address = rt.endpoint(OWNER, "broker", "main")
        assert address is not None
        host, port = address.split(":")
        assert host == "127.0.0.1"
        assert int(port) != 8080

        status = await wait_phase(rt, "broker", WorkloadPhase.RUNNING)
        assert status.ready_replicas == 0  # nothing listens until the gate file exists
        gate.touch()
        status = await wait_phase(rt, "broker", WorkloadPhase.READY)
        assert (status.replicas, status.ready_replicas, status.restarts) == (1, 1, 0)
        with socket.create_connection((host, int(port)), timeout=2):
            pass


@run_async
async def test_read_status_gets_every_replicas_status_document(tmp_path: Path) -> None:
    """The status contract: `read_status` reaches each replica's /status on its own port, and
    each replica got the environment both runtimes give (owner, workload, index, count)."""
    workload = service(
        "model", "http", "--port-env", "GYRE_PORT_HTTP", replicas=2, ports=(Port("http", 8080),),
        readiness=Readiness(port="http", http_path="/healthz", period_s=0.1), status_port="http",
    )  # fmt: skip
    async with runtime(tmp_path) as rt:
        assert await rt.read_status(OWNER, workload) == []  # nothing applied: nothing answers
        await rt.apply(OWNER, [workload])
        await wait_phase(rt, "model", WorkloadPhase.READY)
        docs = await rt.read_status(OWNER, workload)
        assert docs == [
            {
                "GYRE_OWNER": OWNER.name,
                "GYRE_WORKLOAD": "model",
                "GYRE_REPLICA_INDEX": str(i),
                "GYRE_REPLICAS": "2",
            }
            for i in range(2)
        ]
        no_status_port = dataclasses.replace(workload, status_port=None)
        assert await rt.read_status(OWNER, no_status_port) == []


@run_async
async def test_http_readiness_needs_a_2xx(tmp_path: Path) -> None:
    gate = tmp_path / "healthy"
    workload = service(
        "model",
        "http",
        "--port-env",
        "GYRE_PORT_HTTP",
        "--ready-file",
        str(gate),
        replicas=2,
        ports=(Port("http", 8080),),
        readiness=Readiness(port="http", http_path="/healthz", period_s=0.1),
    )
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])
        url = f"http://{rt.endpoint(OWNER, 'model', 'http')}/healthz"

        async def answers_503() -> None:
            assert await asyncio.to_thread(http_status, url) == 503

        # The server is up: TCP alone would call it ready.
        await eventually_async(answers_503, WITHIN_S, POLL_S)
        status = await status_of(rt, "model")
        assert status.phase is WorkloadPhase.RUNNING
        assert status.ready_replicas == 0
        gate.touch()
        status = await wait_phase(rt, "model", WorkloadPhase.READY)
        assert status.ready_replicas == 2
        assert await asyncio.to_thread(http_status, url) == 200


@run_async
async def test_env_references_and_arg_expansion(tmp_path: Path) -> None:
    db = service("db", "serve", ports=(Port("sql", 5432),), readiness=None)
    app = batch(
        "app",
        "dump",
        "--out",
        "$(DATA)/dump.json",
        "addr=$(DB_ADDR)",
        "literal=$$(DB_ADDR)",
        "unknown=$(NOPE)",
        "replica=$(GYRE_REPLICA_INDEX)",
        replicas=2,
        ports=(Port("http-api", 8080),),
        env={
            "DB_ADDR": EndpointRef(port="sql", workload="db"),
            "SELF": EndpointRef(port="http-api"),
            "PEERS": PeersRef(port="http-api"),
            "DATA": VolumePathRef("data"),
            "CONF": ConfigDirRef(),
            "PLAIN": "plain value",
        },
        config_files={"app.json": '{"lr": 0.1}'},
    )
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [db, app])
        status = await wait_phase(rt, "app", WorkloadPhase.SUCCEEDED)
        assert (status.succeeded, status.exit_codes) == (2, (0, 0))
        db_address = rt.endpoint(OWNER, "db", "sql")
        owner_dir = tmp_path / "state" / "ns1" / "stream-clicks"
        own_ports = set()
        for i in range(2):
            data = owner_dir / f"app-{i}" / "data"
            assert rt.volume_path(OWNER, "app", "data", i) == data
            dump = read_json(data / "dump.json")
            env = dump["env"]
            assert env["DB_ADDR"] == db_address
            assert env["SELF"] == f"127.0.0.1:{env['GYRE_PORT_HTTP_API']}"
            own_ports.add(env["GYRE_PORT_HTTP_API"])
            assert env["DATA"] == str(data)
            assert env["CONF"] == str(owner_dir / "config" / "app")
            assert dump["config"] == {"app.json": '{"lr": 0.1}'}
            assert env["PLAIN"] == "plain value"
            assert env["GYRE_REPLICA_INDEX"] == str(i)
            assert env["GYRE_REPLICAS"] == "2"
            assert env["GYRE_WORKLOAD"] == "app"
            assert env["GYRE_OWNER"] == "clicks"
            assert "CUDA_VISIBLE_DEVICES" not in env or env["CUDA_VISIBLE_DEVICES"] == (
                os.environ.get("CUDA_VISIBLE_DEVICES")
            )
            assert dump["extra"] == [
                f"addr={db_address}",
                "literal=$(DB_ADDR)",
                "unknown=$(NOPE)",
                f"replica={i}",
            ]
            assert same_file(dump["executable"], sys.executable)
            assert dump["cwd"] == str(owner_dir / f"app-{i}")
        assert len(own_ports) == 2  # each replica has its own port
        peers = [f"127.0.0.1:{p}" for p in sorted(own_ports, key=int)]
        for i in range(2):
            env = read_json(owner_dir / f"app-{i}" / "data" / "dump.json")["env"]
            # Every replica sees all of them, in index order: its own entry is its index's.
            assert env["PEERS"].split(",")[i] == env["SELF"]
            assert sorted(env["PEERS"].split(",")) == sorted(peers)


@run_async
async def test_crash_restarts_keep_volume_and_port(tmp_path: Path) -> None:
    workload = service(
        "flaky",
        "exit",
        "--code",
        "3",
        "--say",
        "crashing",
        "--counter",
        "$(DATA)/starts",
        "--record-port",
        "$(DATA)/ports",
        readiness=None,
    )
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])

        async def restarted_thrice() -> WorkloadStatus:
            status = await status_of(rt, "flaky")
            assert status.restarts >= 3, status
            return status

        status = await eventually_async(restarted_thrice, WITHIN_S, POLL_S)
        assert status.phase is not WorkloadPhase.FAILED  # Always never gives up
        assert status.exit_codes == (3,)
        data = rt.volume_path(OWNER, "flaky", "data")
        assert int((data / "starts").read_text()) >= 3  # the volume outlived each process
        address = rt.endpoint(OWNER, "flaky", "main")
        assert address is not None
        assert set((data / "ports").read_text().split()) == {address.split(":")[1]}
        assert log_lines(rt, "flaky").count("crashing") >= 3


@run_async
async def test_volume_and_port_survive_an_operator_restart(tmp_path: Path) -> None:
    workload = service("store", "serve", "--counter", "$(DATA)/starts")
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])
        await wait_phase(rt, "store", WorkloadPhase.READY)
        address = rt.endpoint(OWNER, "store", "main")
    async with runtime(tmp_path) as rt:  # a new operator process would do the same
        await rt.apply(OWNER, [workload])
        await wait_phase(rt, "store", WorkloadPhase.READY)
        assert rt.endpoint(OWNER, "store", "main") == address
        assert (rt.volume_path(OWNER, "store", "data") / "starts").read_text() == "2"


@run_async
async def test_on_failure_gives_up_after_backoff_limit(tmp_path: Path) -> None:
    workload = batch(
        "train",
        "exit",
        "--code",
        "7",
        "--say",
        "boom",
        restart_policy=RestartPolicy.ON_FAILURE,
        backoff_limit=2,
    )
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])
        status = await wait_phase(rt, "train", WorkloadPhase.FAILED)
        assert (status.restarts, status.failed, status.exit_codes) == (2, 1, (7,))
        assert "exited with code 7 after 2 restart(s)" in status.message
        assert "boom" in status.message  # the log's last lines say why
        assert log_lines(rt, "train").count("boom") == 3  # the first run and two restarts


@run_async
async def test_on_failure_restarts_until_success(tmp_path: Path) -> None:
    workload = batch(
        "train",
        "exit",
        "--fail-times",
        "2",
        "--counter",
        "$(DATA)/starts",
        restart_policy=RestartPolicy.ON_FAILURE,
        backoff_limit=6,
    )
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])
        status = await wait_phase(rt, "train", WorkloadPhase.SUCCEEDED)
        assert (status.restarts, status.succeeded, status.exit_codes) == (2, 1, (0,))


@run_async
async def test_never_does_not_restart(tmp_path: Path) -> None:
    workload = service(
        "once",
        "exit",
        "--code",
        "1",
        "--counter",
        "$(DATA)/starts",
        restart_policy=RestartPolicy.NEVER,
        readiness=None,
    )
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])
        status = await wait_phase(rt, "once", WorkloadPhase.FAILED)
        assert (status.restarts, status.exit_codes) == (0, (1,))
        assert (rt.volume_path(OWNER, "once", "data") / "starts").read_text() == "1"


@run_async
async def test_always_restarts_a_service_that_exits_zero(tmp_path: Path) -> None:
    workload = service("loop", "exit", "--code", "0", readiness=None)
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])

        async def restarted() -> None:
            status = await status_of(rt, "loop")
            assert status.restarts >= 2
            assert status.phase is not WorkloadPhase.SUCCEEDED

        await eventually_async(restarted, WITHIN_S, POLL_S)


@run_async
async def test_batch_success(tmp_path: Path) -> None:
    workload = batch("etl", "exit", "--counter", "$(DATA)/starts", replicas=3)
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])
        status = await wait_phase(rt, "etl", WorkloadPhase.SUCCEEDED)
        assert (status.succeeded, status.failed, status.restarts) == (3, 0, 0)
        assert status.exit_codes == (0, 0, 0)
        for i in range(3):
            assert (rt.volume_path(OWNER, "etl", "data", i) / "starts").read_text() == "1"
        await rt.apply(OWNER, [workload])  # a finished batch is not started again
        for i in range(3):
            assert (rt.volume_path(OWNER, "etl", "data", i) / "starts").read_text() == "1"


@run_async
async def test_failed_batch_replica_stops_the_others(tmp_path: Path) -> None:
    workload = batch(
        "ring",
        "sleep",
        "--fail-replica",
        "1",
        "--pid-file",
        "$(DATA)/pids.json",
        replicas=2,
        restart_policy=RestartPolicy.NEVER,
    )
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])
        status = await wait_phase(rt, "ring", WorkloadPhase.FAILED)
        assert "replica 1 exited with code 1" in status.message
        # Replica 0 may be stopped before it writes its pid file (a loaded machine): look for
        # any process still working in its directory instead.
        replica0 = str(rt.replica_dir(OWNER, "ring", 0).resolve())
        await eventually_async(lambda: nothing_runs_in(replica0), WITHIN_S, POLL_S)


def nothing_runs_in(directory: str) -> None:
    left = running_in(directory)
    assert not left, f"still running in {directory}: {left}"


def not_alive(pid: int) -> None:
    assert not alive(pid), f"pid {pid} is still alive"


@run_async
async def test_apply_is_idempotent(tmp_path: Path) -> None:
    def spec() -> list[Workload]:  # equal, but new objects each time
        return [service("api", "serve", "--pid-file", "$(DATA)/pids.json", replicas=2)]

    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, spec())
        await wait_phase(rt, "api", WorkloadPhase.READY)
        pids = [read_json(rt.volume_path(OWNER, "api", "data", i) / "pids.json") for i in (0, 1)]
        address = rt.endpoint(OWNER, "api", "main")
        for _ in range(3):
            await rt.apply(OWNER, spec())
        # apply waits for what it stops, so a restart would already show here
        assert all(alive(p["pid"]) for p in pids)
        status = await status_of(rt, "api")
        assert (status.phase, status.restarts) == (WorkloadPhase.READY, 0)
        assert rt.endpoint(OWNER, "api", "main") == address
        assert sum("starting" in line for line in log_lines(rt, "api")) == 1


@run_async
async def test_spec_change_restarts_on_the_same_port(tmp_path: Path) -> None:
    before = service("api", "serve", "--pid-file", "$(DATA)/pids.json")
    after = service("api", "serve", "--pid-file", "$(DATA)/pids.json", env={**DATA_ENV, "VERSION": "2"})
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [before])
        await wait_phase(rt, "api", WorkloadPhase.READY)
        pids = rt.volume_path(OWNER, "api", "data") / "pids.json"
        old = read_json(pids)["pid"]
        address = rt.endpoint(OWNER, "api", "main")
        await rt.apply(OWNER, [after])
        assert not alive(old)  # apply stopped the old process before it returned

        def restarted() -> None:
            assert read_json(pids)["pid"] != old

        await eventually_async(restarted, WITHIN_S, POLL_S)
        await wait_phase(rt, "api", WorkloadPhase.READY)
        assert rt.endpoint(OWNER, "api", "main") == address


@run_async
async def test_config_files_change_in_place_for_a_workload_that_rereads_them(tmp_path: Path) -> None:
    def spec(content: str, **kwargs: Any) -> Workload:
        return service(
            "api",
            "serve",
            "--pid-file",
            "$(DATA)/pids.json",
            config_files={"app.json": content},
            reloads_config=True,
            **kwargs,
        )

    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [spec("1")])
        await wait_phase(rt, "api", WorkloadPhase.READY)
        pid = read_json(rt.volume_path(OWNER, "api", "data") / "pids.json")["pid"]
        await rt.apply(OWNER, [spec("2")])
        assert (rt.config_dir(OWNER, "api") / "app.json").read_text() == "2"
        assert sorted(p.name for p in rt.config_dir(OWNER, "api").iterdir()) == ["app.json"]
        assert alive(pid)  # apply waits for what it stops: a restart would show here
        assert (await status_of(rt, "api")).restarts == 0
        # Any other change still restarts it, with the contents it has now.
        await rt.apply(OWNER, [spec("2", env={**DATA_ENV, "VERSION": "2"})])
        assert not alive(pid)
        assert (rt.config_dir(OWNER, "api") / "app.json").read_text() == "2"


@run_async
async def test_prune_stops_workloads_no_longer_listed(tmp_path: Path) -> None:
    a = service("a", "serve", "--pid-file", "$(DATA)/pids.json")
    b = service("b", "serve", "--pid-file", "$(DATA)/pids.json", "--grandchildren")
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [a, b])
        await wait_phase(rt, "a", WorkloadPhase.READY)
        await wait_phase(rt, "b", WorkloadPhase.READY)
        a_pid = read_json(rt.volume_path(OWNER, "a", "data") / "pids.json")["pid"]
        b_pids = read_json(rt.volume_path(OWNER, "b", "data") / "pids.json")
        await rt.apply(OWNER, [a])
        for pid in [b_pids["pid"], *b_pids["grandchildren"]]:
            await eventually_async(functools.partial(not_alive, pid), WITHIN_S, POLL_S)
        assert set(await rt.observe(OWNER)) == {"a"}
        assert rt.endpoint(OWNER, "b", "main") is None
        assert alive(a_pid)
        assert "b" not in read_json(rt.owner_dir(OWNER) / "ports.json")


@run_async
async def test_delete_kills_the_whole_process_tree(tmp_path: Path) -> None:
    workload = service("tree", "serve", "--grandchildren", "--pid-file", "$(DATA)/pids.json")
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])
        await rt.apply(OTHER, [service("other", "serve", "--pid-file", "$(DATA)/pids.json")])
        await wait_phase(rt, "tree", WorkloadPhase.READY)
        await wait_phase(rt, "other", WorkloadPhase.READY, owner=OTHER)
        pids = read_json(rt.volume_path(OWNER, "tree", "data") / "pids.json")
        tree = [pids["pid"], *pids["grandchildren"]]
        assert len(tree) == 3
        assert all(alive(p) for p in tree)
        await rt.delete(OWNER)
        for pid in tree:
            await eventually_async(functools.partial(not_alive, pid), WITHIN_S, POLL_S)
        assert await rt.observe(OWNER) == {}
        assert not (rt.owner_dir(OWNER) / "ports.json").exists()
        assert (await status_of(rt, "other", OTHER)).phase is WorkloadPhase.READY
        other = read_json(rt.volume_path(OTHER, "other", "data") / "pids.json")["pid"]
    assert not alive(other)  # close() stopped the rest


@run_async
async def test_sigterm_is_followed_by_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    workload = service("stubborn", "serve", "--ignore-term", "--pid-file", "$(DATA)/pids.json")
    async with runtime(tmp_path, grace_period_s=0.5) as rt:
        await rt.apply(OWNER, [workload])
        await wait_phase(rt, "stubborn", WorkloadPhase.READY)
        pid = read_json(rt.volume_path(OWNER, "stubborn", "data") / "pids.json")["pid"]
        await rt.delete(OWNER)
        await eventually_async(functools.partial(not_alive, pid), WITHIN_S, POLL_S)


@run_async
async def test_missing_executable_is_failed_not_raised(tmp_path: Path) -> None:
    workload = Workload(
        name="ghost",
        role="x",
        kind=WorkloadKind.SERVICE,
        command=("gyre-no-such-program", "--flag"),
    )
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])
        status = await status_of(rt, "ghost")
        assert status.phase is WorkloadPhase.FAILED
        assert "'gyre-no-such-program' not found" in status.message


@run_async
async def test_invalid_reference_is_failed_not_raised(tmp_path: Path) -> None:
    workload = batch("lost", "exit", env={"PEER": EndpointRef(port="x", workload="nowhere")})
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])
        status = await status_of(rt, "lost")
        assert status.phase is WorkloadPhase.FAILED
        assert "no workload 'nowhere'" in status.message


@run_async
async def test_secret_files_fail_locally_saying_what_to_use_instead(tmp_path: Path) -> None:
    workload = service("api", "serve", secrets=(SecretFile(name="token", secret="api", key="t"),))
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])
        status = await status_of(rt, "api")
        assert status.phase is WorkloadPhase.FAILED
        assert "mounts Secret keys (api/t)" in status.message
        assert "give the value as a file instead" in status.message


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host has a GPU")
@run_async
async def test_gpu_request_without_gpus_is_pending(tmp_path: Path) -> None:
    workload = batch("train", "exit", resources=Resources(gpu=2))
    async with runtime(tmp_path) as rt:
        await rt.apply(OWNER, [workload])
        status = await status_of(rt, "train")
        assert status.phase is WorkloadPhase.PENDING
        assert status.message == "requests 2 GPU(s); this host has none"
        assert not rt.log_path(OWNER, "train").exists()  # nothing was started


@run_async
async def test_gpus_are_handed_out_exclusively(tmp_path: Path) -> None:
    """With the devices given (as on a GPU host), replicas get distinct CUDA_VISIBLE_DEVICES."""
    gate = tmp_path / "finish"
    first = batch(
        "first",
        "dump",
        "--out",
        "$(DATA)/dump.json",
        replicas=2,
        resources=Resources(gpu=1),
    )
    holder = batch("holder", "serve", "--listen-after", str(gate), resources=Resources(gpu=1))
    async with runtime(tmp_path, gpus=["0", "1", "2"]) as rt:
        await rt.apply(OWNER, [first])
        await wait_phase(rt, "first", WorkloadPhase.SUCCEEDED)
        seen = {
            read_json(rt.volume_path(OWNER, "first", "data", i) / "dump.json")["env"]["CUDA_VISIBLE_DEVICES"]
            for i in (0, 1)
        }
        assert len(seen) == 2
        assert seen <= {"0", "1", "2"}

        second = batch("second", "exit", replicas=3, resources=Resources(gpu=1))
        await rt.apply(OWNER, [first, holder, second])  # holder takes 1 of 3; 3 more won't fit
        status = await status_of(rt, "second")
        assert status.phase is WorkloadPhase.PENDING
        assert "2 of the host's 3 are free" in status.message
        await rt.delete(OWNER)
        await rt.apply(OWNER, [second])  # everything freed: the retry fits
        await wait_phase(rt, "second", WorkloadPhase.SUCCEEDED)


def test_no_orphans_when_the_operator_is_sigkilled(tmp_path: Path, no_leftover_processes: str) -> None:
    """SIGKILL of the process running the runtime leaves no process of its workloads behind,
    not even grandchildren that moved to a session of their own."""
    driver = subprocess.Popen(
        [sys.executable, str(HERE / "orphan_driver.py"), str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert driver.stdout is not None
        ready, _, _ = select.select([driver.stdout], [], [], 30)
        assert ready, "the driver did not start"
        assert driver.stdout.readline().strip() == "ready"
        workloads = [p for p in tagged_processes(no_leftover_processes) if p != driver.pid]
        # 3 replicas, each a reaper, the command and 2 grandchildren
        assert len(workloads) == 12, workloads
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        deadline = time.monotonic() + 15
        while (left := tagged_processes(no_leftover_processes)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left == []
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
