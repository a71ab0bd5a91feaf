"""How the control plane tells its running components from the pids in its pid files."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gyre.controlplane.plane import ComponentExitedError, ControlPlane, PidRecord, _guard_alive
from gyre.controlplane.procs import Proc


@pytest.fixture
def plane(tmp_path: Path) -> ControlPlane:
    (tmp_path / "run").mkdir()
    # bin_dir given: nothing here needs (or builds) the binaries.
    return ControlPlane(tmp_path, bin_dir=tmp_path / "bin")


@pytest.fixture
def unexeced_child() -> Iterator[int]:
    """A forked child that has not called exec: its command line is still its parent's."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        yield pid
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass


def test_a_component_is_recognised_before_its_exec(plane: ControlPlane, unexeced_child: int) -> None:
    """Regression: `ControlPlane.pid` identified a component by ``/proc/<pid>/cmdline``, which for
    a just-spawned child can still be the parent's (before ``exec``). A start then failed with
    "kube-apiserver exited; last lines of its log:" while the API server was in fact running,
    and left etcd and kube-apiserver behind."""
    assert Proc(unexeced_child).cmdline() == Proc(os.getpid()).cmdline()
    plane._record_pid("kube-apiserver", unexeced_child)
    assert plane.pid("kube-apiserver") == unexeced_child
    assert _guard_alive(plane, "kube-apiserver")

    os.kill(unexeced_child, signal.SIGKILL)
    os.waitpid(unexeced_child, 0)
    assert plane.pid("kube-apiserver") is None
    with pytest.raises(ComponentExitedError, match="kube-apiserver exited"):
        _guard_alive(plane, "kube-apiserver")


def test_a_recycled_pid_is_not_taken_for_the_component(plane: ControlPlane) -> None:
    """The pid file names a live process that started at another time than the component."""
    me = PidRecord.of(os.getpid())
    assert me.start_time is not None
    (plane.state_dir / "run" / "etcd.pid").write_text(PidRecord(me.pid, me.start_time + 1).dump())
    assert plane.pid("etcd") is None
    (plane.state_dir / "run" / "etcd.pid").write_text(me.dump())
    assert plane.pid("etcd") == os.getpid()


def test_a_pid_file_without_start_time_is_checked_by_command_line(plane: ControlPlane) -> None:
    """Pid files of a plane started before start times were recorded hold only the pid."""
    (plane.state_dir / "run" / "etcd.pid").write_text(f"{os.getpid()}\n")
    assert plane.pid("etcd") is None  # this interpreter is not an etcd of this state dir


@pytest.mark.parametrize("text", ["", "x", "1 2 3", "12 y"])
def test_an_unreadable_pid_file_means_not_running(plane: ControlPlane, text: str) -> None:
    (plane.state_dir / "run" / "etcd.pid").write_text(text)
    assert plane.pid("etcd") is None
