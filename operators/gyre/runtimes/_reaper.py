"""Supervises one process of the local runtime so that nothing it starts outlives it.

The local runtime does not start a workload's command directly but through this script::

    python -I -S _reaper.py <operator-pid> <grace-seconds> -- <command> [args...]

in a new session (so the reaper is session leader). The reaper:

* dies with the operator: ``PR_SET_PDEATHSIG`` sends it SIGUSR1 when the operator's thread that
  started it ends, however it ends (SIGKILL and OOM included); it then SIGKILLs every process
  it is responsible for and exits;
* starts the command in a process group of its own, with ``PR_SET_PDEATHSIG=SIGKILL``, so the
  command dies even if the reaper itself is SIGKILLed;
* is a child subreaper: a descendant whose parent exits (a daemon that double-forks, a process
  that called ``setsid``) is re-parented to the reaper instead of init, so it can still be
  found and killed; "no children left" therefore means "no descendants left";
* on SIGTERM forwards SIGTERM to the command's process group and SIGKILLs whatever is still
  alive after the grace period;
* when the command's main process exits, kills what it left behind (as a container runtime
  does when a container's PID 1 exits) and exits with the command's exit code, or 128+N if
  signal N ended it.

Only the standard library is used and nothing of gyre, so it starts quickly in isolated mode;
the process-table helpers below are shared with the runtime.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from types import FrameType

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PARENT_DEATH_SIGNAL = signal.SIGUSR1
SWEEP_DEADLINE_S = 5.0
EXIT_CANNOT_EXEC = 127
EXIT_KILLED = 128 + signal.SIGKILL

_libc: ctypes.CDLL | None = None


def prctl(option: int, arg: int) -> None:
    """Call prctl(2); a no-op off Linux, where the runtime loses only its crash guarantees."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def exit_code(wait_status: int) -> int:
    """A shell-style exit code: the code itself, or 128+N for death by signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code


def read_stat(pid: int) -> tuple[int, int, int, str] | None:
    """``(ppid, pgid, session, state)`` of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    fields = raw[raw.rfind(")") + 2 :].split()
    if len(fields) < 4:
        return None
    return int(fields[1]), int(fields[2]), int(fields[3]), fields[0]


def process_table() -> dict[int, tuple[int, int, int, str]]:
    """Every live process on the host (as far as /proc shows), by pid."""
    table: dict[int, tuple[int, int, int, str]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                table[int(name)] = stat
    return table


def descendants(root: int, table: dict[int, tuple[int, int, int, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_session(session: int) -> int:
    """SIGKILL every live process of a session; how many were signalled."""
    killed = 0
    for pid, (_, _, sid, state) in process_table().items():
        if sid == session and state != "Z" and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


class Reaper:
    def __init__(self, operator_pid: int, grace_s: float, argv: list[str]) -> None:
        self.operator_pid = operator_pid
        self.grace_s = grace_s
        self.argv = argv
        self.child = 0
        self.stopping = False
        self.forwarded = False
        self.statuses: dict[int, int] = {}

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(PARENT_DEATH_SIGNAL, self._on_parent_death)
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        prctl(PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL)
        if os.getppid() != self.operator_pid:
            return EXIT_KILLED  # the operator died before the death signal was armed
        self._start()
        while self.child not in self.statuses:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.statuses[pid] = status
        self._kill_everything()
        final = self.statuses.get(self.child)
        return EXIT_KILLED if final is None else exit_code(final)

    def _start(self) -> None:
        handled = {signal.SIGTERM, signal.SIGALRM, PARENT_DEATH_SIGNAL}
        # Blocked across fork so that a handler never runs in the child, nor in the parent
        # before it knows the child's pid.
        signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._exec(me)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child; whichever runs first wins the race
        self.child = pid
        if self.stopping:
            self._forward_term()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)

    def _exec(self, reaper_pid: int) -> None:
        try:
            os.setpgid(0, 0)
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != reaper_pid:
                os._exit(EXIT_KILLED)
            for sig in (signal.SIGTERM, signal.SIGALRM, PARENT_DEATH_SIGNAL):
                signal.signal(sig, signal.SIG_DFL)
            # Python ignores these at startup; an exec'd program expects the defaults.
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.execvp(self.argv[0], self.argv)
        except BaseException as exc:  # nothing may escape a forked child
            try:
                os.write(2, f"[gyre-local] cannot start {self.argv[0]!r}: {exc}\n".encode())
            finally:
                os._exit(EXIT_CANNOT_EXEC)

    def _forward_term(self) -> None:
        if self.child and not self.forwarded:
            self.forwarded = True
            with contextlib.suppress(OSError):
                os.killpg(self.child, signal.SIGTERM)

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._forward_term()
        signal.setitimer(signal.ITIMER_REAL, max(self.grace_s, 0.01))

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        self._kill_everything()

    def _on_parent_death(self, signum: int, frame: FrameType | None) -> None:
        self._kill_everything()
        os._exit(EXIT_KILLED)

    def _reap(self) -> bool:
        """Collect exited children without blocking; False once there are none at all."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            self.statuses[pid] = status

    def _kill_everything(self) -> None:
        if self.child:
            with contextlib.suppress(OSError):
                os.killpg(self.child, signal.SIGKILL)
        deadline = time.monotonic() + SWEEP_DEADLINE_S
        me = os.getpid()
        while True:
            for pid in descendants(me, process_table()):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if not self._reap() or time.monotonic() > deadline:
                return
            time.sleep(0.005)


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        sys.stderr.write("usage: _reaper.py OPERATOR_PID GRACE_S -- COMMAND [ARG...]\n")
        return 2
    return Reaper(int(args[0]), float(args[1]), args[3:]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
