"""The launcher's side of the status contract: rank 0's reports become the run's /status, and
the launcher lingers after the run until its final status was read once."""

from __future__ import annotations

import threading

from gyre.pipelines.trainer.launcher import Gang
from gyre.pipelines.trainer.status import TrainerProgress


def finished_gang() -> Gang:
    gang = Gang(size=1, gang_timeout_s=60, heartbeat_timeout_s=60)
    gang.join(0)
    gang.report(TrainerProgress(phase="succeeded", step=20, total_steps=20, percent=100.0).model_dump_json())
    gang.finish(0)
    return gang


def test_reports_become_the_status_document() -> None:
    gang = Gang(size=2, gang_timeout_s=60, heartbeat_timeout_s=60)
    assert gang.status().progress is None
    gang.join(0)
    gang.report(TrainerProgress(phase="running", step=7, total_steps=70, percent=10.0).model_dump_json())
    doc = gang.status()
    assert (doc.gang.phase, doc.gang.joined, doc.gang.size) == ("gathering", [0], 2)
    assert doc.progress is not None
    assert (doc.progress.step, doc.progress.percent) == (7, 10.0)
    gang.report("{not json")  # a malformed report keeps the last good one
    assert gang.status().progress == doc.progress


def test_status_read_while_running_does_not_release_the_linger() -> None:
    gang = Gang(size=1, gang_timeout_s=60, heartbeat_timeout_s=60)
    gang.join(0)
    gang.status()
    assert not gang.wait_read(0.05)


def test_the_final_read_releases_the_linger() -> None:
    gang = finished_gang()
    assert not gang.wait_read(0.05)  # nobody read it yet
    reader = threading.Timer(0.1, gang.status)
    reader.start()
    assert gang.wait_read(5.0)
    reader.join()
    assert gang.status().gang.phase == "succeeded"
