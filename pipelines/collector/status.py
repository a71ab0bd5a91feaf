"""What the collector serves on ``/status`` (the Stream controller reads it)."""

from __future__ import annotations

from gyre.pipelines._common.status import StatusDoc


class CollectorStatus(StatusDoc):
    topic: str
    ready: bool
    accepted: int = 0  # events validated and acknowledged by Kafka, since the process started
    rejected: int = 0  # events that failed validation (written to the dead-letter topic)
    failed: int = 0  # events Kafka did not acknowledge in time (the client was told to retry)
    queued: int = 0  # records in the producer queue
