"""`gyre demo` end to end: its claims are checked, each run starts clean, nothing is left running.

The demo starts its own control plane, operator and workloads here (in a temporary state and
data directory), as `make demo` does, with fewer sessions than the default 6,000.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gyre.controlplane.procs import Proc, processes
from gyre.demo import Demo, lake_rows, parse_args, run
from operator_harness import free_port

from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]

EVENTS = 6000  # six days of sessions: the FeatureJob's 2-day label horizon leaves four days of training rows
ACCEPTED = EVENTS - EVENTS // 100  # one session in a hundred is malformed
FIRST_BATCH_ACCEPTED = 495  # the demo posts batches of 500; 5 of the first are malformed


def demo_args(root: Path) -> list[str]:
    return [
        "--state-dir", str(root / "cluster"),
        "--data-dir", str(root / "data"),
        "--events", str(EVENTS),
        "--metrics-port", str(free_port()),
        "--health-port", str(free_port()),
        "--timeout", "600",
    ]  # fmt: skip


def running_under(root: Path) -> list[str]:
    """Processes working in ``root`` or naming it in their command line."""
    where = str(root)

    def under(p: Proc) -> bool:
        return (p.cwd() or "").startswith(where) or any(where in a for a in p.cmdline())

    return [" ".join(Proc(pid).cmdline()) for pid in processes(under)]


def assert_nothing_left(root: Path) -> None:
    def none() -> None:
        left = running_under(root)
        assert left == [], left

    eventually(none, timeout=30)


class RetriedBatchDemo(Demo):
    """A client that sends its first batch twice, as after a timeout whose answer was lost:
    the collector accepts the batch both times, the client counts it once."""

    retried = False

    def post(self, url: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self.retried:
            self.retried = True
            super().post(url, events)
        return super().post(url, events)


@pytest.mark.timeout(1500)
def test_demo_checks_its_claims_and_starts_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: a second run posted the same sessions into the same lake (every event
    twice), and the demo printed its claims without checking them."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-m", "gyre.cli", "demo", *demo_args(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    checks = [line.strip() for line in out.stdout.splitlines() if line.startswith(("  ok", "  FAIL"))]
    # collector, lake; five resources; the model, the best trial; an answer from online features;
    # the fallback with the online store paused, and the breaker closing after it resumed
    assert len(checks) == 2 + 5 + 2 + 1 + 2, out.stdout
    assert all(c.startswith("ok") for c in checks), checks
    assert f"{ACCEPTED} accepted, {EVENTS - ACCEPTED} rejected" in out.stderr
    assert lake_rows(f"file://{tmp_path}/data/lake/clicks") == ACCEPTED
    assert "TrainingJob churn-v1 (Succeeded): validation accuracy" in out.stdout
    assert_nothing_left(tmp_path)

    # The second run, on the same directories, counts a batch the collector got twice.
    rc = run(RetriedBatchDemo(parse_args(demo_args(tmp_path))))
    err = capsys.readouterr().err
    assert rc == 1, err
    m = re.search(r"FAILED: the lake holds every accepted event exactly once: (\d+) rows in \S+, (\d+)", err)
    assert m is not None, err
    rows, accepted = int(m.group(1)), int(m.group(2))
    assert accepted == ACCEPTED
    # More than accepted: the duplicate batch. No more than that: the first run's lake is gone.
    assert ACCEPTED < rows <= ACCEPTED + FIRST_BATCH_ACCEPTED
    assert_nothing_left(tmp_path)
