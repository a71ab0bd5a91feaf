"""Checkpoints: rank 0 writes ``ckpt-<step>.pt`` atomically; a restarted gang resumes from it.

A checkpoint is written to a temporary file in the same directory and renamed into place, so
a worker killed mid-write leaves the previous checkpoint intact and never a torn one. Only the
newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"ckpt-{step:09d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path), oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(directory, step)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return target


def load_latest(directory: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint, or None; an unreadable newest one falls back to older."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # a damaged file must not stop the resume from an older one
            continue
        state.setdefault("step", step)
        return state
    return None
