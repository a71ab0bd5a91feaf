"""`scripts/setup.sh --check`: the prerequisites are checked first, and each missing one is named.

Each case runs the script's check alone on a PATH made of this machine's tools, with some
left out or replaced by one that reports too old a version.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the check itself runs besides the tools it looks for.
UTILITIES = ("bash", "cat", "dirname", "grep", "head", "sed", "sort", "tr")
TOOLS = ("go", "java", "mvn", "cmake", "c++")


def toolbox(tmp_path: Path, leave_out: tuple[str, ...] = (), fake: dict[str, str] | None = None) -> Path:
    """A directory to use as PATH: links to the real tools, minus ``leave_out``, plus ``fake`` scripts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The real interpreter behind this environment's python: a 3.11.
    (bin_dir / "python3.11").symlink_to(os.path.realpath(sys.executable))
    for name in (*UTILITIES, *TOOLS):
        if name in leave_out:
            continue
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"{name} is not installed here")
        (bin_dir / name).symlink_to(os.path.realpath(found))
    for name, script in (fake or {}).items():
        path = bin_dir / name
        path.unlink(missing_ok=True)
        path.write_text(f"#!/bin/sh\n{script}\n")
        path.chmod(0o755)
    return bin_dir


def check(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(ROOT / "scripts/setup.sh"), "--check"],
        env={"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/root")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_passes_when_everything_is_there(tmp_path: Path) -> None:
    out = check(toolbox(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "missing" not in out.stderr


@pytest.mark.parametrize(
    ("leave_out", "named"),
    [
        (("java",), ["Java >= 17"]),
        (("java", "mvn", "cmake"), ["Java >= 17", "Maven", "cmake"]),
        (("go",), ["Go >= 1.24"]),
        (("c++",), ["a C++17 compiler"]),
    ],
)
def test_names_every_missing_tool(tmp_path: Path, leave_out: tuple[str, ...], named: list[str]) -> None:
    out = check(toolbox(tmp_path, leave_out=leave_out))
    assert out.returncode == 1
    assert "missing prerequisites" in out.stderr
    listed = [line for line in out.stderr.splitlines() if line.startswith("  - ")]
    assert len(listed) == len(named), out.stderr
    for what in named:
        assert any(what in line for line in listed), out.stderr


@pytest.mark.parametrize(
    ("tool", "script", "named"),
    [
        ("go", 'echo "go1.21.5"', "Go >= 1.24.0 (found 1.21.5"),
        ("java", "echo 'openjdk version \"11.0.22\" 2024-01-16' >&2", "Java >= 17 (found 11"),
        ("java", "echo 'java version \"1.8.0_392\"' >&2", "Java >= 17 (found 8"),
    ],
)
def test_names_a_tool_that_is_too_old(tmp_path: Path, tool: str, script: str, named: str) -> None:
    out = check(toolbox(tmp_path, fake={tool: script}))
    assert out.returncode == 1
    assert named in out.stderr, out.stderr


def test_a_python_other_than_3_11_is_missing(tmp_path: Path) -> None:
    bin_dir = toolbox(tmp_path, fake={"python3.11": "exit 1", "python3": 'echo "3.9"'})
    out = check(bin_dir)
    assert out.returncode == 1
    assert "Python 3.11" in out.stderr, out.stderr
