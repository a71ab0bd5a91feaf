"""What the lake sink serves on ``/status`` (the Stream controller reads it)."""

from __future__ import annotations

from gyre.pipelines._common.status import StatusDoc


class PartitionStatus(StatusDoc):
    committed_offset: int | None = None  # the next offset the lake does not hold yet
    high_watermark: int | None = None
    lag: int | None = None
    buffered: int = 0  # records read but not committed to the lake yet


class SinkStatus(StatusDoc):
    topic: str
    lake: str
    ready: bool
    lag: int = 0  # records in the topic not yet in the lake, over all partitions
    records_written: int = 0
    files_committed: int = 0
    last_commit_ms: float | None = None
    partitions: dict[str, PartitionStatus] = {}
