"""This host's processes: finding them (for leak checks), stopping them, reading their logs.

Tests and ``gyre cluster down`` ask the same question — what still runs that belongs to X? —
of different X: a working directory, a path in the command line, a variable in the
environment. `processes` walks ``/proc`` once per call; a process that vanishes meanwhile
simply does not match. `stop` and `log_tail` serve whatever starts a process and must end
it or explain its death; `free_port` gives what they listen on a loopback port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int

    def cwd(self) -> str | None:
        try:
            return os.readlink(f"/proc/{self.pid}/cwd")
        except OSError:
            return None

    def cmdline(self) -> list[str]:
        try:
            raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return []
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a]

    def environ(self) -> bytes:
        try:
            return Path(f"/proc/{self.pid}/environ").read_bytes()
        except OSError:
            return b""


def processes(where: Callable[[Proc], bool]) -> list[int]:
    """The pids, other than this process's, of the processes ``where`` accepts."""
    me = os.getpid()
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and int(entry) != me and where(Proc(int(entry)))
    ]


def running_in(directory: Path | str) -> list[int]:
    """Processes whose working directory is ``directory`` or below it."""
    root = str(Path(directory).resolve())

    def inside(p: Proc) -> bool:
        cwd = p.cwd()
        return cwd is not None and (cwd == root or cwd.startswith(root + "/"))

    return processes(inside)


def stop(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``timeout_s``; reaps it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file, or ``(no log)`` when it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
